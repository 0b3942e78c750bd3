"""ModelRef (texup.weights.ref): one model reference, resolved once, with the keys every user of a model needs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from texup.weights.cache import sha256_file
from texup.weights.ref import ModelRef, combined_sha256


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_each_kind_is_resolved_once_from_what_names_it(tmp_path):
    weights = _file(tmp_path / "m.safetensors", b"w")
    param = _file(tmp_path / "n.param", b"p")
    _file(tmp_path / "n.bin", b"b")
    odd = _file(tmp_path / "blend:x,y@0.5", b"a file, not a blend")
    assert ModelRef.of(weights) == ModelRef("file", str(weights), weights)
    assert ModelRef.of(str(param)).kind == "ncnn"
    assert ModelRef.of(str(odd)).kind == "file"
    assert ModelRef.of("blend:a,b@0.3").kind == "blend"
    assert ModelRef.of("realesrgan-x4plus") == ModelRef("name", "realesrgan-x4plus")
    ref = ModelRef.of("no-such-model")
    assert ModelRef.of(ref) is ref
    loaded = SimpleNamespace(module=object(), name="tiny")
    assert ModelRef.of(loaded).kind == "loaded" and ModelRef.of(loaded).loaded is loaded  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ModelRef.of(3)  # type: ignore[arg-type]


def test_the_quick_key_is_a_files_stat_and_the_identity_its_content(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    weights = _file(tmp_path / "m.safetensors", b"weights")
    key = ModelRef.of("m.safetensors").quick_key()
    st = weights.stat()
    assert key == ("file", str(weights.resolve()), st.st_size, st.st_mtime_ns)
    assert ModelRef.of(weights).quick_key() == key  # however the file is named
    assert ModelRef.of("m.safetensors").manifest_ref() == os.path.abspath("m.safetensors")
    assert ModelRef.of("m.safetensors").identity() == "sha256:" + sha256_file(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ModelRef.of(weights).quick_key() != key  # a rewritten file is a new model for the caches
    assert ModelRef.of("no-such-model").quick_key() == ("name", "no-such-model")
    assert ModelRef.of("no-such-model").identity() == "unknown:no-such-model"
    assert ModelRef.of("no-such-model").files_state() == []


def test_an_ncnn_pair_is_both_files_and_a_blend_its_parents(tmp_path):
    param = _file(tmp_path / "n.param", b"p")
    weights = _file(tmp_path / "n.bin", b"b")
    ref = ModelRef.of(weights)
    assert ref.files() == [param, weights]
    joined = hashlib.sha256((sha256_file(param) + sha256_file(weights)).encode()).hexdigest()
    assert ref.identity() == f"sha256:{joined}" == "sha256:" + combined_sha256([param, weights])
    assert [f["path"] for f in ref.files_state()] == [str(param), str(weights)]
    blend = ModelRef.of(f"blend:{weights},{param}@0.25")
    label, files = blend.sources()
    assert label == "blend:file,file@0.25" and files == [param, weights, param, weights]
    key = blend.quick_key()
    assert key[:2] == ("blend", blend.text) and [f[0] for f in key[2]] == [str(param), str(weights)] * 2
    missing = ModelRef.of(f"blend:{weights},{tmp_path / 'gone.safetensors'}@0.5")
    assert missing.sources() == (f"{missing.text} (a parent is missing)", [])
    assert ModelRef.of("blend:nonsense").identity() == "unknown:blend:nonsense"


def test_the_speed_key_is_what_engines_json_has_always_recorded(tmp_path):
    """engines.json's measurements stay found: the keys engines.select made before ModelRef, kind by kind."""
    weights = _file(tmp_path / "m.safetensors", b"w")
    st = weights.stat()
    file_key = f"file:{weights.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    assert ModelRef.of(weights).speed_key() == file_key
    assert ModelRef.of("realesrgan-x4plus").speed_key() == "name:realesrgan-x4plus"
    blend = f"blend:{weights},realesrgan-x4plus@0.3"
    assert ModelRef.of(blend).speed_key() == f"blend:{file_key}|name:realesrgan-x4plus"
    assert ModelRef.of(blend.replace("@0.3", "@0.8")).speed_key() == ModelRef.of(blend).speed_key()  # any alpha
    assert ModelRef.of("blend:only-one").speed_key() == "name:blend:only-one"
    loaded = SimpleNamespace(module=object(), arch="RRDBNet", hparams={"nb": 2, "nf": 8}, name="x")
    assert ModelRef.of(loaded).speed_key() == 'loaded:RRDBNet:{"nb": 2, "nf": 8}'
    weights.unlink()  # gone since it was resolved: the name it was given
    assert ModelRef.of(ModelRef("file", str(weights), weights)).speed_key() == f"name:{weights}"
