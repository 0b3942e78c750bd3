"""Data-parallel training: two ranks under torchrun (gloo, CPU) end a step with the same weights as
one process over the same global batch, whether both ranks run on one node or on two "nodes" (two
torchrun agents meeting through a c10d rendezvous on 127.0.0.1, as on two machines).

The run uses the GAN stage, so the parity covers the generator's and the discriminator's gradient
averaging, the relativistic average taken over the *global* batch, feature matching, gradient
clipping, Adam and EMA. The VGG19-style discriminator has no BatchNorm, whose per-rank batch
statistics would (legitimately) differ from one process's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from realdata import real_image

from texup.training.checkpoint import load_checkpoint
from texup.training.config import config_from_dict
from texup.training.trainer import train

pytestmark = pytest.mark.slow  # torchrun / DDP process groups

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")

SETTINGS = {
    "stage": "gan",
    "steps": 2,
    "seed": 11,
    "precision": "fp32",
    "device": "cpu",
    "tensorboard": False,
    "eval_every": 0,
    "checkpoint_every": 0,
    "log_every": 1,
    "deterministic": True,
    "generator": {
        "pretrained": None,
        "arch": "RRDBNet",
        "hparams": {"scale": 2, "num_feat": 8, "num_block": 1, "num_grow_ch": 4},
    },
    "discriminator": {"kind": "vgg19", "hparams": {"channels": [4, 4, 8, 8, 8], "fc": [16, 16, 8]}},
    "data": {"hr_crop": 32, "batch_size": 4, "val_fraction": 0.0, "degradation": "realesrgan"},
    "optim": {"lr_g": 1e-3, "lr_d": 1e-3, "ema_decay": 0.5, "grad_clip": 0.05},
}


@pytest.fixture()
def library(tmp_path: Path) -> Path:
    root = tmp_path / "lib"
    root.mkdir()
    Image.fromarray(real_image("gravel.png")[:80, :90, 0]).save(root / "gravel.png")
    Image.fromarray(real_image("coffee.png")[50:150, 100:190]).save(root / "coffee.png")
    Image.fromarray(real_image("brick.png")[:64, :70, 0]).save(root / "brick.png")
    return root


def _tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    out = {f"g.{k}": v for k, v in ckpt["generator"]["state_dict"].items()}
    out.update({f"ema.{k}": v for k, v in ckpt["ema"].items()})
    out.update({f"d.{k}": v for k, v in ckpt["discriminator"]["state_dict"].items()})
    return out


def _train_one_process(library: Path, out: Path) -> dict:
    """The reference: the same settings in this process, one rank over the whole global batch."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = config_from_dict({**SETTINGS, "data": {**SETTINGS["data"], "root": str(library)}, "out_dir": str(out)})
        train(single)
    finally:
        torch.set_num_threads(previous)
    return load_checkpoint(out / "checkpoint.pt")


def _assert_same_training(ddp_ckpt: dict, one_ckpt: dict) -> None:
    """Every network of the data-parallel run equals the one-process run's after the same steps."""
    assert ddp_ckpt["step"] == one_ckpt["step"] == 2
    ddp, one = _tensors(ddp_ckpt), _tensors(one_ckpt)
    assert ddp.keys() == one.keys()
    # The relativistic loss does not change when every logit shifts by the same amount, so the
    # discriminator's gradient along such directions (e.g. biases feeding the head through units that
    # are active for every sample) is zero up to rounding, and Adam divides that rounding noise by
    # itself. Those elements (gradient RMS below 1e-6, read from Adam's second moment) carry no signal
    # and are left out; every other element of every network must match.
    from texup.archs.discriminator import build_discriminator

    names = [n for n, _ in build_discriminator("vgg19", SETTINGS["discriminator"]["hparams"]).named_parameters()]
    informative = {}
    for index, name in enumerate(names):
        v = one_ckpt["optim_d"]["state"][index]["exp_avg_sq"]
        informative[f"d.{name}"] = (v / (1 - 0.999**2)).sqrt() > 1e-6
    total = sum(m.numel() for m in informative.values())
    assert sum(int(m.sum()) for m in informative.values()) > 0.98 * total
    for key in one:
        a, b = ddp[key], one[key]
        if key in informative:
            a, b = a[informative[key]], b[informative[key]]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)
    # Sanity: the weights did move during the two steps (the comparison is not between untouched inits).
    from texup.archs import build

    torch.manual_seed(SETTINGS["seed"])
    fresh = build("RRDBNet", SETTINGS["generator"]["hparams"]).state_dict()
    changed = [k for k, v in fresh.items() if not torch.equal(v, one[f"g.{k}"])]
    assert len(changed) > len(fresh) // 2


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")
def test_two_gloo_ranks_match_one_process(library: Path, tmp_path: Path) -> None:
    cfg_file = tmp_path / "ddp.json"
    cfg_file.write_text(json.dumps(SETTINGS))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [
            TORCHRUN,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "texup",
            "train",
            "--config",
            str(cfg_file),
            "--data",
            str(library),
            "--out",
            str(tmp_path / "ddp"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 ranks" in proc.stderr  # the CLI on rank 0 reported the process group

    one_ckpt = _train_one_process(library, tmp_path / "single")
    _assert_same_training(load_checkpoint(tmp_path / "ddp" / "checkpoint.pt"), one_ckpt)
    losses = np.loadtxt(tmp_path / "ddp" / "log.csv", delimiter=",", skiprows=1, usecols=3)
    assert np.isfinite(losses).all()


# ----------------------------------------------------------------------------------------------
# two "nodes": two torchrun agents on this machine, joined by a c10d rendezvous on 127.0.0.1
# ----------------------------------------------------------------------------------------------
#: Run by torchrun in place of ``-m texup``: records what the worker process was told (torchrun's
#: environment, its pid for clean-up), then runs ``python -m texup ARGS...`` in the same process.
NODE_PROBE = """\
import json, os, runpy, sys
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
        "ROLE_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
record = {k: os.environ.get(k) for k in keys}
record.update(node=os.environ["TEXUP_TEST_NODE"], pid=os.getpid())
with open(os.path.join(sys.argv[1], "rank%s.json" % os.environ["RANK"]), "w") as f:
    json.dump(record, f)
sys.argv = ["texup", *sys.argv[2:]]
runpy.run_module("texup", run_name="__main__", alter_sys=True)
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen], worker_pids: list[int], probe: Path) -> None:
    """End the torchrun agents (SIGTERM: each stops its workers), then any of their workers still alive."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for pid in worker_pids:  # torchrun starts its workers in their own sessions
        try:  # only a process still running this test's probe (the pid may have been reused)
            if str(probe) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")
def test_two_nodes_c10d_rendezvous_match_one_process(library: Path, tmp_path: Path) -> None:
    cfg_file = tmp_path / "ddp.json"
    cfg_file.write_text(json.dumps(SETTINGS))
    probe = tmp_path / "node_probe.py"
    probe.write_text(NODE_PROBE)
    records = tmp_path / "ranks"
    records.mkdir()
    port = _free_port()
    # Each "node" gets its own output folder, as if the two machines shared no file system: the
    # files must all appear on the node that holds rank 0, and none on the other.
    outs = {node: tmp_path / f"node{node}" / "run" for node in ("0", "1")}
    procs, logs = [], {}
    try:
        for node in ("0", "1"):
            logs[node] = (tmp_path / f"node{node}.out", tmp_path / f"node{node}.err")
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TEXUP_TEST_NODE": node}
            with open(logs[node][0], "w") as out, open(logs[node][1], "w") as err:
                procs.append(
                    subprocess.Popen(
                        [
                            TORCHRUN,
                            "--nnodes",
                            "2",
                            "--nproc-per-node",
                            "1",
                            "--rdzv-backend",
                            "c10d",
                            "--rdzv-endpoint",
                            f"127.0.0.1:{port}",
                            "--rdzv-id",
                            f"texup-test-{port}",
                            "--rdzv-conf",
                            "join_timeout=60",
                            # the address rank 0's node advertises as MASTER_ADDR (default: its FQDN)
                            "--local-addr",
                            "127.0.0.1",
                            str(probe),
                            str(records),
                            "train",
                            "--config",
                            str(cfg_file),
                            "--data",
                            str(library),
                            "--out",
                            str(outs[node]),
                        ],
                        env=env,
                        stdout=out,
                        stderr=err,
                        stdin=subprocess.DEVNULL,
                    )
                )
        deadline = time.monotonic() + 240
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break  # one node failed: do not wait for the other to time out
            time.sleep(0.2)
        codes = [p.poll() for p in procs]
    finally:
        pids = [json.loads(f.read_text())["pid"] for f in records.glob("rank*.json")]
        _stop(procs, pids, probe)

    def tail(node: str) -> str:
        return logs[node][1].read_text()[-3000:]

    assert codes == [0, 0], f"exit codes {codes}\nnode 0:\n{tail('0')}\nnode 1:\n{tail('1')}"

    # What each worker was told: one process per node, two nodes, ranks 0 and 1, one master.
    ranks = {int(r["RANK"]): r for r in (json.loads(f.read_text()) for f in records.glob("rank*.json"))}
    assert sorted(ranks) == [0, 1]
    assert {r["node"] for r in ranks.values()} == {"0", "1"}
    for rank, r in ranks.items():
        assert (r["WORLD_SIZE"], r["GROUP_WORLD_SIZE"], r["LOCAL_WORLD_SIZE"]) == ("2", "2", "1")
        assert (r["LOCAL_RANK"], r["GROUP_RANK"], r["ROLE_RANK"]) == ("0", str(rank), str(rank))
        assert r["TORCHELASTIC_RUN_ID"] == f"texup-test-{port}"
    assert ranks[0]["MASTER_ADDR"] == ranks[1]["MASTER_ADDR"] == "127.0.0.1"
    assert ranks[0]["MASTER_PORT"] == ranks[1]["MASTER_PORT"]
    main_node, other_node = ranks[0]["node"], ranks[1]["node"]

    # Only rank 0 reports and writes: its node has every output, the other node's folder was never made.
    main_out = outs[main_node]
    for name in ("checkpoint.pt", "model.safetensors", "log.csv", "config.json"):
        assert (main_out / name).is_file(), name
    assert not outs[other_node].exists()
    assert "2 ranks" in logs[main_node][1].read_text()
    assert logs[main_node][0].read_text().strip() == str(main_out / "model.safetensors")
    assert "texup:" not in logs[other_node][1].read_text()
    assert logs[other_node][0].read_text().strip() == ""

    # The two nodes trained as one process would over the same global batch.
    one_ckpt = _train_one_process(library, tmp_path / "single")
    _assert_same_training(load_checkpoint(main_out / "checkpoint.pt"), one_ckpt)
    from texup.weights import load_model

    exported = load_model(main_out / "model.safetensors").module.state_dict()
    for key, value in one_ckpt["ema"].items():
        torch.testing.assert_close(exported[key], value, rtol=1e-5, atol=1e-6, msg=key)


#: Each rank checks one value all ranks share and one that differs per rank, and records what it saw.
AGREE_SCRIPT = """\
import json, os, sys
from texup.training.distributed import check_same_on_ranks, setup, teardown
info = setup("cpu", timeout_s=60)
check_same_on_ranks(7, "a shared value", info.device)
try:
    check_same_on_ranks(3 * info.rank + 1, "the step to start from", info.device)
    outcome = "no error"
except ValueError as exc:
    outcome = str(exc)
teardown(info, owned=True)
with open(os.path.join(sys.argv[1], "rank%d.json" % info.rank), "w") as f:
    json.dump({"world": info.world_size, "outcome": outcome}, f)
"""


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")
def test_ranks_that_disagree_fail_together(tmp_path: Path) -> None:
    """A fact read from each node's own files (e.g. a resumed run's step, from OUT/checkpoint.pt) that
    differs between ranks is an error on every rank, not ranks waiting on each other's collectives."""
    script = tmp_path / "agree.py"
    script.write_text(AGREE_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc-per-node", "2", str(script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen == {"world": 2, "outcome": "the ranks disagree on the step to start from (rank 0: 1, rank 1: 4)"}
