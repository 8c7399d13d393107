"""training/step.py: each feature of the step really changes the computation (and nothing else)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from workbench.trace.regions import BACKWARD, FORWARD, HOST_TO_DEVICE, OPTIMIZER_STEP
from workbench.training.step import BatchStream, StepSettings, TrainStep

CPU = torch.device("cpu")


def _step(model: nn.Module, lr: float = 0.1, **settings) -> TrainStep:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return TrainStep(model, optimizer, StepSettings(device=CPU, **settings))


def _grads_at_step(step: TrainStep) -> list[list[torch.Tensor]]:
    """Record the gradients the optimizer sees at each of its steps (before zero_grad clears them)."""
    seen: list[list[torch.Tensor]] = []
    original = step.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append([p.grad.detach().clone() for p in step.model.parameters()])
        return original(*args, **kwargs)

    step.optimizer.step = recording_step
    return seen


# --- accumulation ------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 4, 8])
def test_accumulated_gradients_equal_full_batch(convnet, batch, k):
    full, accumulated = _step(copy.deepcopy(convnet)), _step(copy.deepcopy(convnet), accumulation_steps=k)
    full_grads, acc_grads = _grads_at_step(full), _grads_at_step(accumulated)
    loss_full, loss_acc = full(*batch), accumulated(*batch)
    assert len(full_grads) == len(acc_grads) == 1
    for g_full, g_acc in zip(full_grads[0], acc_grads[0]):
        assert torch.allclose(g_full, g_acc, rtol=1e-5, atol=1e-7)
    # The returned loss is the batch mean in both cases.
    assert torch.allclose(loss_full, loss_acc, rtol=1e-5)
    # And the updated weights agree (SGD: p - lr * grad).
    for p_full, p_acc in zip(full.model.parameters(), accumulated.model.parameters()):
        assert torch.allclose(p_full, p_acc, rtol=1e-5, atol=1e-7)


def test_accumulation_without_loss_division_would_differ(convnet, batch):
    """Guard that the equivalence test can fail: summing undivided micro-losses gives k times the gradient."""
    full, accumulated = _step(copy.deepcopy(convnet)), _step(copy.deepcopy(convnet), accumulation_steps=4)
    full_grads, acc_grads = _grads_at_step(full), _grads_at_step(accumulated)
    full(*batch)
    accumulated._forward_backward = lambda micro, steps: TrainStep._forward_backward(accumulated, micro, 1)
    accumulated(*batch)
    assert not torch.allclose(full_grads[0][0], acc_grads[0][0], rtol=1e-3)
    assert torch.allclose(4 * full_grads[0][0], acc_grads[0][0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_optimizer_steps_once_per_call_whatever_k(convnet, batch, k):
    step = _step(convnet, accumulation_steps=k)
    calls = []
    original = step.optimizer.step
    step.optimizer.step = lambda *a, **kw: (calls.append(1), original(*a, **kw))[1]
    forwards = []
    convnet.register_forward_hook(lambda module, inputs, output: forwards.append(inputs[0].shape[0]))
    for _ in range(3):
        step(*batch)
    assert len(calls) == 3
    assert forwards == [8 // k] * (3 * k)


def test_gradients_cleared_after_step(convnet, batch):
    step = _step(convnet, accumulation_steps=2)
    step(*batch)
    assert all(p.grad is None for p in convnet.parameters())


def test_step_changes_weights(convnet, batch):
    before = [p.detach().clone() for p in convnet.parameters()]
    _step(convnet)(*batch)
    assert any(not torch.equal(b, p) for b, p in zip(before, convnet.parameters()))


def test_returned_loss_is_batch_mean_loss(convnet, batch):
    images, labels = batch
    expected = nn.functional.cross_entropy(copy.deepcopy(convnet)(images), labels)
    loss = _step(convnet, accumulation_steps=4)(images, labels)
    assert loss.requires_grad is False
    assert torch.allclose(loss, expected, rtol=1e-5)


def test_clip_grad_norm_limits_the_update(convnet, batch):
    before = [p.detach().clone() for p in convnet.parameters()]
    _step(convnet, lr=1.0, clip_grad_norm=1e-3)(*batch)
    change = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(convnet.parameters(), before)))
    assert 0 < change <= 1e-3 * 1.01


# --- AMP ---------------------------------------------------------------------------------------

def _conv_output_dtypes(convnet, batch, precision: str) -> list[torch.dtype]:
    dtypes = []
    convnet[0].register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    _step(convnet, precision=precision)(*batch)
    return dtypes


def test_bf16_autocasts_convolutions(convnet, batch):
    assert _conv_output_dtypes(convnet, batch, "bf16") == [torch.bfloat16]
    # Master weights stay fp32.
    assert all(p.dtype == torch.float32 for p in convnet.parameters())


def test_fp32_runs_in_fp32(convnet, batch):
    assert _conv_output_dtypes(convnet, batch, "fp32") == [torch.float32]


@pytest.mark.parametrize("precision, scaled", [("fp32", False), ("bf16", False), ("fp16", True)])
def test_grad_scaler_only_for_fp16(convnet, precision, scaled):
    assert _step(convnet, precision=precision).scaler.is_enabled() is scaled


def test_fp16_step_runs_with_scaler_on_cpu(convnet, batch):
    step = _step(convnet, precision="fp16")
    before = [p.detach().clone() for p in convnet.parameters()]
    loss = step(*batch)
    assert torch.isfinite(loss)
    assert step.scaler.get_scale() > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, convnet.parameters()))


# --- channels_last and the host-to-device copy -----------------------------------------------

def test_to_device_channels_last(batch):
    step = _step(nn.Linear(1, 1), channels_last=True)
    images, labels = step.to_device(*batch)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert not images.is_contiguous()
    assert torch.equal(images, batch[0]) and torch.equal(labels, batch[1])


def test_to_device_contiguous_by_default(batch):
    nhwc = batch[0].contiguous(memory_format=torch.channels_last)
    images, _ = _step(nn.Linear(1, 1)).to_device(nhwc, batch[1])
    assert images.is_contiguous()


def test_channels_last_step_matches_contiguous(convnet, batch):
    plain = _step(copy.deepcopy(convnet))
    nhwc_model = copy.deepcopy(convnet).to(memory_format=torch.channels_last)
    nhwc = _step(nhwc_model, channels_last=True)
    seen = []
    nhwc_model[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    assert torch.allclose(plain(*batch), nhwc(*batch), rtol=1e-5)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


# --- profiler regions and the batch stream ------------------------------------------------------

def test_regions_only_when_annotating(convnet, batch):
    step = _step(convnet, accumulation_steps=2)

    def names(annotate: bool) -> set[str]:
        step.annotate = annotate
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(*batch)
        return {event.name for event in prof.events()}

    regions = {HOST_TO_DEVICE, FORWARD, BACKWARD, OPTIMIZER_STEP}
    assert regions <= names(True)
    assert not regions & names(False)


def test_batch_stream_is_endless_and_counts_epochs():
    data = torch.utils.data.TensorDataset(torch.arange(6.0))
    stream = BatchStream(torch.utils.data.DataLoader(data, batch_size=2))
    seen = [stream.next()[0].tolist() for _ in range(7)]
    assert seen[:3] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert seen[3:6] == seen[:3]
    assert stream.epochs == 2
