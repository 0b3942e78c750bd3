"""texup.weights.download and registry.fetch_model against a local HTTP server (127.0.0.1, no real network)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from texup.archs.rrdbnet import RRDBNet
from texup.errors import DownloadError, ModelLoadError
from texup.weights import registry
from texup.weights.cache import models_dir, read_manifest, sha256_file
from texup.weights.download import download
from texup.weights.registry import fetch_model


@dataclass
class ServerState:
    """What the test server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    cut_after: int | None = None  # close the connection after sending this many body bytes
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class _Handler(BaseHTTPRequestHandler):
    state: ServerState  # set on a per-server subclass

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        state = self.state
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        status = 200
        if range_header and state.honour_range:
            spec = range_header.removeprefix("bytes=").split("-")[0]
            start = int(spec)
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        payload = body[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if state.cut_after is not None:
            self.wfile.write(payload[: state.cut_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(payload)


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _payload(size: int = 300_001) -> bytes:
    # Not a multiple of the 64 KiB read chunk, and not repetitive, so offsets matter.
    return os.urandom(size)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_full_download_verifies_reports_progress_and_leaves_no_part(server, tmp_path: Path) -> None:
    base, state = server
    data = _payload()
    state.files["/w.pth"] = data
    dest = tmp_path / "sub" / "w.pth"
    seen: list[tuple[int, int | None]] = []

    result = download(f"{base}/w.pth", dest, sha256=_sha(data).upper(), progress=lambda d, t: seen.append((d, t)))

    assert result == dest
    assert dest.read_bytes() == data
    assert not dest.with_name("w.pth.part").exists()
    assert state.requests == [("/w.pth", None)]
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[0] == 0 and done[-1] == len(data)
    assert {t for _, t in seen} == {len(data)}


def test_checksum_mismatch_deletes_the_part_and_names_both_hashes(server, tmp_path: Path) -> None:
    base, state = server
    data = _payload(5000)
    state.files["/w.pth"] = data
    dest = tmp_path / "w.pth"
    wrong = _sha(b"something else")

    with pytest.raises(DownloadError) as info:
        download(f"{base}/w.pth", dest, sha256=wrong)

    message = str(info.value)
    assert wrong in message and _sha(data) in message and f"{base}/w.pth" in message
    assert not dest.exists()
    assert not dest.with_name("w.pth.part").exists()


def test_mismatch_keeps_an_existing_destination_untouched(server, tmp_path: Path) -> None:
    base, state = server
    state.files["/w.pth"] = _payload(5000)
    dest = tmp_path / "w.pth"
    dest.write_bytes(b"previous good file")

    with pytest.raises(DownloadError):
        download(f"{base}/w.pth", dest, sha256=_sha(b"nope"))
    assert dest.read_bytes() == b"previous good file"


def test_resume_sends_a_range_request_and_appends(server, tmp_path: Path) -> None:
    base, state = server
    data = _payload()
    state.files["/w.pth"] = data
    dest = tmp_path / "w.pth"
    cut = 123_457
    dest.with_name("w.pth.part").write_bytes(data[:cut])
    seen: list[tuple[int, int | None]] = []

    download(f"{base}/w.pth", dest, sha256=_sha(data), progress=lambda d, t: seen.append((d, t)))

    assert state.requests == [("/w.pth", f"bytes={cut}-")]
    assert dest.read_bytes() == data
    assert seen[0] == (cut, len(data)) and seen[-1] == (len(data), len(data))


def test_resume_restarts_cleanly_when_the_server_ignores_ranges(server, tmp_path: Path) -> None:
    base, state = server
    data = _payload()
    state.files["/w.pth"] = data
    state.honour_range = False
    dest = tmp_path / "w.pth"
    # A stale part that is NOT a prefix of the file: appending to it would corrupt the result.
    dest.with_name("w.pth.part").write_bytes(b"\xff" * 1000)

    download(f"{base}/w.pth", dest, sha256=_sha(data))

    assert state.requests == [("/w.pth", "bytes=1000-")]
    assert dest.read_bytes() == data


def test_a_part_longer_than_the_file_is_discarded_after_416(server, tmp_path: Path) -> None:
    base, state = server
    data = _payload(4000)
    state.files["/w.pth"] = data
    dest = tmp_path / "w.pth"
    dest.with_name("w.pth.part").write_bytes(b"\0" * 9000)

    download(f"{base}/w.pth", dest, sha256=_sha(data))

    assert state.requests == [("/w.pth", "bytes=9000-"), ("/w.pth", None)]
    assert dest.read_bytes() == data


def test_dropped_connection_keeps_the_part_and_a_second_call_resumes(server, tmp_path: Path) -> None:
    base, state = server
    data = _payload()
    state.files["/w.pth"] = data
    state.cut_after = 100_000
    dest = tmp_path / "w.pth"
    part = dest.with_name("w.pth.part")

    with pytest.raises(DownloadError, match="resume"):
        download(f"{base}/w.pth", dest, sha256=_sha(data), timeout=10)
    assert not dest.exists()
    assert part.read_bytes() == data[:100_000]

    state.cut_after = None
    download(f"{base}/w.pth", dest, sha256=_sha(data), timeout=10)
    assert state.requests[-1] == ("/w.pth", "bytes=100000-")
    assert dest.read_bytes() == data
    assert not part.exists()


def test_http_404_names_the_url_and_status(server, tmp_path: Path) -> None:
    base, _ = server
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError) as info:
        download(f"{base}/missing.pth", dest, sha256=None)
    assert f"{base}/missing.pth" in str(info.value) and "404" in str(info.value)
    assert not dest.exists() and not dest.with_name("w.pth.part").exists()


def test_connection_refused_names_the_url(tmp_path: Path) -> None:
    with socket.socket() as s:  # find a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/w.pth"
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "w.pth", sha256=None, timeout=5)
    assert url in str(info.value)
    assert not (tmp_path / "w.pth").exists()


def test_bad_hash_argument_and_scheme_are_refused_before_any_request(server, tmp_path: Path) -> None:
    base, state = server
    with pytest.raises(DownloadError, match="SHA-256"):
        download(f"{base}/w.pth", tmp_path / "w.pth", sha256="abc123")
    with pytest.raises(DownloadError, match="http"):
        download(f"file://{tmp_path}/x", tmp_path / "w.pth", sha256=None)
    assert state.requests == []


# ------------------------------------------------------------------------------------------------
# fetch_model: official .pth -> verified download -> cached .safetensors
# ------------------------------------------------------------------------------------------------

NAME = "realesrgan-x2plus"


def _tiny_pth(scale: int) -> bytes:
    """A tiny RRDBNet saved like Real-ESRGAN's releases: ``{"params_ema": state_dict}``."""
    torch.manual_seed(0)
    net = RRDBNet(num_in_ch=3, num_out_ch=3, scale=scale, num_feat=8, num_block=2, num_grow_ch=4)
    buffer = io.BytesIO()
    torch.save({"params_ema": net.state_dict()}, buffer)
    return buffer.getvalue()


@pytest.fixture
def served_model(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point the x2plus registry entry at a tiny x2 RRDBNet served locally; fresh TEXUP_HOME."""
    base, state = server
    data = _tiny_pth(scale=2)
    state.files["/RealESRGAN_x2plus.pth"] = data
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path / "home"))
    info = dataclasses.replace(registry.KNOWN_MODELS[NAME], url=f"{base}/RealESRGAN_x2plus.pth", sha256=_sha(data))
    monkeypatch.setitem(registry.KNOWN_MODELS, NAME, info)
    return state, data, info


def test_fetch_model_downloads_verifies_and_caches_safetensors(served_model) -> None:
    state, data, info = served_model
    seen: list[tuple[int, int | None]] = []

    path = fetch_model(NAME, progress=lambda d, t: seen.append((d, t)))

    assert path == models_dir() / f"{NAME}.safetensors"
    assert seen[-1] == (len(data), len(data))
    assert (models_dir() / "downloads" / "RealESRGAN_x2plus.pth").read_bytes() == data
    entry = read_manifest()[path.name]
    assert entry["sha256"] == sha256_file(path)
    assert entry["source"] == info.url and entry["source_sha256"] == info.sha256

    loaded = registry.load_pretrained(NAME)
    assert loaded.name == NAME and loaded.arch == "RRDBNet" and loaded.scale == 2
    assert loaded.hparams["num_block"] == 2 and loaded.metadata["provenance"]["license"] == "BSD-3-Clause"
    with torch.inference_mode():
        out = loaded.module(torch.rand(1, 3, 10, 14))
    assert out.shape == (1, 3, 20, 28)

    # Once fetched: no second request, and ensure_model is satisfied offline.
    requests = len(state.requests)
    assert fetch_model(NAME) == path
    assert registry.ensure_model(NAME) == path
    assert len(state.requests) == requests


def test_corrupted_fetched_model_is_rebuilt_from_the_verified_download_offline(served_model) -> None:
    state, _, _ = served_model
    path = fetch_model(NAME)
    requests = len(state.requests)
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size - 64)
        f.write(b"\x00" * 32)
    assert registry.ensure_model(NAME) == path
    assert sha256_file(path) == read_manifest()[path.name]["sha256"]
    assert len(state.requests) == requests


def test_fetch_refuses_a_download_with_the_wrong_content(served_model, monkeypatch: pytest.MonkeyPatch) -> None:
    state, _, info = served_model
    state.files["/RealESRGAN_x2plus.pth"] = _tiny_pth(scale=4)  # not the published file
    with pytest.raises(DownloadError, match="mismatch"):
        fetch_model(NAME)
    assert not (models_dir() / f"{NAME}.safetensors").exists()
    # Only the empty lock file stays (removing a lock file others may wait on would break the lock).
    assert [p.name for p in (models_dir() / "downloads").iterdir()] == [".RealESRGAN_x2plus.pth.lock"]


def test_fetch_without_a_published_hash_requires_one(served_model, monkeypatch: pytest.MonkeyPatch) -> None:
    state, data, info = served_model
    monkeypatch.setitem(registry.KNOWN_MODELS, NAME, dataclasses.replace(info, sha256=None))
    with pytest.raises(DownloadError, match="--sha256"):
        fetch_model(NAME)
    assert state.requests == []

    path = fetch_model(NAME, sha256=_sha(data))
    assert path.is_file()


def test_fetch_with_a_hash_that_disagrees_with_the_published_one(served_model) -> None:
    state, _, _ = served_model
    with pytest.raises(DownloadError, match="disagrees"):
        fetch_model(NAME, sha256=_sha(b"other"))
    assert state.requests == []


def test_fetch_rejects_a_file_of_the_wrong_scale(served_model, monkeypatch: pytest.MonkeyPatch) -> None:
    state, _, info = served_model
    data = _tiny_pth(scale=4)
    state.files["/RealESRGAN_x2plus.pth"] = data
    monkeypatch.setitem(registry.KNOWN_MODELS, NAME, dataclasses.replace(info, sha256=_sha(data)))
    with pytest.raises(ModelLoadError, match="x2"):
        fetch_model(NAME)
    assert not (models_dir() / f"{NAME}.safetensors").exists()


def test_a_server_announcing_more_than_the_cap_is_refused_before_writing(server, tmp_path: Path) -> None:
    base, state = server
    data = _payload(200_000)
    state.files["/big.pth"] = data
    dest = tmp_path / "big.pth"
    with pytest.raises(DownloadError, match="announces 200,000 bytes, more than the 100,000 expected"):
        download(f"{base}/big.pth", dest, sha256=_sha(data), max_bytes=100_000)
    assert not dest.exists() and not dest.with_name("big.pth.part").exists()


class _LyingHandler(BaseHTTPRequestHandler):
    """Streams without a Content-Length (as a hostile or broken server may), far past any sane size."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(64):
                self.wfile.write(b"\0" * 65536)
        except OSError:  # the client hung up, as it should
            pass
        self.close_connection = True


def test_a_stream_growing_past_the_cap_is_cut_and_deleted(tmp_path: Path) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _LyingHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "endless.pth"
        with pytest.raises(DownloadError, match="sent at least .* more than the 300,000 expected"):
            download(f"http://127.0.0.1:{httpd.server_address[1]}/x", dest, sha256=None, max_bytes=300_000)
        assert not dest.exists() and not dest.with_name("endless.pth.part").exists()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_concurrent_fetches_of_one_file_take_turns_and_download_once(server, tmp_path: Path) -> None:
    """Two processes used to append to one .part; now the second waits and finds the verified file."""
    import subprocess
    import sys

    base, state = server
    data = _payload(2_000_000)
    state.files["/w.pth"] = data
    dest = tmp_path / "w.pth"
    code = (
        "import sys; from texup.weights.download import download; "
        "download(sys.argv[1], sys.argv[2], sha256=sys.argv[3]); print('ok')"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, f"{base}/w.pth", str(dest), _sha(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert dest.read_bytes() == data and not dest.with_name("w.pth.part").exists()
    assert len([r for r in state.requests if r[0] == "/w.pth"]) == 1
