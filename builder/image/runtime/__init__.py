"""The in-image runtime (premd_runtime.py is copied into images as a single file)."""
