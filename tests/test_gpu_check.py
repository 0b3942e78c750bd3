"""scripts/gpu_check.py (issue 25): the report's structure, the dry run, failures and time limits per part.

The dry run and a failing part are quick (seconds: each part is a child process). The CPU self-test
(``--device cpu --tiny``) runs every part's code on the CPU with a tiny network and is in the slow tier, as is the
time-limit test; no figure is asserted (this machine is shared and has no GPU), only what must hold anywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
PARTS = [
    "env",
    "model",
    "precision",
    "speed",
    "big",
    "oom",
    "train_psnr",
    "train_gan",
    "train_gan_fc4",
    "train_fp16",
    "ray",
    "vulkan",
]
STATUSES = {"pass", "fail", "error", "timeout", "skipped"}


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


def _check(out: Path, *args: str, timeout: int = 120) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True, timeout=timeout
    )
    report_path = out / "gpu_check.json"
    assert report_path.is_file(), done.stdout[-2000:] + done.stderr[-2000:]
    return done, json.loads(report_path.read_text(encoding="utf-8"))


def _summary_lines(out: Path) -> list[str]:
    return [line for line in (out / "gpu_check.md").read_text(encoding="utf-8").splitlines() if line.startswith("- **")]


def _assert_well_formed(report: dict, out: Path, names: list[str]) -> None:
    assert [p["name"] for p in report["parts"]] == names
    for part in report["parts"]:
        assert part["status"] in STATUSES and part["line"] and "\n" not in part["line"], part
        assert part["seconds"] >= 0 and part["limit_s"] > 0 and part["what"]
        if part["status"] in ("error", "timeout"):
            assert part["error"]["type"] and part["error"]["message"] and "traceback" in part["error"], part
    lines = _summary_lines(out)
    assert len(lines) == len(names)
    for part, line in zip(report["parts"], lines):
        assert line.startswith(f"- **{part['name']}** {part['status'].upper()} (") and part["line"] in line
    assert (out / "gpu_check.log").is_file()


@pytest.mark.skipif(not _no_cuda(), reason="a CUDA GPU is here: the script checks it instead of a dry run")
def test_dry_run_skips_every_gpu_part_with_its_reason(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done, report = _check(out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert report["mode"] == "dry-run" and "CUDA" in report["dry_run_reason"]
    _assert_well_formed(report, out, PARTS)
    env, *gpu_parts = report["parts"]
    assert env["status"] == "pass" and env["data"]["cuda"]["available"] is False
    assert env["data"]["cuda"]["torch"] and "installs" not in env["data"]  # a dry run never runs pip
    for part in gpu_parts:
        assert part["status"] == "skipped" and part["reason"] == report["dry_run_reason"], part
        assert part["line"] == f"skipped (dry run): {report['dry_run_reason']}"
    assert "nothing was measured" in (out / "gpu_check.md").read_text(encoding="utf-8")
    for name in PARTS:  # one line each on stdout too
        assert any(line.split()[:1] == [name] for line in done.stdout.splitlines()), name


def test_unknown_part_names_are_refused_before_anything_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x"), "--parts", "precision,nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "unknown part(s) nope" in done.stderr
    assert not (tmp_path / "x").exists()


def test_a_failing_part_records_its_error_and_the_next_part_still_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    missing = tmp_path / "no-such-model.safetensors"
    # --parts in any order: the script's order, env always first
    done, report = _check(out, "--device", "cpu", "--tiny", "--model", str(missing), "--parts", "oom,precision")
    assert done.returncode == 1  # a part failed
    assert report["mode"] == "cpu-self-test"
    _assert_well_formed(report, out, ["env", "precision", "oom"])
    for part in report["parts"][1:]:
        assert part["status"] == "error", part
        assert str(missing) in part["error"]["message"] and "Traceback" in part["error"]["traceback"]
        assert part["line"].startswith(f"{part['error']['type']}: ")
    assert "ERROR" in (out / "gpu_check.md").read_text(encoding="utf-8")


@pytest.mark.slow  # every part's code on the CPU: about a minute on an idle 2-core machine, two on a busy one
def test_cpu_self_test_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # A generous budget (its part limits scale with it): this machine is shared, and a part past its limit would
    # fail the test for the machine's load, not for its code.
    args = ("--device", "cpu", "--tiny", "--budget-s", "1800", "--work", str(tmp_path / "work"))
    done, report = _check(out, *args, timeout=1900)
    summary = (out / "gpu_check.md").read_text(encoding="utf-8")
    assert done.returncode == 0, summary
    _assert_well_formed(report, out, PARTS)
    parts = {p["name"]: p for p in report["parts"]}
    assert {n for n, p in parts.items() if p["status"] != "pass"} == {"train_fp16"}, summary
    assert parts["train_fp16"]["status"] == "skipped" and "CUDA" in parts["train_fp16"]["reason"]
    data = {n: p["data"] for n, p in parts.items()}
    assert data["model"]["name"] == "realesrgan-x4plus" and data["model"]["tile"]["shape"] == [64, 64, 3]
    precisions = data["precision"]["precisions"]
    assert set(precisions) == {"fp32", "bf16", "fp16"} and all(r["psnr_db"] >= 40 for r in precisions.values())
    assert set(data["speed"]["tiles"]) == {"16", "32", "64", "auto"}
    assert all(r["s_per_mp"] > 0 and r["engine_s_per_mp"] > 0 for r in data["speed"]["tiles"].values())
    assert data["big"]["tiles"] >= 1 and data["big"]["s_per_mp"] > 0
    assert data["oom"]["simulated"] is True and "96:oom" in data["oom"]["calls"]
    assert data["oom"]["psnr_vs_uncapped_db"] >= 40
    for name in ("train_psnr", "train_gan", "train_gan_fc4"):
        assert data[name]["finite"] and data[name]["resumed"], data[name]
        assert [r["steps"] for r in data[name]["runs"]] == [2, 4]
    assert data["ray"]["exit_code"] == 0 and min(data["ray"]["psnr_vs_local_db"].values()) >= 40
    assert data["vulkan"]["engine"]["engine"] == "ncnn" and data["vulkan"]["psnr_db"] >= 40


@pytest.mark.slow  # the real model on the CPU, stopped by its time limit
def test_a_part_past_its_limit_stops_as_a_timeout(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # Full-size speed on the CPU cannot finish in the 8 s this budget leaves it; the report must still be complete.
    done, report = _check(out, "--device", "cpu", "--parts", "speed", "--budget-s", "60", timeout=120)
    assert done.returncode == 1
    _assert_well_formed(report, out, ["env", "speed"])
    speed = report["parts"][1]
    assert speed["status"] == "timeout" and speed["seconds"] < 30, speed
