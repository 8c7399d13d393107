"""What one training step is made of: data (CIFAR format, ImageFolder, the batched pipeline, the
DataLoader workers sweep), the model and its surgery, and the step itself with its named regions.

Uses the leaf modules and the region names of workbench.trace.regions; knows nothing of the run.
"""
