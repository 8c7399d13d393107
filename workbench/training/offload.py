"""The optimizer state in host memory: the step runs on the CPU, the device keeps weights and gradients.

ZeRO-Offload's idea for one process (DeepSpeed's `offload_optimizer`): Adam's two states are twice the
weights, and on a card that does not fit them they need not live there. Each step copies the gradients
to fp32 copies of the weights kept in host memory, steps the run's own optimizer on those, and copies the
updated weights back. The device then holds no optimizer state, at the cost of two copies of the
weights across the bus and a CPU step each optimizer step. On a CPU there is nothing to move: the stage
is offered on CUDA only.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

HOST = torch.device("cpu")


class HostOffloaded:
    """An optimizer (made by `build` over host copies of `params`) stepping for the device's parameters.

    Duck-typed where the training step needs it (step, zero_grad, param_groups, state, defaults,
    state_dict): GradScaler passes it through when fp16 is off, which the configuration checks."""

    def __init__(self, params: Iterable[torch.nn.Parameter], build: Callable[[list], torch.optim.Optimizer]):
        self.params = [p for p in params if p.requires_grad]
        # Pinned where a CUDA device is there to pin for: the copies then run at the bus's full rate.
        pin = torch.cuda.is_available() and any(p.device.type == "cuda" for p in self.params)
        self.host = [torch.nn.Parameter(p.detach().to(HOST, copy=True).pin_memory() if pin else
                                        p.detach().to(HOST, copy=True)) for p in self.params]
        self.optimizer = build(self.host)

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    @property
    def defaults(self) -> dict:
        return self.optimizer.defaults

    def step(self, closure=None):
        if closure is not None:
            raise ValueError("the host-offloaded optimizer steps without a closure")
        for device_param, host_param in zip(self.params, self.host):
            host_param.grad = None if device_param.grad is None else device_param.grad.detach().to(HOST, torch.float32)
        self.optimizer.step()
        with torch.no_grad():
            for device_param, host_param in zip(self.params, self.host):
                device_param.copy_(host_param)
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()
        self.optimizer.zero_grad(set_to_none=True)  # the host copies' gradients: only the step's

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
