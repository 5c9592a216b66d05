"""fastseg_export.download against a local HTTP server on 127.0.0.1 (no internet needed).

Small fake checkpoint files are served from a temporary folder; their hashes are passed explicitly
(or patched into the registry), since the real checkpoints' hashes are those of the official files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from fastseg.registry import REGISTRY
from fastseg_export import download as dl
from fastseg_export.errors import CheckpointError


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _payload(seed: int, size: int = 4096) -> bytes:
    # Deterministic, incompressible-looking bytes; different seeds give different files.
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


GOOD = _payload(1)
OTHER = _payload(2)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; ``/truncated/<file>`` announces more bytes than it sends, then hangs up."""

    def do_GET(self):  # noqa: N802 (http.server naming)
        if self.path.startswith("/truncated/"):
            data = (Path(self.directory) / self.path.removeprefix("/truncated/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data) + 1000))
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format, *args):  # keep pytest output clean
        pass


class _Server:
    def __init__(self, root: Path):
        self.root = root
        handler = lambda *a, **kw: _Handler(*a, directory=str(root), **kw)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.running = True

    def put(self, relpath: str, data: bytes) -> str:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"{self.base_url}/{relpath}"

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)
            self.running = False


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    srv = _Server(root)
    yield srv
    srv.stop()


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    # A proxy in the environment would route 127.0.0.1 elsewhere; fastseg variables would change URLs.
    for key in list(os.environ):
        if key.lower().endswith("_proxy") or key.startswith("FASTSEG_"):
            monkeypatch.delenv(key, raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# --- success and cache -----------------------------------------------------------------------------


def test_download_verifies_sha256_and_moves_into_place(server, cache, capsys):
    url = server.put("mobile_sam.pt", GOOD)
    path = dl.download_checkpoint("mobile_sam", cache, url=url, expected_sha256=_sha256(GOOD))
    assert path == cache / "mobile_sam.pt"
    assert path.read_bytes() == GOOD
    assert _leftovers(cache) == ["mobile_sam.pt"]  # no temp file left next to it
    err = capsys.readouterr().err
    assert "downloading mobile_sam.pt" in err and "100%" in err


def test_progress_false_is_silent(server, cache, capsys):
    url = server.put("mobile_sam.pt", GOOD)
    dl.download_checkpoint("mobile_sam", cache, url=url, expected_sha256=_sha256(GOOD), progress=False)
    assert capsys.readouterr().err == ""


def test_expected_sha256_is_case_insensitive_and_validated(server, cache):
    url = server.put("mobile_sam.pt", GOOD)
    path = dl.download_checkpoint("mobile_sam", cache, url=url, expected_sha256=_sha256(GOOD).upper(), progress=False)
    assert path.read_bytes() == GOOD
    with pytest.raises(ValueError, match="64 hex digits"):
        dl.download_checkpoint("mobile_sam", cache, url=url, expected_sha256="abc123", progress=False)


def test_cached_file_is_reused_without_network(server, cache):
    url = server.put("mobile_sam.pt", GOOD)
    first = dl.download_checkpoint("mobile_sam", cache, url=url, expected_sha256=_sha256(GOOD), progress=False)
    (server.root / "mobile_sam.pt").unlink()  # would now 404 ...
    server.stop()  # ... and now be refused
    again = dl.download_checkpoint("mobile_sam", cache, url=url, expected_sha256=_sha256(GOOD), progress=False)
    assert again == first and again.read_bytes() == GOOD


def test_corrupt_cached_file_is_downloaded_again(server, cache):
    cache.mkdir()
    (cache / "mobile_sam.pt").write_bytes(GOOD[:100])  # e.g. left by some other tool
    url = server.put("mobile_sam.pt", GOOD)
    path = dl.download_checkpoint("mobile_sam", cache, url=url, expected_sha256=_sha256(GOOD), progress=False)
    assert path.read_bytes() == GOOD
    assert _leftovers(cache) == ["mobile_sam.pt"]


def test_registry_hash_applies_when_none_is_passed(server, cache):
    # A URL override does not change what the file must hash to: the fake file is not the official one.
    url = server.put("mobile_sam.pt", GOOD)
    with pytest.raises(CheckpointError) as info:
        dl.download_checkpoint("mobile_sam", cache, url=url, progress=False)
    assert REGISTRY["mobile_sam"].checkpoint_sha256 in str(info.value)
    assert _sha256(GOOD) in str(info.value)
    assert _leftovers(cache) == []


# --- failures leave nothing behind ----------------------------------------------------------------


def test_hash_mismatch_names_both_hashes_and_url_and_leaves_nothing(server, cache):
    url = server.put("mobile_sam.pt", OTHER)
    with pytest.raises(CheckpointError) as info:
        dl.download_checkpoint("mobile_sam", cache, url=url, expected_sha256=_sha256(GOOD), progress=False)
    message = str(info.value)
    assert _sha256(GOOD) in message  # expected
    assert _sha256(OTHER) in message  # actual
    assert url in message
    assert _leftovers(cache) == []


def test_http_404_is_a_clear_error(server, cache):
    url = f"{server.base_url}/no/such/mobile_sam.pt"
    with pytest.raises(CheckpointError) as info:
        dl.download_checkpoint("mobile_sam", cache, url=url, expected_sha256=_sha256(GOOD), progress=False)
    message = str(info.value)
    assert "HTTP 404" in message and url in message and "--checkpoint" in message
    assert _leftovers(cache) == []


def test_connection_refused_is_a_clear_error(cache):
    url = f"http://127.0.0.1:{_free_port()}/mobile_sam.pt"
    with pytest.raises(CheckpointError) as info:
        dl.download_checkpoint("mobile_sam", cache, url=url, expected_sha256=_sha256(GOOD), progress=False)
    message = str(info.value)
    assert url in message and "--checkpoint" in message
    assert re.search(r"refused", message, re.IGNORECASE)
    assert _leftovers(cache) == []


def test_server_that_never_answers_times_out(cache):
    with socket.socket() as listener:  # accepts connections in the kernel backlog, never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/mobile_sam.pt"
        start = time.monotonic()
        with pytest.raises(CheckpointError) as info:
            dl.download_checkpoint(
                "mobile_sam", cache, url=url, expected_sha256=_sha256(GOOD), progress=False, timeout=0.3
            )
        assert time.monotonic() - start < 5
    assert "timed out" in str(info.value) and url in str(info.value)
    assert _leftovers(cache) == []


def test_truncated_transfer_is_an_error_and_leaves_nothing(server, cache):
    server.put("mobile_sam.pt", GOOD)
    url = f"{server.base_url}/truncated/mobile_sam.pt"
    with pytest.raises(CheckpointError) as info:
        dl.download_checkpoint("mobile_sam", cache, url=url, expected_sha256=_sha256(GOOD), progress=False)
    assert "truncated" in str(info.value)
    assert _leftovers(cache) == []


def test_interrupt_mid_download_leaves_no_partial_file(server, cache, monkeypatch):
    url = server.put("mobile_sam.pt", GOOD)

    def interrupt(self, n):
        raise KeyboardInterrupt

    monkeypatch.setattr(dl._Progress, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        dl.download_checkpoint("mobile_sam", cache, url=url, expected_sha256=_sha256(GOOD), progress=False)
    assert _leftovers(cache) == []


# --- md5 prefix (segment-anything file names) -------------------------------------------------------


def test_md5_prefix_is_checked_when_no_sha256_is_known(server, cache, monkeypatch):
    spec = REGISTRY["sam_vit_b"]
    prefix = hashlib.md5(GOOD).hexdigest()[:6]
    monkeypatch.setitem(
        REGISTRY, "sam_vit_b", dataclasses.replace(spec, checkpoint_sha256=None, checkpoint_md5_prefix=prefix)
    )
    url = server.put(spec.checkpoint_filename, GOOD)
    assert dl.download_checkpoint("sam_vit_b", cache, url=url, progress=False).read_bytes() == GOOD

    other_cache = cache.parent / "other"
    bad_url = server.put("bad/" + spec.checkpoint_filename, OTHER)
    with pytest.raises(CheckpointError) as info:
        dl.download_checkpoint("sam_vit_b", other_cache, url=bad_url, progress=False)
    assert prefix in str(info.value) and hashlib.md5(OTHER).hexdigest() in str(info.value)
    assert _leftovers(other_cache) == []


# --- URL and cache overrides ------------------------------------------------------------------------


def test_per_model_url_env_override(server, cache, monkeypatch):
    url = server.put("mirror-a/mobile_sam.pt", GOOD)
    monkeypatch.setenv("FASTSEG_CHECKPOINT_URL_MOBILE_SAM", url)
    path = dl.download_checkpoint("mobile_sam", cache, expected_sha256=_sha256(GOOD), progress=False)
    assert path.read_bytes() == GOOD


def test_base_url_env_override_appends_file_name(server, cache, monkeypatch):
    server.put("mirror-b/FastSAM-s.pt", GOOD)
    monkeypatch.setenv("FASTSEG_CHECKPOINT_BASE_URL", f"{server.base_url}/mirror-b/")
    path = dl.download_checkpoint("fastsam_s", cache, expected_sha256=_sha256(GOOD), progress=False)
    assert path == cache / "FastSAM-s.pt" and path.read_bytes() == GOOD


def test_url_precedence_argument_then_model_env_then_base_env(server, cache, monkeypatch):
    arg_url = server.put("arg/mobile_sam.pt", _payload(10))
    env_url = server.put("env/mobile_sam.pt", _payload(11))
    server.put("base/mobile_sam.pt", _payload(12))
    monkeypatch.setenv("FASTSEG_CHECKPOINT_URL_MOBILE_SAM", env_url)
    monkeypatch.setenv("FASTSEG_CHECKPOINT_BASE_URL", f"{server.base_url}/base")

    assert dl.checkpoint_url("mobile_sam", arg_url) == arg_url
    assert dl.checkpoint_url("mobile_sam") == env_url
    monkeypatch.delenv("FASTSEG_CHECKPOINT_URL_MOBILE_SAM")
    assert dl.checkpoint_url("mobile_sam") == f"{server.base_url}/base/mobile_sam.pt"
    monkeypatch.delenv("FASTSEG_CHECKPOINT_BASE_URL")
    assert dl.checkpoint_url("mobile_sam") == REGISTRY["mobile_sam"].checkpoint_url

    # And the download really uses the argument over the environment.
    monkeypatch.setenv("FASTSEG_CHECKPOINT_URL_MOBILE_SAM", env_url)
    path = dl.download_checkpoint(
        "mobile_sam", cache, url=arg_url, expected_sha256=_sha256(_payload(10)), progress=False
    )
    assert path.read_bytes() == _payload(10)


def test_cache_dir_defaults(monkeypatch, tmp_path, server):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dl.default_cache_dir() == tmp_path / "home" / ".cache" / "fastseg" / "checkpoints"
    monkeypatch.setenv("FASTSEG_CACHE", str(tmp_path / "envcache"))
    assert dl.default_cache_dir() == tmp_path / "envcache" / "checkpoints"  # one cache root for every kind

    url = server.put("mobile_sam.pt", GOOD)
    path = dl.download_checkpoint("mobile_sam", url=url, expected_sha256=_sha256(GOOD), progress=False)
    assert path == tmp_path / "envcache" / "checkpoints" / "mobile_sam.pt"


# --- names and registry ---------------------------------------------------------------------------


def test_unknown_model_name_lists_valid_names(cache):
    with pytest.raises(ValueError) as info:
        dl.download_checkpoint("sam_vit_q", cache, progress=False)
    message = str(info.value)
    assert "sam_vit_q" in message
    for name in REGISTRY:
        assert name in message
    assert not cache.exists()


def test_registry_checkpoint_hashes_are_well_formed():
    for spec in REGISTRY.values():
        if spec.checkpoint_sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", spec.checkpoint_sha256), spec.name
        if spec.family == "sam" and spec.checkpoint_format == "sam_state_dict":
            # segment-anything file names end in the first 6 hex digits of the file's md5
            assert spec.checkpoint_filename.endswith(f"_{spec.checkpoint_md5_prefix}.pth"), spec.name
        assert spec.checkpoint_url.endswith("/" + spec.checkpoint_filename), spec.name


def test_main_prints_path_and_reports_errors(server, cache, capsys):
    url = server.put("mobile_sam.pt", GOOD)
    argv = ["mobile_sam", "--cache-dir", str(cache), "--url", url, "--sha256", _sha256(GOOD), "--quiet"]
    assert dl.main(argv) == 0
    assert capsys.readouterr().out.strip() == str(cache / "mobile_sam.pt")
    assert dl.main(["nope", "--cache-dir", str(cache), "--quiet"]) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err
