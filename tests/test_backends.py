"""Backend sessions: the compiled-model cache is keyed on the graph's content, a broken cache falls
back to no cache with one warning, and load errors keep the line that names the cause (issue #11,
defects 3, 5 and 10). Fast tier: the tiny folders (tests/tiny_models.py), copied before any change.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from tiny_models import FASTSAM_FEATURE_WEIGHT, SAM_ENCODER_WEIGHT

import fastseg
import fastseg.backends as backends
import fastseg.manifest as manifest_module
from fastseg.backends import open_session
from fastseg.manifest import ModelFolderError, load_model_folder, write_manifest

CACHE_WARNING = "compiled-model cache"


@pytest.fixture(autouse=True)
def _own_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A cache root of this test's own, and the once-per-process cache warning not yet given."""
    monkeypatch.setenv("FASTSEG_CACHE", str(tmp_path / "fastseg-cache"))
    monkeypatch.setattr(backends, "_CACHE_WARNED", set(), raising=False)


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "models" / folder.name
    shutil.copytree(folder, copy)
    return copy


def _feeds(graph: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if graph == "network":
        return {"images": rng.random((1, 3, 64, 64), dtype=np.float32)}
    return {"image": rng.random((1, 3, 1024, 1024), dtype=np.float32)}


def _cache_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning) and CACHE_WARNING in str(w.message)]


# --------------------------------------------------------------------------------------------------
# Defect 3: the cache is keyed on the content


@pytest.mark.parametrize("hashes", ["sha256", "sizes_only"])
@pytest.mark.parametrize(
    ("family", "graph", "weight"),
    [("fastsam", "network", FASTSAM_FEATURE_WEIGHT), ("sam", "encoder", SAM_ENCODER_WEIGHT)],
)
def test_new_weights_behind_the_same_xml_are_compiled_again(
    tiny_sam_folder: Path,
    tiny_fastsam_folder: Path,
    tmp_path: Path,
    family: str,
    graph: str,
    weight: np.ndarray,
    hashes: str,
) -> None:
    """Same .xml, a .bin of the same size with other values: the cache used to run the old weights."""
    folder = _copy(tiny_fastsam_folder if family == "fastsam" else tiny_sam_folder, tmp_path)
    cache = tmp_path / "compiled"
    before = open_session(load_model_folder(folder), graph, cache_dir=cache).run(_feeds(graph))

    binary = folder / f"{graph}.bin"
    data = binary.read_bytes()
    at = data.find(weight.tobytes())
    assert at >= 0
    binary.write_bytes(data[:at] + (-weight).tobytes() + data[at + weight.nbytes :])
    manifest = json.loads((folder / "manifest.json").read_text())
    write_manifest(folder, manifest)
    if hashes == "sizes_only":  # a folder exported before the manifest carried hashes
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"] = {name: entry["size"] for name, entry in manifest["files"].items()}
        (folder / "manifest.json").write_text(json.dumps(manifest))

    after = open_session(load_model_folder(folder), graph, cache_dir=cache).run(_feeds(graph))
    uncached = open_session(load_model_folder(folder), graph, cache_dir=False).run(_feeds(graph))
    changed = "protos" if graph == "network" else "image_embeddings"
    assert np.abs(after[changed] - before[changed]).max() > 0.1
    for name in after:
        np.testing.assert_array_equal(after[name], uncached[name])


def test_one_cache_folder_per_graph_content(tiny_sam_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "compiled"
    fastseg.Predictor(tiny_sam_folder, cache_dir=cache)
    first = sorted(p.name for p in cache.iterdir())
    assert len(first) == 4 and all(len(name) == 16 for name in first)  # four graphs
    assert all(any(p.suffix == ".blob" for p in (cache / name).iterdir()) for name in first)
    fastseg.Predictor(_copy(tiny_sam_folder, tmp_path), cache_dir=cache)  # same content elsewhere
    assert sorted(p.name for p in cache.iterdir()) == first
    old = load_model_folder(tiny_sam_folder)
    sizes_only = dict(old.manifest, files={n: e["size"] for n, e in old.manifest["files"].items()})
    for graph in ("encoder", "decoder"):  # a manifest without hashes: the key comes from the files
        assert backends.graph_cache_key(old, graph, "f32") == backends.graph_cache_key(
            manifest_module.ModelFolder(old.path, sizes_only, old.spec), graph, "f32"
        )
    assert backends.graph_cache_key(old, "encoder", "f32") != backends.graph_cache_key(old, "encoder", "bf16")


def test_decoders_compile_without_snippets_in_their_own_cache_folder(
    tiny_sam_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SAM decoders compile with SNIPPETS_MODE=DISABLE (faster there), the encoder with OpenVINO's
    # default. OpenVINO's own cache key leaves that setting out, so ours must hold it: a blob compiled
    # with snippets must never be loaded for a graph that asks for none.
    compiled = backends._compile
    seen: dict[str, object] = {}

    def spy(xml: Path, config: dict[str, object], *args: object) -> object:
        seen[xml.stem] = config.get("SNIPPETS_MODE")
        return compiled(xml, config, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(backends, "_compile", spy)
    folder = load_model_folder(tiny_sam_folder)
    cache = tmp_path / "compiled"
    for graph in ("encoder", "decoder", "decoder_image", "decoder_points"):
        open_session(folder, graph, cache_dir=cache)
    assert seen == {"encoder": None, "decoder": "DISABLE", "decoder_image": "DISABLE", "decoder_points": "DISABLE"}
    names = {p.name for p in cache.iterdir()}
    for graph in ("encoder", "decoder", "decoder_image", "decoder_points"):
        assert backends.graph_cache_key(folder, graph, "f32") in names
    content = backends._content_key(folder, folder.graph_file("decoder_points", "openvino"))
    assert backends.cache_key(content, "f32") != backends.graph_cache_key(folder, "decoder_points", "f32")
    assert backends.cache_key(content, "f32", snippets=False) == backends.graph_cache_key(
        folder, "decoder_points", "f32"
    )


# --------------------------------------------------------------------------------------------------
# Defect 5: a broken cache falls back to no cache with one warning


def test_unwritable_home(tiny_sam_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HOME=/nonexistent, no FASTSEG_CACHE: used to raise PermissionError: '/nonexistent'.

    The tests run as root, who may create /nonexistent: ``os.mkdir`` refuses below it as it does for a
    user (so nothing is written outside the test's folders).
    """
    monkeypatch.setenv("HOME", "/nonexistent")
    monkeypatch.delenv("FASTSEG_CACHE")
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(path).startswith("/nonexistent"):
            raise PermissionError(13, "Permission denied", "/nonexistent")
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = fastseg.Predictor(tiny_sam_folder)
        again = fastseg.Predictor(tiny_sam_folder)
    [message] = _cache_warnings(caught)  # one warning for four graphs and two Predictors
    assert "/nonexistent/.cache/fastseg/compiled" in message and "Permission denied" in message
    assert "FASTSEG_CACHE" in message and "cache_dir=False" in message
    image = np.zeros((32, 48, 3), np.uint8)
    for p in (predictor, again):
        p.set_image(image)
        assert p.predict(points=[[10, 10]], labels=[1]).masks.shape[1:] == (32, 48)
    assert not Path("/nonexistent").exists()


def test_a_file_where_the_cache_folder_should_be(
    tiny_fastsam_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "root").write_text("not a folder")
    monkeypatch.setenv("FASTSEG_CACHE", str(tmp_path / "root"))
    with pytest.warns(UserWarning, match=f"{CACHE_WARNING} {tmp_path / 'root' / 'compiled'} cannot be used"):
        session = open_session(load_model_folder(tiny_fastsam_folder), "network")
    assert session.run(_feeds("network"))["protos"].shape == (1, 32, 16, 16)


def test_compile_fails_only_with_the_cache(
    tiny_fastsam_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache OpenVINO cannot use (emulated: its compile_model fails whenever a cache folder is set,
    as it does for a cache written by another user; see the next test for the real thing)."""
    real = backends._ov_core()

    class Core:
        def compile_model(self, model: str, device: str, config: dict) -> object:
            import openvino.properties as props

            if props.cache_dir in config:
                raise RuntimeError(
                    "Exception from src/inference/src/cpp/core.cpp:132:\n"
                    "filesystem error: cannot remove: Permission denied [x.blob]\n\n"
                )
            return real.compile_model(model, device, config)

    monkeypatch.setattr(backends, "_CORE", Core())
    cache = tmp_path / "compiled"
    with pytest.warns(UserWarning, match=f"{CACHE_WARNING} {cache} cannot be used .*cannot remove: Permission denied"):
        session = open_session(load_model_folder(tiny_fastsam_folder), "network", cache_dir=cache)
    assert session.run(_feeds("network"))["protos"].shape == (1, 32, 16, 16)


def _can_drop_file_capabilities() -> bool:
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "true"], check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_drop_file_capabilities(), reason="needs root and setpriv")
def test_a_cache_written_by_another_user(tiny_fastsam_folder: Path, tmp_path: Path) -> None:
    """OpenVINO writes 0440 blobs: another user's cache cannot be read. Root reads everything, so the
    Predictor runs in a child process without the capabilities that let root bypass file permissions."""
    cache = tmp_path / "shared" / "compiled"
    fastseg.Predictor(tiny_fastsam_folder, cache_dir=cache)
    [key] = cache.iterdir()
    nobody = 65534
    for path in (key, *key.iterdir()):
        os.chown(path, nobody, nobody)
        os.chmod(path, 0o755 if path.is_dir() else 0o440)
    script = (
        "import json, sys, warnings\n"
        "import numpy as np\n"
        "import fastseg\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    p = fastseg.Predictor(sys.argv[1], cache_dir=sys.argv[2])\n"
        "p.set_image(np.zeros((40, 40, 3), np.uint8))\n"
        "print(json.dumps([str(w.message) for w in caught]))\n"
    )
    env = dict(os.environ, FASTSEG_CACHE=str(tmp_path / "child-cache"))
    done = subprocess.run(
        [
            "setpriv",
            "--bounding-set",
            "-dac_override,-dac_read_search",
            sys.executable,
            "-c",
            script,
            str(tiny_fastsam_folder),
            str(cache),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    messages = [m for m in json.loads(done.stdout.splitlines()[-1]) if CACHE_WARNING in m]
    assert len(messages) == 1 and str(cache) in messages[0] and "Permission denied" in messages[0], messages


def test_a_broken_model_is_not_blamed_on_the_cache(tiny_fastsam_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_fastsam_folder, tmp_path)
    xml = folder / "network.xml"
    xml.write_text(xml.read_text().replace('type="Convolution"', 'type="Convolutionx"', 1))
    write_manifest(folder, json.loads((folder / "manifest.json").read_text()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ModelFolderError, match="OpenVINO could not load .*Convolutionx"):
            open_session(load_model_folder(folder), "network", cache_dir=tmp_path / "compiled")
    assert not _cache_warnings(caught)


# --------------------------------------------------------------------------------------------------
# Defect 10: load errors keep the line that names the cause


@pytest.mark.parametrize("cache", [False, True], ids=["no_cache", "cache"])
def test_openvino_load_errors_name_the_cause(tiny_fastsam_folder: Path, tmp_path: Path, cache: bool) -> None:
    folder = _copy(tiny_fastsam_folder, tmp_path)
    xml = folder / "network.xml"
    xml.write_text(xml.read_text().replace('type="Convolution"', 'type="Convolutionx"', 1))
    write_manifest(folder, json.loads((folder / "manifest.json").read_text()))
    with pytest.raises(ModelFolderError) as error:
        fastseg.Predictor(folder, cache_dir=tmp_path / "compiled" if cache else False)
    message = str(error.value)
    assert f"OpenVINO could not load {xml}: " in message
    assert "doesn't contain the operation with type: Convolutionx" in message
    assert "Exception from" not in message and "\n" not in message


def test_onnxruntime_load_errors_name_the_cause(tiny_fastsam_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_fastsam_folder, tmp_path)
    onnx = folder / "network.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 3])
    write_manifest(folder, json.loads((folder / "manifest.json").read_text()))
    with pytest.raises(ModelFolderError, match=f"ONNX Runtime could not load {onnx}: .*Protobuf parsing failed"):
        fastseg.Predictor(folder, backend="onnxruntime")


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        (
            "Exception from src/inference/src/cpp/core.cpp:132:\nException from src/inference/src/dev/plugin.cpp:59:\n"
            "Check 'is_valid_weights_range(size)' failed at src/core/xml_util/src/xml_deserialize_util.cpp:900:\n"
            "Incorrect weights in bin file!\n\n\n",
            "Check 'is_valid_weights_range(size)' failed at src/core/xml_util/src/xml_deserialize_util.cpp:900: "
            "Incorrect weights in bin file!",
        ),
        ("Exception from src/inference/src/cpp/core.cpp:132:\n", "RuntimeError"),
        (
            "[ONNXRuntimeError] : 1 : FAIL : Load model failed:\nNode (Add) type mismatch\n",
            "[ONNXRuntimeError] : 1 : FAIL : Load model failed: Node (Add) type mismatch",
        ),
        ("", "RuntimeError"),
        ("x" * 5000, "x" * 1000 + "..."),
    ],
)
def test_load_error_detail(text: str, detail: str) -> None:
    assert backends.load_error_detail(RuntimeError(text)) == detail


def test_the_fastseg_command_runs_numpy_blas_on_one_thread(tmp_path: Path) -> None:
    """``single_threaded_numpy_blas``: a fresh process's BLAS has one thread per core until the
    ``fastseg`` command runs (even one that fails), then one."""
    import subprocess
    import sys

    code = (
        "import os, threadpoolctl\n"
        "from fastseg.cli import main\n"
        "def threads():\n"
        "    return sorted({i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas'})\n"
        "before = threads()\n"
        f"main(['segment', {str(tmp_path / 'none.png')!r}, '--model', {str(tmp_path)!r}, '--point', '1,1'])\n"
        "print(before, threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.strip().splitlines()[-1].split("] [")
    assert after == "1]", out.stdout
    if (os.cpu_count() or 1) > 1:
        assert before != "[1", out.stdout  # the change came from the command
