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

    return SimpleNamespace(
        torch=torch, export_model=export_model, load_state_dict=load_state_dict, load_allowlisted=load_allowlisted
    )


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


def test_int8_is_refused_for_a_model_without_an_image_graph_to_quantize(tmp_path: Path, reference_export) -> None:
    ex = reference_export
    with pytest.raises(ValueError, match=r"--int8 quantizes .*SAM 2.1.*not available for clip_vit_b32"):
        ex.export_model("clip_vit_b32", tmp_path / "x.pt", tmp_path / "out", int8=True)
    assert not (tmp_path / "out").exists()


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


def _assert_refusal_is_safe(message: str) -> None:
    """Defect 11: a refusal says what was refused and why, and never invites loading unsafely."""
    assert "\x1b" not in message, message  # no ANSI escape codes (torch's, or a hostile file's)
    for unsafe in (
        "weights_only=False",
        "`weights_only` set to `False`",
        "will likely succeed",
        "add_safe_globals",
        "safe_globals(",
        "trust",
    ):
        assert unsafe not in message, message
    assert message.isprintable(), message


def _with_pickle(ex, tmp_path: Path, name: str, pkl: bytes) -> Path:
    """A torch.save archive whose ``data.pkl`` is ``pkl`` (written by hand, as an attacker would)."""
    import zipfile

    base = tmp_path / "base.pt"
    ex.torch.save({"weight": ex.torch.zeros(1)}, base)
    path = tmp_path / name
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info, pkl if info.filename.endswith("/data.pkl") else src.read(info.filename))
    return path


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("echo pwned",))


def test_state_dict_loader_refuses_pickled_code(tmp_path: Path, reference_export) -> None:
    ex = reference_export
    path = tmp_path / "evil.pt"
    ex.torch.save({"weight": ex.torch.zeros(1), "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True") as info:
        ex.load_state_dict(path)
    message = str(info.value)
    assert f"refused to unpickle {path}: it references posix.system" in message
    assert "never runs code from a checkpoint" in message
    _assert_refusal_is_safe(message)
    refused = "outside the allow-list for this format, refusing to unpickle it: posix.system"
    with pytest.raises(CheckpointError, match=refused) as info:
        ex.load_allowlisted(path, allowed=[])
    _assert_refusal_is_safe(str(info.value))
    newer = tmp_path / "evil4.pt"
    ex.torch.save({"payload": _Evil()}, newer, pickle_protocol=4)
    with pytest.raises(CheckpointError, match="refusing to unpickle it") as info:
        ex.load_allowlisted(newer, allowed=[])
    _assert_refusal_is_safe(str(info.value))
    with pytest.raises(CheckpointError, match=f"refused to unpickle {newer}") as info:
        ex.load_state_dict(newer)
    _assert_refusal_is_safe(str(info.value))


def test_refusals_never_suggest_loading_unsafely(tmp_path: Path, reference_export) -> None:
    """Defect 11: torch's refusal of a harmless-looking global (bold ANSI text: "this file can still be
    loaded ... weights_only=False will likely succeed") is not passed on; nor are escape codes in a
    hostile file's global names."""
    import argparse
    import pickle

    ex = reference_export
    namespace = tmp_path / "namespace.pt"
    ex.torch.save({"weight": ex.torch.zeros(1), "args": argparse.Namespace(lr=1)}, namespace)
    with pytest.raises(CheckpointError, match=r"refused to unpickle .*: it references argparse.Namespace") as info:
        ex.load_state_dict(namespace)
    _assert_refusal_is_safe(str(info.value))

    ansi = _with_pickle(ex, tmp_path, "ansi.pt", b"\x80\x02c\x1b[31mos\nsystem\nX\x05\x00\x00\x00pwned\x85R.")
    for load in (ex.load_state_dict, lambda p: ex.load_allowlisted(p, allowed=[])):
        with pytest.raises(CheckpointError, match="os.system") as info:
            load(ansi)
        _assert_refusal_is_safe(str(info.value))

    # an allowed global that refuses its arguments while the file is unpickled: torch wraps the error
    # in its advice to load with weights_only=False
    def only_forward(obj, name):  # noqa: ANN001, ANN202
        raise pickle.UnpicklingError(f"getattr(..., {name!r}) is not allowed")

    only_forward.__module__, only_forward.__qualname__ = "builtins", "getattr"
    sneaky = _with_pickle(
        ex, tmp_path, "sneaky.pt", b"\x80\x02cbuiltins\ngetattr\nX\x01\x00\x00\x00aX\x04\x00\x00\x00evil\x86R."
    )
    with pytest.raises(CheckpointError, match=r"getattr\(\.\.\., 'evil'\) is not allowed") as info:
        ex.load_allowlisted(sneaky, allowed=[only_forward])
    _assert_refusal_is_safe(str(info.value))


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


# --- the destination: never replace what fastseg did not write; one export at a time; kills ---------


def _hold_lock(out: Path, pid: int):  # noqa: ANN202 - an open file holding the lock
    """Take the lock an export to ``out`` takes (``fcntl.flock`` on ``.NAME.lock`` beside it), as a
    running export with process id ``pid`` holds it."""
    import fcntl

    f = open(out.parent / f".{out.name}.lock", "w")  # noqa: SIM115 - closed by the caller
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.write(f"{pid}\n")
    f.flush()
    return f


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_export_to_the_same_out_is_refused_at_once(
    tmp_path: Path, random_checkpoint, monkeypatch, reference_export
) -> None:
    """Defect 1: two concurrent exports to one --out: the second fails at once, naming the first."""
    ex = reference_export
    _fail_mid_export(monkeypatch)  # were the second one to run, it would fail with "injected"
    out = tmp_path / "out"
    lock = _hold_lock(out, 4242)
    try:
        with pytest.raises(ExportError, match=r"another export to .*out is running \(pid 4242\)"):
            ex.export_model("mobile_sam", random_checkpoint("mobile_sam"), out)
    finally:
        lock.close()
    assert not out.exists()


def test_overwrite_refuses_a_folder_fastseg_did_not_write(
    tmp_path: Path, random_checkpoint, monkeypatch, reference_export
) -> None:
    """Defect 1: --overwrite replaces a fastseg model folder only; a user's folder is refused at once."""
    ex = reference_export
    _fail_mid_export(monkeypatch)
    out = tmp_path / "photos"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(
        ExportError,
        match=r"refusing to replace .*photos: it is not a model folder fastseg wrote \(it holds no manifest.json\)",
    ):
        ex.export_model("mobile_sam", random_checkpoint("mobile_sam"), out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_stale_partial_folders_are_removed_by_the_next_export(
    tmp_path: Path, random_checkpoint, monkeypatch, reference_export
) -> None:
    """Defect 7: what an export killed with SIGKILL leaves (``.NAME.partial-PID`` of a process that is
    gone) is removed when the next export to that --out starts, even if that one fails too."""
    ex = reference_export
    _fail_mid_export(monkeypatch)
    dead = _dead_pid()
    for name in (f".out.partial-{dead}", f".out.old-{dead}", f".other.partial-{dead}", f".out.partial-{os.getppid()}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "encoder.onnx").write_bytes(b"half an onnx file")
    with pytest.raises(ExportError, match="injected"):
        ex.export_model("mobile_sam", random_checkpoint("mobile_sam"), tmp_path / "out")
    # another destination's, and a live process's, are not this export's to remove
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.partial-{dead}", f".out.partial-{os.getppid()}"]


def _fake_conversion(monkeypatch, meanwhile=None) -> None:  # noqa: ANN001
    """Replace steps 1-5 by a folder holding a manifest, written in no time: what is under test is where
    the export lands. ``meanwhile()`` runs while the export is still in its temporary folder."""
    import json

    import fastseg_export.export as export

    def convert(tmp: Path, *args) -> str:  # noqa: ANN002
        (tmp / "encoder.bin").write_bytes(b"new weights")
        (tmp / "manifest.json").write_text(json.dumps({"format": "fastseg-model", "weights": "new"}))
        if meanwhile is not None:
            meanwhile()
        return "new"

    monkeypatch.setattr(export, "_export_into", convert)


def test_folder_created_at_out_during_the_export_is_kept(tmp_path: Path, monkeypatch, reference_export) -> None:
    """Defect 1: a folder that appears at --out while the export runs is kept; the export fails saying so."""
    ex = reference_export
    out = tmp_path / "out"
    (tmp_path / "ckpt.pt").write_bytes(b"not read")

    def user_writes_out() -> None:
        out.mkdir()
        (out / "keep.txt").write_text("mine")

    _fake_conversion(monkeypatch, user_writes_out)
    with pytest.raises(ExportError, match=r"out was created while this export ran: it is kept"):
        ex.export_model("mobile_sam", tmp_path / "ckpt.pt", out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "out"]


def test_overwrite_replaces_a_model_folder(tmp_path: Path, monkeypatch, reference_export) -> None:
    """--overwrite replaces a folder fastseg wrote; nothing else is left beside it."""
    import json

    ex = reference_export
    out = tmp_path / "out"
    out.mkdir()
    (out / "encoder.bin").write_bytes(b"old weights")
    (out / "old.xml").write_text("<net/>")
    (out / "manifest.json").write_text(json.dumps({"format": "fastseg-model", "weights": "old"}))
    (tmp_path / "ckpt.pt").write_bytes(b"not read")
    _fake_conversion(monkeypatch)
    assert ex.export_model("mobile_sam", tmp_path / "ckpt.pt", out, overwrite=True) == out
    assert json.loads((out / "manifest.json").read_text())["weights"] == "new"
    assert sorted(p.name for p in out.iterdir()) == ["encoder.bin", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "out"]


@pytest.mark.parametrize("when", ["[1/5]", "[3/5]"], ids=["loading", "openvino-conversion"])
def test_sigterm_during_export_leaves_nothing(tmp_path: Path, when: str, random_checkpoint, reference_export) -> None:
    """Defect 7: SIGTERM in the middle of an export removes its temporary folder and ends the process
    with status 143, also while OpenVINO converts (it reports the interruption as its own error)."""
    import signal
    import subprocess
    import sys
    import threading
    import time

    out = tmp_path / "out"
    script = (
        "import sys\n"
        "from fastseg_export.export import export_model\n"
        "export_model('mobile_sam', sys.argv[1], sys.argv[2])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(random_checkpoint("mobile_sam")), str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not (list(tmp_path.glob(".out.partial-*")) and any(line.startswith(when) for line in lines)):
            assert proc.poll() is None, f"the export ended before {when}: {''.join(lines)}"
            assert time.monotonic() < deadline, f"no {when} within 300 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    stderr = "".join(lines)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM; its temporary folder was removed" in stderr
    assert "Traceback" not in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], stderr
