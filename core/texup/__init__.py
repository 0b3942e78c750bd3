"""texup: ESRGAN texture upscaling (API being written)."""
__version__ = "0.1.0"
