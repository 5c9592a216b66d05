"""Where an export lands (``fastseg_export.placement``, torch-free): the lock on ``--out``, the stale
temporary folders of killed exports, and the final rename that never replaces what fastseg did not write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fastseg_export import placement
from fastseg_export.errors import ExportError


def _model_folder(path: Path, marker: str = "old") -> Path:
    """A folder as ``fastseg export`` writes it (only what placement looks at: the manifest's format)."""
    path.mkdir()
    (path / "encoder.bin").write_bytes(b"weights")
    (path / "manifest.json").write_text(json.dumps({"format": "fastseg-model", "weights": marker}))
    return path


def _user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "keep.txt").write_text("mine")
    return path


def _finished_export(out: Path) -> Path:
    """A finished temporary folder beside ``out``, as the export leaves it before placing it."""
    tmp = placement.partial_path(out)
    tmp.mkdir()
    (tmp / "manifest.json").write_text(json.dumps({"format": "fastseg-model", "weights": "new"}))
    return tmp


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _weights(folder: Path) -> str:
    return json.loads((folder / "manifest.json").read_text())["weights"]


def _names(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


# --- the final step: rename into place --------------------------------------------------------------


def test_place_into_a_free_destination(tmp_path: Path) -> None:
    out = tmp_path / "model"
    tmp = _finished_export(out)
    placement.place(tmp, out, overwrite=False)
    assert _weights(out) == "new" and _names(tmp_path) == ["model"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_user_folder_created_during_the_export_is_kept(tmp_path: Path, overwrite: bool) -> None:
    """Defect 1: ``out`` appears while the export runs: it is kept, the export fails saying so."""
    out = tmp_path / "model"
    tmp = _finished_export(out)
    _user_folder(out)
    with pytest.raises(ExportError, match=r"(?i)model\b.*\bit is kept as it is") as info:
        placement.place(tmp, out, overwrite=overwrite)
    assert (out / "keep.txt").read_text() == "mine" and _names(out) == ["keep.txt"]
    if overwrite:
        assert "not a model folder fastseg wrote" in str(info.value)
    else:
        assert "was created while this export ran" in str(info.value) and "--overwrite" in str(info.value)
    assert tmp.exists()  # the caller removes its own temporary folder


def test_model_folder_created_during_the_export_is_kept_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "model"
    tmp = _finished_export(out)
    _model_folder(out, "theirs")  # e.g. a concurrent export that finished first
    with pytest.raises(ExportError, match="was created while this export ran"):
        placement.place(tmp, out, overwrite=False)
    assert _weights(out) == "theirs"


def test_overwrite_replaces_a_fastseg_model_folder(tmp_path: Path) -> None:
    out = _model_folder(tmp_path / "model")
    tmp = _finished_export(out)
    placement.place(tmp, out, overwrite=True)
    assert _weights(out) == "new"
    assert _names(tmp_path) == ["model"]  # neither the temporary folder nor the old one is left
    assert _names(out) == ["manifest.json"]


def test_overwrite_interrupted_mid_swap_puts_the_old_folder_back(tmp_path: Path, monkeypatch) -> None:
    """The previous folder is moved aside before the new one is renamed in: if that fails or is
    interrupted, the previous one is put back, never left as a ``.old-PID`` a later export removes."""
    out = _model_folder(tmp_path / "model")
    tmp = _finished_export(out)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(placement, "_rename_to_free", interrupted)
    with pytest.raises(KeyboardInterrupt):
        placement.place(tmp, out, overwrite=True)
    assert _weights(out) == "old" and _names(out) == ["encoder.bin", "manifest.json"]
    assert _names(tmp_path) == sorted(["model", tmp.name])


def test_overwrite_replaces_an_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    placement.place(_finished_export(out), out, overwrite=True)
    assert _weights(out) == "new" and _names(tmp_path) == ["model"]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: _user_folder(p), "holds no manifest.json"),
        (lambda p: (p.mkdir(), (p / "manifest.json").write_text("{not json")), "not valid JSON"),
        (lambda p: (p.mkdir(), (p / "manifest.json").write_text('{"format": "coco"}')), "'coco'"),
        (lambda p: (p.mkdir(), (p / "manifest.json").write_text("[1, 2]")), "not a JSON object"),
        (lambda p: (p.mkdir(), (p / "manifest.json").mkdir()), "manifest.json is not a file"),
        (lambda p: p.write_text("a file"), "is a file, not a folder"),
    ],
    ids=["no-manifest", "bad-json", "other-format", "json-list", "manifest-dir", "file"],
)
def test_overwrite_refuses_what_fastseg_did_not_write(tmp_path: Path, make, reason: str) -> None:
    """--overwrite replaces only a fastseg model folder; anything else is refused, named, untouched:
    at the start of the export, and again at its end (it may have appeared in between)."""
    out = tmp_path / "model"
    make(out)
    before = _names(out) if out.is_dir() else out.read_text()
    with pytest.raises(ExportError) as at_start:
        placement.check_destination(out, overwrite=True)
    tmp = _finished_export(out)
    with pytest.raises(ExportError) as at_end:
        placement.place(tmp, out, overwrite=True)
    for info in (at_start, at_end):
        message = str(info.value)
        assert f"refusing to replace {out}" in message and reason in message, message
    assert (_names(out) if out.is_dir() else out.read_text()) == before
    assert _names(tmp_path) == sorted(["model", tmp.name])  # no .old- folder: nothing was moved


def test_overwrite_refuses_a_symlink(tmp_path: Path) -> None:
    target = _model_folder(tmp_path / "real")
    out = tmp_path / "model"
    out.symlink_to(target)
    with pytest.raises(ExportError, match="refusing to replace .*symbolic link"):
        placement.check_destination(out, overwrite=True)
    with pytest.raises(ExportError, match="refusing to replace .*symbolic link"):
        placement.place(_finished_export(out), out, overwrite=True)
    assert out.is_symlink() and _weights(target) == "old"


def test_destination_exists_without_overwrite(tmp_path: Path) -> None:
    out = _model_folder(tmp_path / "model")
    with pytest.raises(ExportError, match="already exists: .*--overwrite"):
        placement.check_destination(out, overwrite=False)
    placement.check_destination(tmp_path / "free", overwrite=False)
    placement.check_destination(out, overwrite=True)


# --- one export per destination ---------------------------------------------------------------------


def test_lock_refuses_a_second_export_at_once(tmp_path: Path) -> None:
    """Defect 1: two exports to one --out: the second is refused at once, naming the first's pid."""
    out = tmp_path / "model"
    with placement.destination_lock(out):
        lock = placement.lock_path(out)
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(ExportError, match=rf"another export to .*model is running \(pid {os.getpid()}\)"):
            with placement.destination_lock(out):
                pass
        with placement.destination_lock(tmp_path / "other"):  # another destination is independent
            pass
    assert not lock.exists()  # released and removed: nothing left behind
    with placement.destination_lock(out):  # free again
        pass


def test_lock_is_refused_across_processes(tmp_path: Path) -> None:
    out = tmp_path / "model"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from fastseg_export.placement import destination_lock\n"
            "with destination_lock(Path(sys.argv[1])):\n    print('locked', flush=True); sys.stdin.read()",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ExportError, match=rf"another export to .* is running \(pid {holder.pid}\)"):
            with placement.destination_lock(out):
                pass
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0 and not placement.lock_path(out).exists()
    with placement.destination_lock(out):
        pass


def test_lock_left_by_a_killed_export_is_taken_over(tmp_path: Path) -> None:
    """SIGKILL leaves the lock file, not the lock (the kernel releases it): the next export proceeds."""
    out = tmp_path / "model"
    placement.lock_path(out).write_text(f"{_dead_pid()}\n")
    with placement.destination_lock(out):
        assert placement.lock_path(out).read_text().strip() == str(os.getpid())
    assert not placement.lock_path(out).exists()


# --- what killed exports leave behind ---------------------------------------------------------------


def test_stale_temporary_folders_are_removed(tmp_path: Path) -> None:
    """Defect 7: folders of an export killed by SIGKILL are removed when the next export to ``out`` starts;
    a live export's folders and other destinations' folders are left alone."""
    out = tmp_path / "model"
    dead, alive = _dead_pid(), os.getppid()
    link = tmp_path / f".model.old-{_dead_pid()}"
    stale = [
        tmp_path / f".model.partial-{dead}",
        tmp_path / f".model.old-{dead}",
        tmp_path / ".model.partial-99999999999",
    ]
    kept = [
        tmp_path / f".model.partial-{alive}",
        tmp_path / f".other.partial-{dead}",
        tmp_path / f".model.partial-{dead}x",
        tmp_path / f"model.partial-{dead}",
    ]
    for folder in stale + kept:
        folder.mkdir()
        (folder / "encoder.onnx").write_bytes(b"half an onnx file")
    (tmp_path / f".model.partial-{dead}" / "sub").mkdir()
    link_target = _user_folder(tmp_path / "elsewhere")
    link.symlink_to(link_target)

    removed = placement.remove_stale(out)

    assert sorted(removed) == sorted([*stale, link])
    for folder in stale + [link]:
        assert not os.path.lexists(folder)
    for folder in kept:
        assert (folder / "encoder.onnx").exists()
    assert (link_target / "keep.txt").read_text() == "mine"  # a link is removed, never followed
    assert placement.remove_stale(tmp_path / "nothing-here") == []


# --- SIGTERM ----------------------------------------------------------------------------------------


def test_sigterm_raises_terminated_and_restores_the_handler() -> None:
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM already has a handler in this process")
    with pytest.raises(placement.Terminated) as info:
        with placement.interruptions() as seen:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the Python handler runs between bytecodes
                pass
    assert info.value.code == 128 + signal.SIGTERM and seen.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interruption_a_library_swallowed_is_still_seen() -> None:
    """OpenVINO's conversion turns the exception raised inside it into "initialization failed"."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT already has a handler in this process")
    with placement.interruptions() as seen:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
        except KeyboardInterrupt:
            pass  # as a library might
        seen.hold = True
        os.kill(os.getpid(), signal.SIGINT)  # while cleaning up: recorded, nothing raised
        for _ in range(1000):
            pass
    assert seen.fired and isinstance(seen.exception(), KeyboardInterrupt)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signal_handlers_are_left_alone_off_the_main_thread_and_when_set() -> None:
    seen: list[object] = []

    def run() -> None:
        with placement.interruptions():
            seen.append(signal.getsignal(signal.SIGTERM))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert seen == [signal.getsignal(signal.SIGTERM)]

    def mine(signum, frame):  # noqa: ANN001, ANN202
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with placement.interruptions():
            assert signal.getsignal(signal.SIGTERM) is mine  # the application's own handler decides
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
