"""Build the installable Blender add-on zip: ``python scripts/build_addon.py [--out dist/]``.

The zip holds one folder, ``texup_blender/``, with blender_addon/'s sources (manifest, Python files,
bridge/). Blender 4.2+ installs it as an extension (Preferences > Get Extensions > Install from Disk,
reading blender_manifest.toml); Blender 3.x installs it as a legacy add-on (Preferences > Add-ons >
Install, reading bl_info). Caches, compiled files and tests are left out. Prints the zip's path.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import zipfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPO_ROOT, "blender_addon")
PACKAGE = "texup_blender"
_KEEP = (".py", ".toml", ".md", ".txt")
_SKIP_DIRS = {"__pycache__", "tests", ".pytest_cache"}


def addon_version() -> str:
    with open(os.path.join(SOURCE, "blender_manifest.toml"), encoding="utf-8") as fh:
        match = re.search(r'^version\s*=\s*"([^"]+)"', fh.read(), re.MULTILINE)
    if match is None:
        raise SystemExit("build_addon: blender_manifest.toml has no version")
    return match.group(1)


def build(out_dir: str) -> str:
    """Write ``<out_dir>/texup_blender-<version>.zip`` (atomically) and return its path."""
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, f"{PACKAGE}-{addon_version()}.zip")
    tmp = target + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for folder, dirs, files in os.walk(SOURCE):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
            for name in sorted(files):
                if not name.endswith(_KEEP):
                    continue
                path = os.path.join(folder, name)
                arcname = os.path.join(PACKAGE, os.path.relpath(path, SOURCE)).replace(os.sep, "/")
                zf.write(path, arcname)
    os.replace(tmp, target)
    return target


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "dist"), help="output folder (default dist/)")
    args = parser.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
