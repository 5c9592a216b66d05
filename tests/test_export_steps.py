"""Single steps of the export, checked on small graphs: weights stored past the 2 GB protobuf limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper


@pytest.fixture(scope="module")
def reference_gather():  # noqa: ANN201
    """``fastseg_export.export.gather_external_data`` (the export module imports torch: slow tier)."""
    from fastseg_export.export import gather_external_data

    return gather_external_data


def _matmul_chain(rng: np.random.Generator, n: int) -> onnx.ModelProto:
    weights = [rng.standard_normal((32, 32)).astype(np.float32) for _ in range(n)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}"]) for i in range(n)]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info(f"h{n}", TensorProto.FLOAT, [1, 32])],
        initializer=[numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_weights_in_many_files_are_gathered_into_one(tmp_path: Path, reference_gather) -> None:
    """As the exporter leaves a >2 GB graph: one file per weight. Afterwards: the graph and one data file."""
    rng = np.random.default_rng(0)
    path = tmp_path / "encoder.onnx"
    onnx.save_model(_matmul_chain(rng, 5), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(tmp_path.iterdir())) == 6
    x = rng.standard_normal((1, 32)).astype(np.float32)
    expected = _run(path, x)

    removed = reference_gather(path)

    assert sorted(removed) == [f"w{i}" for i in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.onnx", "encoder.onnx.data"]
    onnx.checker.check_model(str(path))
    np.testing.assert_array_equal(_run(path, x), expected)
    assert reference_gather(path) == []  # already one file: left alone


def test_inline_weights_are_left_alone(tmp_path: Path, reference_gather) -> None:
    path = tmp_path / "decoder.onnx"
    onnx.save_model(_matmul_chain(np.random.default_rng(1), 2), str(path))
    before = path.read_bytes()
    assert reference_gather(path) == []
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["decoder.onnx"]
