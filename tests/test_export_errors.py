"""Export refuses bad checkpoints and bad destinations with clear errors, and never leaves half a folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from fastseg_export.errors import CheckpointError, ExportError


@pytest.fixture(scope="module")
def reference_export() -> SimpleNamespace:
    """The export toolchain (it imports torch): every test here is in the slow tier."""
    import torch

    from fastseg_export.common import load_allowlisted, load_state_dict
    from fastseg_export.export import export_model

    return SimpleNamespace(torch=torch, export_model=export_model, load_state_dict=load_state_dict,
                           load_allowlisted=load_allowlisted)


def _no_partial_left(parent: Path) -> None:
    leftovers = [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_missing_checkpoint(tmp_path: Path, reference_export) -> None:
    ex = reference_export
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pt"):
        ex.export_model("mobile_sam", tmp_path / "nope.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_model(tmp_path: Path, reference_export) -> None:
    ex = reference_export
    with pytest.raises(ValueError, match="unknown model 'sam_vit_q'; expected one of"):
        ex.export_model("sam_vit_q", tmp_path / "x.pt", tmp_path / "out")


def test_empty_and_garbage_checkpoints(tmp_path: Path, reference_export) -> None:
    ex = reference_export
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="checkpoint is empty"):
        ex.export_model("mobile_sam", empty, tmp_path / "out")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint: expected a torch.save zip archive"):
        ex.export_model("mobile_sam", garbage, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_checkpoint(tmp_path: Path, random_checkpoint, reference_export) -> None:
    ex = reference_export
    good = random_checkpoint("mobile_sam")
    truncated = tmp_path / "mobile_sam.pt"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt|not a PyTorch checkpoint"):
        ex.export_model("mobile_sam", truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    _no_partial_left(tmp_path)


def test_corrupt_member_checkpoint(tmp_path: Path, random_checkpoint, reference_export) -> None:
    ex = reference_export
    good = random_checkpoint("mobile_sam")
    corrupt = tmp_path / "mobile_sam.pt"
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # flip bytes inside a tensor record: CRC no longer matches
    corrupt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        ex.load_state_dict(corrupt)


def test_checkpoint_of_another_model(tmp_path: Path, random_checkpoint, reference_export) -> None:
    ex = reference_export
    vit_b = random_checkpoint("sam_vit_b")
    with pytest.raises(CheckpointError, match=r"not a mobile_sam checkpoint|missing keys|unexpected keys"):
        ex.export_model("mobile_sam", vit_b, tmp_path / "out")
    mobile = random_checkpoint("mobile_sam")
    with pytest.raises(CheckpointError, match=r"not a sam_vit_b checkpoint|missing keys|unexpected keys"):
        ex.export_model("sam_vit_b", mobile, tmp_path / "out2")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_state_dict_loader_refuses_pickled_code(tmp_path: Path, reference_export) -> None:
    ex = reference_export
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    ex.torch.save({"weight": ex.torch.zeros(1), "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        ex.load_state_dict(path)
    refused = "outside the allow-list for this format, refusing to unpickle it: posix.system"
    with pytest.raises(CheckpointError, match=refused):
        ex.load_allowlisted(path, allowed=[])
    newer = tmp_path / "evil4.pt"
    ex.torch.save({"payload": Evil()}, newer, pickle_protocol=4)
    with pytest.raises(CheckpointError, match="refusing to unpickle it"):
        ex.load_allowlisted(newer, allowed=[])


def test_existing_and_unwritable_destination(tmp_path: Path, random_checkpoint, reference_export) -> None:
    ex = reference_export
    ckpt = random_checkpoint("mobile_sam")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists: .*--overwrite"):
        ex.export_model("mobile_sam", ckpt, existing)
    assert (existing / "keep.txt").read_text() == "mine"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: use a path under a file instead
            target = tmp_path / "afile" / "out"
            (tmp_path / "afile").write_text("x")
            with pytest.raises(ExportError, match="cannot create the parent folder"):
                ex.export_model("mobile_sam", ckpt, target)
        else:
            with pytest.raises(ExportError, match="not writable"):
                ex.export_model("mobile_sam", ckpt, locked / "out")
    finally:
        locked.chmod(0o700)


def _fail_mid_export(monkeypatch) -> None:
    """Make the ONNX export write half a file and then fail, as a crash or a full disk would."""
    import fastseg_export.export as export

    def failing_export(graph, path):
        path.write_bytes(b"half an onnx file")
        raise ExportError("ONNX export failed: injected")

    monkeypatch.setattr(export, "_export_onnx", failing_export)


def test_failed_export_leaves_nothing(tmp_path: Path, random_checkpoint, monkeypatch, reference_export) -> None:
    """A failure after files were written removes the partial folder."""
    ex = reference_export
    _fail_mid_export(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="injected"):
        ex.export_model("mobile_sam", random_checkpoint("mobile_sam"), out)
    assert not out.exists()
    _no_partial_left(tmp_path)


def test_overwrite_replaces_atomically(
    tmp_path: Path, exported_model, random_checkpoint, monkeypatch, reference_export
) -> None:
    """--overwrite swaps in the new folder; if the new export fails, the old folder is untouched."""
    ex = reference_export
    out = tmp_path / "model"
    shutil.copytree(exported_model("mobile_sam"), out)
    before = sorted(p.name for p in out.iterdir())
    _fail_mid_export(monkeypatch)
    with pytest.raises(ExportError, match="injected"):
        ex.export_model("mobile_sam", random_checkpoint("mobile_sam"), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before
    _no_partial_left(tmp_path)
