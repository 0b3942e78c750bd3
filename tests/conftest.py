import pathlib
import sys

# tests/ holds shared helpers (realdata.py, spandrel_compat.py) imported by the test modules.
sys.path.insert(0, str(pathlib.Path(__file__).parent))
