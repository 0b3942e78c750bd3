"""Defaults shared by the preferences, the panel and the headless script (no bpy, no imports)."""

DEFAULT_OUT_DIR = "//textures_upscaled/"
DEFAULT_MODEL = "realesrgan-x4plus"
ADDON_VERSION = "0.2.0"  # = texup.__version__ and blender_manifest.toml's version (a test keeps them equal)
