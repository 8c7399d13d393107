"""The named regions of a training step, defined once.

The workbench's own step (workbench/training/step.py) marks them with record_function while tracing;
the analysis (markers, analyze, diagnose) measures them in any trace; the report's table and the
breakdown CSV name their columns after them. No torch import: the report reads these names too.
"""
DATA_LOADING = "data_loading"      # fetching the next batch from the DataLoader
HOST_TO_DEVICE = "host_to_device"  # the .to(device) copies of the batch (and on-device augmentation)
FORWARD = "forward"
BACKWARD = "backward"
OPTIMIZER_STEP = "optimizer_step"  # optimizer.step, the scaler's update and zero_grad
OTHER = "other"                    # the rest of a step: what no region above covers

REGIONS = (DATA_LOADING, HOST_TO_DEVICE, FORWARD, BACKWARD, OPTIMIZER_STEP)
# The parts a step's time is split into: every region, then the rest, so the parts add up to the step.
BREAKDOWN_PARTS = (*REGIONS, OTHER)
# The step's own compute (what faster kernels, AMP or compile change).
COMPUTE_PARTS = (FORWARD, BACKWARD, OPTIMIZER_STEP)
