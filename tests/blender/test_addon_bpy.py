"""The add-on inside Blender (the PyPI ``bpy`` module, 5.0.1): scan -> upscale through the real worker
with a tiny model -> relink -> save -> reopen -> revert.

Run with the bpy environment: ``TEXUP_PYTHON=$PWD/.venv/bin/python .venv-blender/bin/python -m pytest
tests/blender``. Skipped where ``bpy`` cannot be imported (the main venv).
"""

from __future__ import annotations

import os
import stat

import pytest

bpy = pytest.importorskip("bpy")

import scene_builder  # noqa: E402  (tests/blender, put on sys.path by conftest)

ALL_UPSCALABLE = ("color.png", "rough.png", "normal.png", "leaf.png", "grouptex.png", "packed", "generated", "wall")


@pytest.fixture(scope="module")
def addon():
    import blender_addon
    from blender_addon import service

    blender_addon.register()
    yield blender_addon
    service.stop_worker()
    blender_addon.unregister()


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch, worker_python: str) -> str:
    monkeypatch.setenv("TEXUP_PYTHON", worker_python)
    return worker_python


def node_images() -> dict[str, list[str]]:
    """Tree label -> names of the images its image nodes use."""
    from blender_addon.scene import node_trees

    return {
        label: sorted(n.image.name for n in tree.nodes if n.type in {"TEX_IMAGE", "TEX_ENVIRONMENT"})
        for label, tree in node_trees()
    }


def test_scan_finds_every_image_node_with_roles_sources_and_users(addon, tmp_path):
    from blender_addon import scene

    scene_builder.build(str(tmp_path))
    infos = {info.name: info for info in scene.scan()}

    assert set(infos) == set(ALL_UPSCALABLE) | {"missing.png"}
    assert {n: infos[n].role for n in infos} == {
        "color.png": "color",
        "rough.png": "data",
        "normal.png": "normal",
        "leaf.png": "color",
        # Inside a node group, Non-Color setting, but the group output feeds Base Color: the graph wins.
        "grouptex.png": "color",
        "packed": "data",
        "generated": "color",
        "wall": "color",
        "missing.png": "data",
    }
    assert {n: infos[n].source for n in infos} == {
        "color.png": "file",
        "rough.png": "file",
        "normal.png": "file",
        "leaf.png": "file",
        "grouptex.png": "file",
        "packed": "packed",
        "generated": "generated",
        "wall": "udim",
        "missing.png": "missing",
    }
    assert infos["color.png"].users == 2  # Mat.A base colour and Mat.B emission
    assert infos["wall"].udim_tiles == (1001, 1002)
    assert infos["leaf.png"].has_alpha and not infos["color.png"].has_alpha
    assert infos["color.png"].size == (24, 20) and infos["rough.png"].size == (20, 16)
    assert infos["missing.png"].status == "missing" and infos["color.png"].status == "original"
    assert infos["wall"].filepath.endswith("wall.<UDIM>.png")


def test_role_falls_back_to_colour_space_when_the_graph_is_silent(addon, tmp_path):
    from blender_addon import scene

    scene_builder.build(str(tmp_path), with_missing=False)
    mat = bpy.data.materials["Mat.A"]
    loose_data = bpy.data.images.load(scene_builder.write_png(str(tmp_path / "loose.png"), 8, 8, 3))
    loose_data.colorspace_settings.name = "Non-Color"
    loose_color = bpy.data.images.load(scene_builder.write_png(str(tmp_path / "loose2.png"), 8, 8, 3))
    for image in (loose_data, loose_color):
        mat.node_tree.nodes.new("ShaderNodeTexImage").image = image  # linked to nothing
    infos = {info.name: info for info in scene.scan()}
    assert infos["loose.png"].role == "data"
    assert infos["loose2.png"].role == "color"


def test_upscale_relinks_every_user_keeps_settings_and_reverts_after_reopen(addon, worker_env, tiny_model, tmp_path):
    from blender_addon import relink, scene

    scene_builder.build(str(tmp_path))
    blend = str(tmp_path / "scene.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    before = node_images()
    originals = {name: (bpy.data.images[name].filepath, tuple(bpy.data.images[name].size)) for name in ALL_UPSCALABLE}
    bpy.context.scene.texup.model = tiny_model
    bpy.ops.texup.refresh()

    result = bpy.ops.texup.upscale(images=",".join(ALL_UPSCALABLE + ("missing.png",)))
    assert result == {"FINISHED"}

    results = {
        name: bpy.data.images[f"{stem}_x4"]
        for name, stem in [
            ("color.png", "color"),
            ("rough.png", "rough"),
            ("normal.png", "normal"),
            ("leaf.png", "leaf"),
            ("grouptex.png", "grouptex"),
            ("packed", "packed_src"),
            ("generated", "generated"),
            ("wall", "wall"),
        ]
    }
    # Every node that used an original now uses its result: both materials of the shared image,
    # the node group, the world; the missing texture's node is left alone.
    after = node_images()
    assert after["material 'Mat.A'"] == ["color_x4", "normal_x4", "rough_x4"]
    assert after["material 'Mat.B'"] == ["color_x4", "leaf_x4"]
    assert after["node group 'TexGroup'"] == ["grouptex_x4"]
    assert after["material 'Mat.C'"] == ["packed_src_x4"]
    assert after["world 'World'"] == ["generated_x4"]
    assert after["material 'Mat.D'"] == ["missing.png", "wall_x4"]

    for name, res in results.items():
        original = bpy.data.images[name]
        if name != "wall":
            assert tuple(res.size) == (original.size[0] * 4, original.size[1] * 4), name
        assert res.colorspace_settings.name == original.colorspace_settings.name, name
        assert res.alpha_mode == original.alpha_mode, name
        assert res[relink.ORIGINAL_PROP] == name
        # Originals are never modified.
        assert (original.filepath, tuple(original.size)) == originals[name], name
        assert original.use_fake_user
    assert results["leaf.png"].alpha_mode == "CHANNEL_PACKED"
    assert results["rough.png"].colorspace_settings.name == "Non-Color"
    rough_node = next(
        n
        for n in bpy.data.materials["Mat.A"].node_tree.nodes
        if n.type == "TEX_IMAGE" and n.image == results["rough.png"]
    )
    assert (rough_node.interpolation, rough_node.extension) == ("Closest", "EXTEND")

    # Files next to the .blend, named <stem>_x4, same format and bit depth; packed -> packed.
    out = tmp_path / "textures_upscaled"
    assert scene_builder.png_header(str(out / "rough_x4.png")) == (80, 64, 16, 0)  # 16-bit gray stays so
    assert scene_builder.png_header(str(out / "leaf_x4.png"))[2:] == (8, 6)  # RGBA stays RGBA
    assert results["color.png"].filepath == "//textures_upscaled/color_x4.png"
    assert results["packed"].packed_file is not None
    assert results["color.png"].packed_file is None
    wall = results["wall"]
    assert wall.source == "TILED"
    assert sorted((t.number, tuple(t.size)) for t in wall.tiles) == [(1001, (48, 40)), (1002, (48, 40))]
    assert (out / "wall_x4.1001.png").is_file() and (out / "wall_x4.1002.png").is_file()
    assert not (out / "missing_x4.png").exists()
    assert {i.name: i.status for i in scene.scan()}["color_x4"] == "upscaled"

    # The mapping survives save + reopen; Revert restores every original in every node.
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.open_mainfile(filepath=blend)
    assert bpy.data.images["color_x4"][relink.ORIGINAL_PROP] == "color.png"
    bpy.ops.texup.refresh()
    for item in bpy.context.window_manager.texup_list.textures:
        item.selected = True
    assert bpy.ops.texup.revert() == {"FINISHED"}
    assert node_images() == before
    assert not bpy.data.images["color.png"].use_fake_user

    # Upscale again: every output is up to date (the folder's manifest), so no worker starts, no file is
    # written (no color_x4_2.png), and the same result datablocks are linked again (no color_x4.001).
    from blender_addon import service

    service.stop_worker()
    listing = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    datablocks = sorted(bpy.data.images.keys())
    assert bpy.ops.texup.upscale(images=",".join(ALL_UPSCALABLE + ("missing.png",))) == {"FINISHED"}
    assert service.current_client() is None
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == listing
    assert sorted(bpy.data.images.keys()) == datablocks
    assert node_images() == after
    assert "8 up to date" in bpy.context.window_manager.texup_runtime.last_summary

    # A changed source is redone in place: same file name, same datablock, new pixels; the rest stay as they are.
    bpy.ops.texup.refresh()
    for item in bpy.context.window_manager.texup_list.textures:
        item.selected = True
    assert bpy.ops.texup.revert() == {"FINISHED"}
    color = bpy.data.images["color.png"]
    pixels = list(color.pixels)
    pixels[:8] = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    color.pixels = pixels
    color.save()
    bpy.ops.texup.refresh()
    assert bpy.ops.texup.upscale(images="color.png,rough.png") == {"FINISHED"}
    now = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(now) == set(listing) and now["color_x4.png"] != listing["color_x4.png"]
    assert now["rough_x4.png"] == listing["rough_x4.png"]
    assert sorted(bpy.data.images.keys()) == datablocks
    assert node_images()["material 'Mat.A'"] == ["color_x4", "normal.png", "rough_x4"]
    assert "1 upscaled, 1 up to date" in bpy.context.window_manager.texup_runtime.last_summary


def test_unsaved_file_gets_packed_results(addon, worker_env, tiny_model, tmp_path):
    scene_builder.build(str(tmp_path), with_missing=False)
    assert not bpy.data.filepath
    bpy.context.scene.texup.model = tiny_model
    bpy.context.scene.texup.scale = "2"
    assert bpy.ops.texup.upscale(images="color.png") == {"FINISHED"}
    result = bpy.data.images["color_x2"]
    assert result.packed_file is not None
    assert tuple(result.size) == (48, 40)
    assert not (tmp_path / "textures_upscaled").exists()  # nothing written next to a file that has no folder
    assert node_images()["material 'Mat.B'"] == ["color_x2", "leaf.png"]


def test_missing_worker_python_is_a_clear_error_and_changes_nothing(addon, monkeypatch, tmp_path):
    from blender_addon import service

    service.stop_worker()
    scene_builder.build(str(tmp_path), with_missing=False)
    before = node_images()
    monkeypatch.setenv("TEXUP_PYTHON", str(tmp_path / "no" / "python"))
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.texup.upscale(images="color.png")  # bpy turns the ERROR report into a RuntimeError
    assert node_images() == before


def test_worker_crash_mid_job_changes_nothing(addon, monkeypatch, tmp_path, worker_python):
    """A worker that dies during the job: clear error, no relink, no result files left."""
    from blender_addon import service

    service.stop_worker()
    scene_builder.build(str(tmp_path), with_missing=False)
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    before = node_images()
    fake = os.path.join(os.path.dirname(os.path.dirname(__file__)), "addon", "fake_worker.py")
    if not os.path.isfile(fake):
        pytest.skip("tests/addon/fake_worker.py not present")
    wrapper = tmp_path / "crashing_python"
    wrapper.write_text(f"#!/bin/sh\nexec {worker_python} {fake} crash\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("TEXUP_PYTHON", str(wrapper))
    with pytest.raises(RuntimeError, match="stopped unexpectedly|crash|exit code"):
        bpy.ops.texup.upscale(images="color.png,leaf.png")
    assert node_images() == before
    out = tmp_path / "textures_upscaled"
    assert not out.exists() or not any(out.iterdir())
    service.stop_worker()


# --- the modal operator's path: UpscaleSession (begin returns at once; the timer steps it) ------------


def _wrapper(tmp_path, name: str, body: str) -> str:
    """An executable shell script standing in for the worker's Python."""
    script = tmp_path / name
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def _begin_session(names: list[str]):
    from blender_addon import scene
    from blender_addon.operators import run_settings
    from blender_addon.session import UpscaleSession

    by_name = {info.name: info for info in scene.scan()}
    return UpscaleSession.begin([by_name[n] for n in names], run_settings(bpy.context))


def _drive(session, *, interval: float = 0.05, limit: float = 240.0, on_step=None) -> dict:
    """What the modal operator's timer does: step() until finished; returns how it went."""
    import time

    states, longest, start = [], 0.0, time.monotonic()
    while not session.finished:
        assert time.monotonic() - start < limit, f"no end after {limit} s: {session.message}"
        time.sleep(interval)  # Blender runs the UI between timer ticks
        t0 = time.monotonic()
        session.step()
        longest = max(longest, time.monotonic() - t0)
        states.append(session.state)
        if on_step is not None:
            on_step(session)
    return {"states": states, "longest_step": longest}


def test_starting_the_worker_does_not_block_and_the_job_completes(
    addon, tmp_path, worker_python, tiny_model, monkeypatch
):
    """A cold worker that takes 2 s to start: begin() returns at once, the timer picks up the hello."""
    import time

    from blender_addon import service

    service.stop_worker()
    slow = _wrapper(tmp_path, "slow_python", f'sleep 2\nexec "{worker_python}" "$@"')
    monkeypatch.setenv("TEXUP_PYTHON", slow)
    scene_builder.build(str(tmp_path))
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    bpy.context.scene.texup.model = tiny_model

    t0 = time.monotonic()
    session = _begin_session(["color.png", "rough.png"])
    began_in = time.monotonic() - t0
    assert began_in < 1.0, f"begin() blocked for {began_in:.1f} s"
    assert session.state == "starting" and "starting the texup worker" in session.message

    went = _drive(session)
    assert went["longest_step"] < 0.5
    assert went["states"].count("starting") >= 10  # the UI had the control back many times meanwhile
    assert "running" in went["states"] and session.error is None
    rows = session.finish()
    assert {r["name"]: r["status"] for r in rows} == {"color.png": "ok", "rough.png": "ok"}
    assert node_images()["material 'Mat.A'"] == ["color_x4", "normal.png", "rough_x4"]
    assert tuple(bpy.data.images["color_x4"].size) == (96, 80)

    # The worker stays warm: the next run submits at once, no "starting" state.
    session = _begin_session(["leaf.png"])
    assert session.state == "running"
    _drive(session)
    assert [r["status"] for r in session.finish()] == ["ok"]
    service.stop_worker()


def test_missing_worker_python_is_reported_at_once(addon, tmp_path, monkeypatch):
    from blender_addon import service
    from blender_addon.session import SessionError

    service.stop_worker()
    scene_builder.build(str(tmp_path), with_missing=False)
    monkeypatch.setenv("TEXUP_PYTHON", str(tmp_path / "nowhere" / "python3"))
    with pytest.raises(SessionError, match=r"nowhere/python3.*does not exist"):
        _begin_session(["color.png"])
    assert not (tmp_path / "textures_upscaled").exists()


@pytest.mark.parametrize("case", ["no_texup", "bad_version"])
def test_worker_start_failures_arrive_through_the_timer_and_change_nothing(
    addon, tmp_path, monkeypatch, worker_python, case
):
    from blender_addon import service

    service.stop_worker()
    if case == "no_texup":
        python = _wrapper(tmp_path, "plain_python", f'exec "{worker_python}" -S "$@"')  # -S: no site-packages
        expected = "has no texup"
    else:
        fake = os.path.join(os.path.dirname(os.path.dirname(__file__)), "addon", "fake_worker.py")
        python = _wrapper(tmp_path, "old_python", f'exec "{worker_python}" "{fake}" badversion')
        expected = "speaks protocol 99"
    monkeypatch.setenv("TEXUP_PYTHON", python)
    scene_builder.build(str(tmp_path), with_missing=False)
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    before = node_images()

    session = _begin_session(["color.png"])
    assert session.state == "starting"
    _drive(session, limit=60)
    assert session.error is not None and expected in session.error
    assert session.failure == session.error
    assert session.finish() == []
    assert node_images() == before
    out = tmp_path / "textures_upscaled"
    assert not out.exists() or not any(out.iterdir())
    # The blocking path (Upscale in background mode) says the same.
    with pytest.raises(RuntimeError, match=expected):
        bpy.ops.texup.upscale(images="color.png")
    service.stop_worker()


def test_cancel_stops_the_worker_at_the_next_tile_and_leaves_no_partial_files(addon, worker_env, tiny_model, tmp_path):
    """Esc / Cancel during a 256x256 texture in 16 px tiles: the worker stops within a few tiles; the
    image finished before stays applied; the cancelled one is untouched in the scene and on disk."""
    from blender_addon import service
    from blender_addon.bridge.worker_protocol import Done, Progress

    service.stop_worker()
    scene_builder.build(str(tmp_path), with_missing=False)
    big = bpy.data.images.load(scene_builder.write_png(str(tmp_path / "big.png"), 256, 256, 3))
    mat = bpy.data.materials["Mat.D"]
    node = mat.node_tree.nodes.new("ShaderNodeTexImage")
    node.image = big
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    mat.node_tree.links.new(node.outputs["Color"], bsdf.inputs["Roughness"])
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    before = node_images()
    settings = bpy.context.scene.texup
    settings.model = tiny_model
    settings.tile = 16
    settings.seamless = "off"

    session = _begin_session(["color.png", "big.png"])
    events = []
    poll = session.client.poll

    def recording_poll(timeout: float = 0.0):
        got = poll(timeout=timeout)
        events.extend(got)
        return got

    session.client.poll = recording_poll
    seen_at_cancel = {}

    def press_esc_once_big_runs(s) -> None:
        tiles = [e for e in events if isinstance(e, Progress) and e.item.endswith(":big.png")]
        if tiles and not s.cancel_sent:
            seen_at_cancel["done"], seen_at_cancel["total"] = tiles[-1].done, tiles[-1].total
            s.request_cancel()  # what Esc and the Cancel button do

    _drive(session, interval=0.01, on_step=press_esc_once_big_runs)
    rows = {r["name"]: r for r in session.finish()}

    assert seen_at_cancel, f"the big texture never started: {events[:3]} {events[-3:]}"
    total = seen_at_cancel["total"]
    assert total >= 200  # many tiles: cancelling mid-texture is meaningful
    big_tiles = [e.done for e in events if isinstance(e, Progress) and e.item.endswith(":big.png")]
    assert max(big_tiles) < total  # it never finished
    assert max(big_tiles) - seen_at_cancel["done"] <= total // 4  # stopped soon after the cancel arrived
    done = [e for e in events if isinstance(e, Done)]
    assert len(done) == 1 and done[0].cancelled and done[0].ok == 1

    assert rows["color.png"]["status"] == "ok" and rows["big.png"]["status"] == "cancelled"
    assert "1 upscaled" in session.summary() and "1 cancelled" in session.summary()
    after = node_images()
    assert after["material 'Mat.D'"] == before["material 'Mat.D'"]  # big.png still used, nothing new
    assert "big_x4" not in bpy.data.images
    assert after["material 'Mat.A'"] == ["color_x4", "normal.png", "rough.png"]
    out = tmp_path / "textures_upscaled"
    assert sorted(p.name for p in out.iterdir()) == [".texup", "color_x4.png"]  # no partial or temporary files
    import json

    assert sorted(json.loads((out / ".texup" / "outputs.json").read_text())["files"]) == ["color_x4.png"]
    assert scene_builder.png_header(str(tmp_path / "big.png"))[:2] == (256, 256)  # original untouched
    # The worker is still usable after a cancel.
    session = _begin_session(["rough.png"])
    _drive(session)
    assert [r["status"] for r in session.finish()] == ["ok"]
    service.stop_worker()


# --- "Fine-tune on these textures": FineTuneSession (the modal operator's path) and the operator -------

TINY_TRAIN_CONFIG = (
    '{"data": {"hr_crop": 16, "batch_size": 2, "val_fraction": 0.2}, "eval_every": 0, '
    '"checkpoint_every": 0, "tensorboard": false}'
)


def _finetune_setup(tmp_path, tiny_model: str, steps: int) -> None:
    scene_builder.build(str(tmp_path), with_missing=False)
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    settings = bpy.context.scene.texup
    settings.model = tiny_model
    settings.finetune_stage = "psnr"
    settings.finetune_steps = steps
    config = tmp_path / "tiny_train.json"
    config.write_text(TINY_TRAIN_CONFIG)
    settings.finetune_config = str(config)


def _begin_finetune(names: list[str]):
    from blender_addon import scene
    from blender_addon.finetune import FineTuneSession
    from blender_addon.operators import finetune_settings

    by_name = {info.name: info for info in scene.scan()}
    return FineTuneSession.begin([by_name[n] for n in names], finetune_settings(bpy.context))


def test_finetune_exports_the_dataset_trains_and_sets_the_model(addon, worker_env, tiny_model, tmp_path):
    from blender_addon.operators import run_settings

    _finetune_setup(tmp_path, tiny_model, steps=4)
    session = _begin_finetune(["color.png", "rough.png", "packed", "generated", "wall"])
    data_dir = session.job.data_dir
    assert data_dir.startswith(str(tmp_path / "texup_training")) and data_dir.endswith("data")
    assert sorted(os.listdir(data_dir)) == [
        "color.png",
        "generated.png",
        "packed_src.png",
        "rough.png",
        "wall_1001.png",
        "wall_1002.png",
    ]
    with open(os.path.join(data_dir, "color.png"), "rb") as copy, open(str(tmp_path / "color.png"), "rb") as orig:
        assert copy.read() == orig.read()  # files go in as they are
    assert session.job.pretrained == tiny_model and session.job.stage == "psnr" and session.job.steps == 4

    fractions = []
    _drive(session, on_step=lambda s: fractions.append(s.progress))
    assert session.failure is None, session.summary()
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    model = session.finish(bpy.context.scene)
    assert model is not None and os.path.isfile(model) and model.endswith("model.safetensors")
    stored = bpy.context.scene.texup.model
    assert stored.startswith("//texup_training/") and bpy.path.abspath(stored) == model
    assert run_settings(bpy.context).model == model  # Upscale now uses the fine-tuned model
    assert "fine-tuned 4 steps" in session.summary()
    assert any(note.startswith("data: ") for note in session.tracker.notes)  # the operator reports these

    # ... and it upscales with it.
    session = _begin_session(["leaf.png"])
    _drive(session)
    assert [r["status"] for r in session.finish()] == ["ok"]


def test_finetune_cancel_keeps_the_model_and_the_operator_reports_failures(addon, worker_env, tiny_model, tmp_path):
    _finetune_setup(tmp_path, tiny_model, steps=100000)
    session = _begin_finetune(["color.png", "rough.png"])

    def cancel_once_running(s) -> None:
        if s.tracker.step >= 1:
            s.request_cancel()

    _drive(session, on_step=cancel_once_running)
    assert session.tracker.cancelled and session.failure is None
    assert session.finish(bpy.context.scene) is None and bpy.context.scene.texup.model == tiny_model
    assert "cancelled at step" in session.summary()

    # The operator (blocking in background mode): a config that cannot work is an error; Model unchanged.
    settings = bpy.context.scene.texup
    settings.finetune_steps = 2
    (tmp_path / "tiny_train.json").write_text('{"data": {"hr_crop": 512}}')
    with pytest.raises(RuntimeError, match="no usable training images"):  # bpy raises for an ERROR report
        bpy.ops.texup.finetune(images="color.png,rough.png")
    assert settings.model == tiny_model
    assert "no usable training images" in bpy.context.window_manager.texup_runtime.last_summary

    (tmp_path / "tiny_train.json").write_text(TINY_TRAIN_CONFIG)
    assert bpy.ops.texup.finetune(images="color.png,rough.png") == {"FINISHED"}
    assert settings.model.startswith("//texup_training/") and settings.model.endswith("model.safetensors")
    assert os.path.isfile(bpy.path.abspath(settings.model))


def test_finetune_without_a_worker_python_writes_nothing(addon, monkeypatch, tmp_path):
    from blender_addon import service
    from blender_addon.session import SessionError

    service.stop_worker()
    monkeypatch.setenv("TEXUP_PYTHON", str(tmp_path / "no_such_python"))
    scene_builder.build(str(tmp_path), with_missing=False)
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    with pytest.raises(SessionError, match="does not exist"):
        _begin_finetune(["color.png"])
    assert not (tmp_path / "texup_training").exists()


def test_blenders_own_validator_accepts_the_manifest():
    """Blender's extension validator (bl_pkg's blender_ext.py, shipped in bpy) accepts blender_addon/ as it is."""
    import subprocess
    import sys
    from pathlib import Path

    scripts = Path(bpy.utils.system_resource("SCRIPTS"))
    validator = scripts / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    assert validator.is_file(), validator
    addon = Path(__file__).resolve().parents[2] / "blender_addon"
    run = subprocess.run(
        [sys.executable, str(validator), "validate", str(addon)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
