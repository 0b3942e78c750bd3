"""texup._atomic.atomic_path: permissions from the umask, the folder flushed after the rename, no leftovers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from texup import _atomic
from texup._atomic import atomic_path


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_get_the_users_permissions_not_0600(tmp_path: Path, umask: int) -> None:
    # A shared studio cache (models, manifest, exports, checkpoints) must be readable by the team: mkstemp's
    # 0600 made the next user's run fail with a PermissionError.
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "manifest.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_the_folder_is_flushed_after_the_rename(tmp_path: Path, monkeypatch) -> None:
    flushed: list[Path] = []
    monkeypatch.setattr(_atomic, "fsync_folder", lambda folder: flushed.append(folder))
    with atomic_path(tmp_path / "checkpoint.pt") as tmp:
        tmp.write_bytes(b"x")
        assert flushed == []  # not before the rename
    assert flushed == [tmp_path] and (tmp_path / "checkpoint.pt").read_bytes() == b"x"


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_fsync_folder_really_runs_here(tmp_path: Path) -> None:
    _atomic.fsync_folder(tmp_path)  # a real folder on Linux: opened and flushed without error
    _atomic.fsync_folder(tmp_path / "missing")  # cannot be opened: a no-op, not an error


def test_stale_temp_files_of_killed_writes_are_cleaned_when_the_cache_lock_is_taken(tmp_path, monkeypatch):
    # kill -9 during a conversion left a 67 MB ".x4plus.safetensors.<hex>.tmp" behind forever.
    import time

    from texup.weights import cache

    monkeypatch.setenv("TEXUP_HOME", str(tmp_path))
    models = cache.models_dir()
    (models / "ncnn").mkdir(parents=True, exist_ok=True)
    old = time.time() - 2 * cache.STALE_TEMP_S
    stale = [models / ".realesrgan-x4plus.safetensors.0123abcd4567.tmp", models / "ncnn" / ".m-1.bin.89abcdef.tmp"]
    fresh = models / ".manifest.json.fedcba987654.tmp"  # maybe being written right now: kept
    foreign = models / ".notes.tmp"  # not texup's naming: kept
    for path in (*stale, fresh, foreign):
        path.write_bytes(b"x")
    for path in (*stale, foreign):
        os.utime(path, (old, old))
    with cache.cache_lock():
        pass
    assert not any(p.exists() for p in stale) and fresh.exists() and foreign.exists()
