"""Where an export lands: the lock on ``--out``, what killed exports left beside it, and the final rename.

An export to ``out`` writes into ``.NAME.partial-PID`` beside it and holds ``.NAME.lock`` (an
``fcntl.flock`` lock, released by the kernel however the process ends) from start to end:

- a second export to the same ``out`` is refused at once, naming the pid of the one running;
- ``.NAME.partial-PID`` and ``.NAME.old-PID`` folders whose process is gone (an export killed with
  SIGKILL) are removed when the next export to ``out`` starts;
- SIGTERM during an export raises :class:`Terminated` (a ``SystemExit``, exit status 143), so the
  export's own cleanup removes its temporary folder, as for any other failure (as Ctrl-C's
  ``KeyboardInterrupt`` does), even where a library turns the exception into an error of its own;
- the finished folder is renamed into place only if nothing appeared at ``out`` meanwhile or, with
  ``overwrite``, if what is there is a model folder fastseg wrote (``manifest.json`` with
  ``"format": "fastseg-model"``). Anything else is kept as it is, and the export fails saying so.

Torch-free, so that all of this is tested in the fast tier.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType

from fastseg.manifest import FORMAT, MANIFEST_NAME
from fastseg_export.errors import ExportError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; exports to one folder are not serialised there
    fcntl = None  # type: ignore[assignment]

#: A manifest larger than this is not one fastseg wrote (they are a few kB); it is not read.
_MAX_MANIFEST_BYTES = 16 << 20


class Terminated(SystemExit):
    """SIGTERM arrived during an export. Raised in the main thread, so that the export removes its
    temporary folder and releases its lock on the way out; the exit status is ``128 + SIGTERM``."""


def partial_path(out: Path, pid: int | None = None) -> Path:
    """The temporary folder an export to ``out`` by process ``pid`` (default: this one) writes into."""
    return out.parent / f".{out.name}.partial-{os.getpid() if pid is None else pid}"


def old_path(out: Path, pid: int | None = None) -> Path:
    """Where ``--overwrite`` moves the previous model folder while the new one is renamed into place."""
    return out.parent / f".{out.name}.old-{os.getpid() if pid is None else pid}"


def lock_path(out: Path) -> Path:
    """The lock file of exports to ``out``: ``.NAME.lock`` beside it."""
    return out.parent / f".{out.name}.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:  # beyond any pid the system hands out
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def _remove(path: Path) -> None:
    """Remove a temporary folder of an export; a symbolic link is removed, never followed."""
    if path.is_symlink() or not path.is_dir():
        with suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale(out: Path) -> list[Path]:
    """Remove the ``.NAME.partial-PID`` and ``.NAME.old-PID`` beside ``out`` whose process is gone.

    Such folders are left by an export killed with SIGKILL (or by a power cut); a running export's
    folders, and other destinations' ones, are left alone. Returns what was removed.
    """
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:partial|old)-([0-9]+)")
    try:
        entries = sorted(out.parent.iterdir())
    except OSError:
        return []
    removed = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and not _pid_alive(int(match.group(1))):
            _remove(entry)
            if not os.path.lexists(entry):
                removed.append(entry)
    return removed


@contextmanager
def destination_lock(out: Path) -> Iterator[None]:
    """Hold the lock of exports to ``out`` (``fcntl.flock`` on ``.NAME.lock``, holding this pid).

    Raises:
        ExportError: another export to ``out`` holds it ("another export to OUT is running (pid N)"),
            or the lock file cannot be created.
    """
    if fcntl is None:
        yield
        return
    path = lock_path(out)
    fd = _acquire(path, out)
    try:
        yield
    finally:
        # Removed while still held: an export that opened it meanwhile sees, once it has the lock,
        # that its file is no longer the one at the path, and opens the new one (see _acquire).
        with suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def _acquire(path: Path, out: Path) -> int:
    assert fcntl is not None
    for _ in range(100):
        try:
            fd = os.open(
                path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644
            )
        except OSError as exc:
            raise ExportError(f"cannot create the lock file {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"pid {holder}" if holder.isdigit() else "pid unknown"
            raise ExportError(
                f"another export to {out} is running ({who}); wait for it to end, or choose another --out"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise ExportError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        try:
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # the file was removed by the export that held it: take the new one
    raise ExportError(f"cannot lock {path}: it is replaced again and again")


class Interruptions:
    """What :func:`interruptions` yields: the first SIGTERM or SIGINT that arrived, if any.

    The exception a handler raises may surface inside a library that turns it into its own error
    (OpenVINO's conversion reports "initialization failed") or swallows it, so the export asks here
    rather than trusting the type of the exception it sees. Set ``hold`` while a step must not be
    cut short (placing the folder, removing the temporary one): signals are then recorded but raise
    nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.hold = False

    @property
    def fired(self) -> bool:
        return self.signum is not None

    def exception(self, signum: int | None = None) -> BaseException:
        """The exception for ``signum`` (default: the first signal that arrived): :class:`Terminated`
        for SIGTERM, ``KeyboardInterrupt`` for SIGINT."""
        signum = self.signum if signum is None else signum
        return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(128 + signal.SIGTERM)


@contextmanager
def interruptions() -> Iterator[Interruptions]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread instead of ending the process
    where it stands, and both it and SIGINT (``KeyboardInterrupt``) are recorded in what is yielded.

    A signal is taken over only while it has its default action (SIGINT: Python's
    ``default_int_handler``): an application's own handler, or ``SIG_IGN``, is left to decide, and off
    the main thread nothing changes. The previous handlers are restored on the way out.
    """
    seen = Interruptions()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if seen.signum is None:
            seen.signum = signum
        if not seen.hold:
            raise seen.exception(signum)

    defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
    previous = {sig: signal.getsignal(sig) for sig in defaults}
    taken = [sig for sig, default in defaults.items() if previous[sig] == default]
    for sig in taken:
        signal.signal(sig, handler)
    try:
        yield seen
    finally:
        for sig in taken:
            signal.signal(sig, previous[sig])


def why_not_model_folder(path: Path) -> str | None:
    """``None`` if ``path`` is a model folder fastseg wrote (or an empty folder), else why it is not."""
    if path.is_symlink():
        return "it is a symbolic link"
    if not path.is_dir():
        return "it is a file, not a folder"
    manifest = path / MANIFEST_NAME
    try:
        if not any(path.iterdir()):
            return None
        if not manifest.exists():
            return f"it holds no {MANIFEST_NAME}"
        if manifest.is_symlink() or not manifest.is_file():
            return f"its {MANIFEST_NAME} is not a file"
        if manifest.stat().st_size > _MAX_MANIFEST_BYTES:
            return f"its {MANIFEST_NAME} is larger than any fastseg writes"
        data = json.loads(manifest.read_bytes())
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    except ValueError:
        return f"its {MANIFEST_NAME} is not valid JSON"
    if not isinstance(data, dict):
        return f"its {MANIFEST_NAME} is not a JSON object"
    if data.get("format") != FORMAT:
        return f"its {MANIFEST_NAME} has format {data.get('format')!r}, not {FORMAT!r}"
    return None


def _refusal(out: Path, reason: str) -> ExportError:
    return ExportError(
        f"refusing to replace {out}: it is not a model folder fastseg wrote ({reason}), and --overwrite "
        f'replaces only those ({MANIFEST_NAME} with "format": "{FORMAT}"). It is kept as it is: remove it '
        "yourself, or choose another --out"
    )


def check_destination(out: Path, overwrite: bool) -> None:
    """Raise ``ExportError`` unless an export may end by placing a folder at ``out``."""
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise ExportError(f"output folder already exists: {out} (pass --overwrite to replace it)")
    reason = why_not_model_folder(out)
    if reason:
        raise _refusal(out, reason)


def place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished export ``tmp`` to ``out``; call it holding :func:`destination_lock`.

    ``out`` is checked again here, at the end: something may have appeared there while the export
    ran. Without ``overwrite`` the rename happens only if nothing is there (atomically); with it, a
    model folder fastseg wrote is swapped out and removed, and anything else is refused. What is
    refused is never touched; ``tmp`` is left for the caller to remove.

    Raises:
        ExportError: ``out`` appeared meanwhile (without ``overwrite``), is not a fastseg model folder
            (with it), or the rename failed.
    """
    if not os.path.lexists(out):
        _rename_to_free(tmp, out, overwrite)
        return
    if not overwrite:
        raise _appeared(out)
    reason = why_not_model_folder(out)
    if reason:
        raise _refusal(out, reason)
    old = old_path(out)
    if os.path.lexists(old):
        _remove(old)  # left by an earlier export of this process id: a folder fastseg had checked
    try:
        os.rename(out, old)
    except OSError as exc:
        raise ExportError(f"cannot move the previous model folder {out} aside: {exc.strerror or exc}") from exc
    try:
        reason = why_not_model_folder(old)  # what was moved, checked again: it may have changed meanwhile
        if reason:
            raise _refusal(out, reason)
        _rename_to_free(tmp, out, overwrite)
    except BaseException:
        _put_back(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _appeared(out: Path, overwrite: bool = False) -> ExportError:
    hint = "" if overwrite else " (pass --overwrite to replace a model folder fastseg wrote)"
    return ExportError(
        f"{out} was created while this export ran: it is kept as it is and this export was discarded{hint}"
    )


def _put_back(old: Path, out: Path) -> None:
    try:
        os.mkdir(out)  # only if nothing is at out again: the same reservation as _rename_to_free
    except FileExistsError:
        raise ExportError(
            f"{out} was created while this export replaced it: it is kept as it is, and the previous model "
            f"folder is at {old}"
        ) from None
    os.rename(old, out)


def _rename_to_free(tmp: Path, out: Path, overwrite: bool) -> None:
    """``os.rename(tmp, out)`` only if nothing is at ``out``: ``mkdir`` reserves the name atomically, and
    renaming a folder onto an empty folder replaces it atomically."""
    try:
        os.mkdir(out)
    except FileExistsError:
        reason = why_not_model_folder(out) if overwrite else None
        raise (_refusal(out, reason) if reason else _appeared(out, overwrite)) from None
    except OSError as exc:
        raise ExportError(f"cannot create {out}: {exc.strerror or exc}") from exc
    try:
        os.rename(tmp, out)
    except BaseException as exc:
        with suppress(OSError):
            os.rmdir(out)  # removes only an empty folder: ours, unless someone wrote into it meanwhile
        if not isinstance(exc, OSError):
            raise
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise _appeared(out, overwrite) from exc
        raise ExportError(f"cannot rename {tmp} to {out}: {exc.strerror or exc}") from exc
