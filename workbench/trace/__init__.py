"""Traces: capture with torch.profiler, then analysis, diagnosis and communication from the files.

Only the capture side imports torch: capture.py (the workbench's own stages), instrument.py (a
user's loop) and lightning.py (a Lightning fit). Everything else here (regions, markers, analyze,
diagnose, comm, explain, callprofile) reads plain JSON, so the report and `workbench analyze` run
without PyTorch; tests/test_layout.py holds that line.
"""
