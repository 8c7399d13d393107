"""workbench: a profiling-driven optimization workbench for PyTorch training loops."""

__version__ = "0.1.0"
