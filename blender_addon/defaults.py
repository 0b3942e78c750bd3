"""Defaults shared by the preferences, the panel and the headless script (no bpy, no imports)."""

DEFAULT_OUT_DIR = "//textures_upscaled/"
DEFAULT_MODEL = "realesrgan-x4plus"
