import os
import pathlib

import pytest

# tests/ holds shared helpers (realdata.py, spandrel_compat.py) imported by the test modules: on the path through
# pyproject.toml's `[tool.pytest.ini_options] pythonpath`.


@pytest.fixture(scope="session", autouse=True)
def texup_home(tmp_path_factory) -> pathlib.Path:
    """One model cache for the whole test session, never the user's own.

    Set for every test so that the default model is converted from the ncnn package once per session
    and shared; a test that needs an empty cache sets TEXUP_HOME itself (monkeypatch.setenv).
    """
    home = tmp_path_factory.mktemp("texup_home")
    previous = os.environ.get("TEXUP_HOME")
    os.environ["TEXUP_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("TEXUP_HOME", None)
    else:
        os.environ["TEXUP_HOME"] = previous
