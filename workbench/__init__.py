"""workbench: a profiling-driven optimization workbench for PyTorch training loops."""
import os

# Kineto logs a harmless "gpuGetDeviceCount failed" error on every capture on a machine without a
# GPU; keep the terminal for our own progress lines (a user's own setting wins).
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

__version__ = "0.1.0"
