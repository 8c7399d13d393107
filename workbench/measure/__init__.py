"""What runs inside a measuring process: one entry point (entry.py: a request in, reports out through
the channel), the paired round (pair.py) and the single measurement (single.py), the executor that
builds and times one configuration (executor.py), the clocks, peaks and FLOPs (clocks.py), the
process group under torchrun (distributed.py), and how a stop keeps the timed figures (stopping.py).

It imports the launch package's messages and channel (torch-free), the training step and the trace
capture; never the parent's loop (workbench.run) nor the report.
"""
