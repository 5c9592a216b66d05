"""Download official checkpoints by registry name into a local cache, verified by hash.

Only the standard library does the transfer (``urllib``), so a download works in any environment the
export toolchain runs in. The file is streamed into a temporary file next to its final place and moved
there with :func:`os.replace` only after its hash matched, so the cache never holds a partial or
unverified file under the checkpoint's name, whatever interrupts the download.

Where the URL comes from, first match wins:

1. the ``url`` argument,
2. ``FASTSEG_CHECKPOINT_URL_<NAME>`` (the registry name in upper case, e.g.
   ``FASTSEG_CHECKPOINT_URL_MOBILE_SAM``),
3. ``FASTSEG_CHECKPOINT_BASE_URL`` with the checkpoint's file name appended (a mirror of all files),
4. the official URL in :mod:`fastseg.registry`.

The expected hash never changes with the URL: a mirror has to serve the official bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from fastseg.paths import cache_dir
from fastseg.registry import REGISTRY, ModelSpec, get_spec
from fastseg_export.errors import CheckpointError

__all__ = [
    "CACHE_ENV",
    "BASE_URL_ENV",
    "URL_ENV_PREFIX",
    "default_cache_dir",
    "checkpoint_url",
    "download_checkpoint",
    "main",
]

CACHE_ENV = "FASTSEG_CACHE"
BASE_URL_ENV = "FASTSEG_CHECKPOINT_BASE_URL"
URL_ENV_PREFIX = "FASTSEG_CHECKPOINT_URL_"

_CHUNK = 1 << 20
_USER_AGENT = "fastseg-checkpoint-download (python-urllib)"


def default_cache_dir() -> Path:
    """``$FASTSEG_CACHE/checkpoints`` if set, else ``~/.cache/fastseg/checkpoints``."""
    return cache_dir("checkpoints")


def _url_env_name(spec: ModelSpec) -> str:
    return URL_ENV_PREFIX + spec.name.upper()


def checkpoint_url(name: str, url: str | None = None) -> str:
    """The URL :func:`download_checkpoint` would fetch ``name`` from (see the module docstring)."""
    spec = get_spec(name)
    if url:
        return url
    per_model = os.environ.get(_url_env_name(spec))
    if per_model:
        return per_model
    base = os.environ.get(BASE_URL_ENV)
    if base:
        return base.rstrip("/") + "/" + spec.checkpoint_filename
    return spec.checkpoint_url


class _Expected:
    """What a file must hash to: a full sha256, or else an md5 prefix, or nothing known."""

    def __init__(self, sha256: str | None, md5_prefix: str | None):
        self.sha256 = sha256
        self.md5_prefix = md5_prefix if sha256 is None else None

    @property
    def known(self) -> bool:
        return self.sha256 is not None or self.md5_prefix is not None

    def matches(self, sha256: str, md5: str) -> bool:
        if self.sha256 is not None:
            return sha256 == self.sha256
        if self.md5_prefix is not None:
            return md5.startswith(self.md5_prefix)
        return True

    def describe_mismatch(self, sha256: str, md5: str) -> str:
        if self.sha256 is not None:
            return f"expected sha256 {self.sha256}, got sha256 {sha256}"
        return f"expected an md5 starting with {self.md5_prefix}, got md5 {md5} (sha256 {sha256})"


def _normalise_sha256(value: str) -> str:
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"expected_sha256 must be 64 hex digits, got {value!r}")
    return value


def _hash_file(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


class _Progress:
    """One self-overwriting progress line on stderr, redrawn at most ten times a second."""

    def __init__(self, label: str, total: int | None, enabled: bool, stream: IO[str] | None = None):
        self.label, self.total, self.enabled = label, total, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.start = self.last = time.monotonic()
        self.done = 0
        self.drawn = False

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.1:
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-6)
        if self.total:
            pct = 100.0 * self.done / self.total
            text = f"{self.label}: {_human(self.done)} / {_human(self.total)} ({pct:3.0f}%) {_human(rate)}/s"
        else:
            text = f"{self.label}: {_human(self.done)} {_human(rate)}/s"
        self.stream.write("\r" + text.ljust(78))
        self.stream.flush()
        self.drawn = True

    def close(self, ok: bool) -> None:
        if not self.enabled:
            return
        if ok:
            self._draw(time.monotonic())
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _network_error(url: str, reason: str, spec: ModelSpec) -> CheckpointError:
    return CheckpointError(
        f"could not download the {spec.name} checkpoint from {url}: {reason}. "
        f"Download {spec.checkpoint_filename} by other means and pass it with --checkpoint <file>, "
        f"or point {_url_env_name(spec)} / {BASE_URL_ENV} at a mirror."
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        inner = exc.reason
        if isinstance(inner, (TimeoutError, socket.timeout)):
            return "timed out"
        if isinstance(inner, BaseException):
            return f"{type(inner).__name__}: {inner}"
        return str(inner)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _stream_to(
    url: str, tmp: IO[bytes], spec: ModelSpec, timeout: float, progress: bool
) -> tuple[str, str, int]:
    """Fetch ``url`` into the open file ``tmp``; return (sha256, md5, bytes written)."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    written = 0
    bar: _Progress | None = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = _Progress(f"downloading {spec.checkpoint_filename}", total, progress)
            while block := response.read(_CHUNK):
                tmp.write(block)
                sha.update(block)
                md5.update(block)
                written += len(block)
                bar.update(len(block))
        if total is not None and written != total:
            raise _network_error(
                url, f"connection closed after {written} of {total} bytes (truncated download)", spec
            )
    except CheckpointError:
        if bar is not None:
            bar.close(ok=False)
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        # URLError covers HTTPError (404, ...) and refused/unresolvable connections; OSError covers
        # timeouts and resets in the middle of the body; ValueError an unusable URL.
        if bar is not None:
            bar.close(ok=False)
        raise _network_error(url, _reason(exc), spec) from exc
    bar.close(ok=True)
    tmp.flush()
    os.fsync(tmp.fileno())
    return sha.hexdigest(), md5.hexdigest(), written


def download_checkpoint(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    url: str | None = None,
    expected_sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Return the path of the verified official checkpoint of model ``name``, downloading it if needed.

    Args:
        name: registry name, e.g. ``"mobile_sam"`` (``ValueError`` listing the valid names otherwise).
        cache_dir: where checkpoints are kept; :func:`default_cache_dir` when ``None``.
        url: download from here instead (see the module docstring for the environment overrides).
        expected_sha256: the sha256 the file must have; defaults to the registry's
            ``checkpoint_sha256``, or, when that is unknown, the md5 prefix the file name carries.
        progress: draw a progress line on stderr.
        timeout: seconds a connection attempt or a single read may block.

    A file already in the cache whose hash matches is returned without touching the network; one that
    does not match is deleted and downloaded again.

    Raises:
        ValueError: unknown model name or malformed ``expected_sha256``.
        fastseg_export.common.CheckpointError: the download failed (the message names the URL and the
            reason) or the downloaded bytes do not have the expected hash (both hashes and the URL are
            named). Nothing is left behind in the cache in either case.
    """
    spec = get_spec(name)
    expected = _Expected(
        _normalise_sha256(expected_sha256) if expected_sha256 is not None else spec.checkpoint_sha256,
        spec.checkpoint_md5_prefix,
    )
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = cache / spec.checkpoint_filename

    if final.is_file():
        if not expected.known:
            _note(progress, f"using cached {final} (no reference hash known for {spec.name}, not verified)")
            return final
        sha, md5 = _hash_file(final)
        if expected.matches(sha, md5):
            return final
        _note(
            progress,
            f"cached {final} does not match ({expected.describe_mismatch(sha, md5)}); downloading again",
        )
        final.unlink()

    source = checkpoint_url(name, url)
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=f".{spec.checkpoint_filename}.", suffix=".part")
    tmp_path = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as tmp:
            sha, md5, size = _stream_to(source, tmp, spec, timeout, progress)
        if not expected.matches(sha, md5):
            raise CheckpointError(
                f"checksum mismatch for {spec.checkpoint_filename} ({size} bytes) downloaded from {source}: "
                f"{expected.describe_mismatch(sha, md5)}. The download was discarded; if the URL is a "
                f"mirror it does not serve the official file."
            )
        if not expected.known:
            _note(progress, f"no reference hash known for {spec.name}; downloaded file has sha256 {sha}")
        os.replace(tmp_path, final)
    except BaseException:
        # Also on KeyboardInterrupt: the temp file goes, the final path was never written.
        tmp_path.unlink(missing_ok=True)
        raise
    return final


def _note(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fastseg_export.download NAME [NAME ...]``: fetch checkpoints, print their paths."""
    parser = argparse.ArgumentParser(
        prog="python -m fastseg_export.download", description="Download official checkpoints into the cache."
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"one of: {', '.join(sorted(REGISTRY))}")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default: {default_cache_dir()}")
    parser.add_argument("--url", default=None, help="download from this URL (one NAME only)")
    parser.add_argument("--sha256", default=None, help="expected sha256 (one NAME only)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    if (args.url or args.sha256) and len(args.names) != 1:
        parser.error("--url and --sha256 apply to a single NAME")
    try:
        for name in args.names:
            path = download_checkpoint(
                name, args.cache_dir, url=args.url, expected_sha256=args.sha256, progress=not args.quiet
            )
            print(path)
    except (ValueError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
