"""Where fastseg keeps files between runs: one cache root, one folder per kind of file."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def cache_root() -> Path:
    """``$FASTSEG_CACHE`` if set, else ``~/.cache/fastseg``."""
    root = os.environ.get("FASTSEG_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "fastseg"


def cache_dir(kind: str) -> Path:
    """``cache_root() / kind``: ``compiled`` (OpenVINO's compiled models), ``checkpoints`` (downloads),
    ``bench`` (the benchmark's checkpoints and exports)."""
    return cache_root() / kind


@contextmanager
def atomic_write(path: Path, binary: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; once the block ends without an error it is
    renamed onto ``path``, so readers see the old file or the whole new one, never a part. On an error
    the temporary file is removed and ``path`` is untouched. The file gets the usual permissions
    (``0o666`` less the umask); its temporary name starts with ``.<name>.``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
