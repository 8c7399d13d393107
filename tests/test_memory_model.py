"""The memory model: optimizer state counted from the shapes must equal what each real optimizer
allocates (torch's Adam, SGD and Adafactor; bitsandbytes' 8-bit Adam), and the predictions move
the parts the way the module says."""
from __future__ import annotations

import pytest
import torch
import torchvision

from workbench.measure.clocks import memory_parts_mb
from workbench.memory_model import (BackwardProfile, Parts, optimizer_state_mib, predict, processes_to_fit, sharded_peak,
                                    step_temporaries_mib)
from workbench.training.model import build_optimizer, eight_bit_unavailable


def stepped(kind: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    optimizer = build_optimizer(kind, model.parameters(), 1e-4)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd", "adafactor",
                                  pytest.param("adamw8bit", marks=pytest.mark.skipif(
                                      eight_bit_unavailable() is not None, reason="bitsandbytes not installed"))])
def test_state_counted_from_shapes_equals_the_optimizers_own(kind):
    model, optimizer = stepped(kind)
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert optimizer_state_mib(shapes)[kind] == pytest.approx(memory_parts_mb(model, optimizer)["optimizer_state"], rel=1e-6)


@pytest.mark.skipif(eight_bit_unavailable() is not None, reason="bitsandbytes not installed")
def test_eight_bit_states_cut_adams_by_more_than_60_percent():
    adam = memory_parts_mb(*stepped("adam"))["optimizer_state"]
    eight = memory_parts_mb(*stepped("adam8bit"))["optimizer_state"]
    assert eight < 0.4 * adam


PARTS = Parts(weights=98.0, gradients=98.0, optimizer_state=195.0, activations=410.0)
BASE = {"precision": "fp32", "batch_size": 32, "micro_batch_size": 0, "checkpointing": "none", "optimizer": "adam"}


def test_each_move_acts_on_its_part():
    assert predict(PARTS, 801, BASE, {**BASE, "precision": "bf16"}).saving_mib == pytest.approx(205.0)
    assert predict(PARTS, 801, BASE, {**BASE, "micro_batch_size": 8}).saving_mib == pytest.approx(307.5)
    assert predict(PARTS, 801, BASE, {**BASE, "checkpointing": "blocks"}).saving_mib == pytest.approx(205.0)
    states = {"adam8bit": 49.0}
    assert predict(PARTS, 801, BASE, {**BASE, "optimizer": "adam8bit"}, states).peak_mib == pytest.approx(801 - 146.0)
    # bf16 halves the activations; of what is left, autocast's bf16 weight copies (half the weights,
    # 49 MiB) stay whole and the rest halves again with two micro-batches
    both = predict(PARTS, 801, BASE, {**BASE, "precision": "bf16", "micro_batch_size": 16})
    assert both.saving_mib == pytest.approx(410 - (49 + (205 - 49) * 0.5)) and "weight copies" in both.basis


def test_later_micro_batches_run_with_every_gradient_allocated():
    """A batch's peak is mid-backward with part of the gradients; accumulating, the later micro-batches
    hold them all (ResNet-50, bf16 + channels_last: predicted 52 MiB, measured 52)."""
    measured = Parts(weights=90.0, gradients=90.0, optimizer_state=180.0, activations=237.0, gradients_at_peak=46.0)
    bf16 = {**BASE, "precision": "bf16"}
    halved = predict(measured, 596, bf16, {**bf16, "micro_batch_size": 16})
    assert halved.saving_mib == pytest.approx((237 - 45) * 0.5 - (90 - 46)) and "+44 MiB of gradients" in halved.basis
    assert Parts.of({"peak_memory_mb": 596, "memory_breakdown_mb": {"weights": 90, "gradients": 90, "optimizer_state": 180,
                                                                 "activations_and_other": 237},
                     "memory_timeline": {"peak": {"by_category_mib": {"gradients": 46.0}}}}) == measured


def test_sharding_divides_what_is_replicated():
    assert sharded_peak(PARTS, 2) == pytest.approx((98 + 98 + 195) / 2 + 410)
    assert processes_to_fit(PARTS, 500) == 5 and processes_to_fit(PARTS, 400) is None


def test_selective_checkpointing_is_predicted_from_each_blocks_share_of_the_activations():
    base = {"precision": "fp32", "batch_size": 32, "checkpointing": "none"}
    everything = predict(PARTS, 801.0, base, {**base, "checkpointing": "blocks"}).saving_mib
    even = predict(PARTS, 801.0, base, {**base, "checkpointing": "blocks:4"}, blocks=5).saving_mib
    shares = (0.081, 0.388, 0.279, 0.196, 0.056)  # ResNet-50's stem and four stages at 96 px (meta forward)
    weighted = predict(PARTS, 801.0, base, {**base, "checkpointing": "blocks:4"}, blocks=5, block_shares=shares)
    assert even == pytest.approx(everything * 0.8)
    assert weighted.saving_mib == pytest.approx(everything * 0.944) and "counted per block" in weighted.basis
    every_other = predict(PARTS, 801.0, base, {**base, "checkpointing": "every:2"}, blocks=5, block_shares=shares)
    assert every_other.saving_mib == pytest.approx(everything * (0.081 + 0.279 + 0.056))


def test_block_shares_come_from_a_forward_on_the_meta_device():
    from workbench.training.model import block_activation_shares

    with torch.device("meta"):
        model = torchvision.models.resnet18(num_classes=10)
        images = torch.zeros(2, 3, 64, 64)
        shares = block_activation_shares(model, lambda: model(images))
    assert len(shares) == 5 and sum(shares) == pytest.approx(1.0)
    assert shares[1] > shares[2] > shares[3] > shares[4]  # each stage halves the side, doubles the channels


# ResNet-50 at 96 px, bf16 + channels_last, batch 32 (2026-12-06, CPU): the measured breakdown, timeline
# phases and block shares the backward walk starts from. Checkpointing all five blocks measured 476 MiB,
# the first three 476 too: the peak moved late into backward, into layer1's recompute.
WALKED_PARTS = Parts(weights=89.8, gradients=89.8, optimizer_state=179.5, activations=237.4, gradients_at_peak=46.2)
WALKED_CONFIG = {"precision": "bf16", "batch_size": 32, "checkpointing": "none", "optimizer": "adam"}
WALKED_METRICS = {"memory_timeline": {"phases": {
    "forward": {"mib": 566.7, "by_category_mib": {"weights": 89.8, "optimizer_state": 179.5, "activations": 297.1}},
    "backward": {"mib": 596.5, "by_category_mib": {}}, "optimizer_step": {"mib": 384.1, "by_category_mib": {}}},
    "peak": {"by_category_mib": {"gradients": 46.2, "activations": 266.8, "other": 13.9}}}}
WALKED_DECISIONS = {"block_activation_shares": [0.0814, 0.3884, 0.2788, 0.1958, 0.0556],
                    "block_parameter_shares": [0.0004, 0.0092, 0.0518, 0.3017, 0.636]}


def walked(after: dict):
    profile = BackwardProfile.of(WALKED_METRICS, WALKED_DECISIONS)
    return predict(WALKED_PARTS, 596.5, WALKED_CONFIG, {**WALKED_CONFIG, **after}, profile=profile)


def test_backward_walk_predicts_checkpointing_within_its_measured_saving():
    everything, three = walked({"checkpointing": "blocks"}), walked({"checkpointing": "blocks:3"})
    assert everything.saving_mib == pytest.approx(three.saving_mib)  # both peak in layer1's recompute
    assert abs(everything.saving_mib / (596.5 - 476.3) - 1) < 0.15 and "walked block by block" in everything.basis
    assert walked({"checkpointing": "blocks:2"}).peak_mib == pytest.approx(everything.peak_mib)  # so 2 suffice
    assert walked({"checkpointing": "blocks:1"}).peak_mib > 560  # the stem alone: layer1 still keeps its own


def test_the_walk_holds_each_blocks_gradients_and_activations_as_backward_reaches_it():
    profile = BackwardProfile((0.5, 0.5), (0.5, 0.5), 100.0, {})
    # nothing checkpointed: as the last block begins, both blocks' activations; as it ends, its gradients too
    assert profile.backward_high(set(), 40.0) == pytest.approx(max(100.0, 20 + 50))
    # the first checkpointed: it keeps nothing for the second's backward, and is recomputed in its own
    assert profile.backward_high({0}, 40.0) == pytest.approx(max(50.0, 20 + 50, 40 + 0))


def test_no_move_predicts_below_the_optimizer_steps_own_high():
    lean = BackwardProfile.of({"memory_timeline": {"phases": {**WALKED_METRICS["memory_timeline"]["phases"],
                                                              "optimizer_step": {"mib": 550.0}}}}, WALKED_DECISIONS)
    prediction = predict(WALKED_PARTS, 596.5, WALKED_CONFIG, {**WALKED_CONFIG, "checkpointing": "blocks"}, profile=lean)
    assert prediction.peak_mib == pytest.approx(550.0) and "optimizer step's high (550 MiB) is the peak" in prediction.basis


def test_the_walk_needs_the_timeline_and_both_shares():
    assert BackwardProfile.of({}, WALKED_DECISIONS) is None
    assert BackwardProfile.of(WALKED_METRICS, {"block_activation_shares": [0.5, 0.5]}) is None
    assert BackwardProfile.of(WALKED_METRICS, WALKED_DECISIONS).forward_activations == pytest.approx(297.4)


def test_parameter_shares_count_tied_weights_once():
    from workbench.training.model import block_parameter_shares

    with torch.device("meta"):
        resnet = block_parameter_shares(torchvision.models.resnet50(num_classes=10))
    assert len(resnet) == 5 and resnet[4] > 0.6 and 0.99 < sum(resnet) < 1.0  # the fc head is outside
    tied = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    assert block_parameter_shares(tied) == pytest.approx([20 / 24, 4 / 24])


def test_eight_bit_states_move_the_peak_into_their_steps_temporaries():
    """ResNet-18, Adam on a CPU (measured): the step's high is weights 42.7 + gradients 42.7 + state 85.3 +
    18 of temporaries = 188.8 MiB. bitsandbytes' 8-bit step measured 152.2: state 21.7 plus five fp32
    copies of the largest parameter (512x512x3x3: 9 MiB) = 45 of temporaries."""
    shapes = [(512, 512, 3, 3), (64, 3, 7, 7)]
    assert step_temporaries_mib(shapes, "cpu")["adamw8bit"] == pytest.approx(45.0, rel=1e-3)
    assert step_temporaries_mib(shapes, "cuda") == {}
    parts = Parts(weights=42.7, gradients=42.7, optimizer_state=85.3, activations=0.1)
    profile = BackwardProfile((1.0,), (1.0,), 10.0, {"forward": 140.0, "optimizer_step": 188.8},
                              step_temporaries=18.0)
    adam = {"precision": "fp32", "batch_size": 8, "checkpointing": "none", "optimizer": "adamw"}
    eight = predict(parts, 188.8, adam, {**adam, "optimizer": "adamw8bit"}, {"adamw8bit": 21.7}, profile=profile,
                    step_temporaries={"adamw8bit": 45.0})
    assert eight.peak_mib == pytest.approx(152.2) and "adamw8bit's step temporaries on this device 45 MiB" in eight.basis
    unknown = predict(parts, 188.8, adam, {**adam, "optimizer": "adamw8bit"}, {"adamw8bit": 21.7}, profile=profile)
    assert unknown.peak_mib == pytest.approx(188.8 - 85.3 + 21.7)  # the measured temporaries kept


def test_accumulation_cannot_go_under_every_gradient_and_the_copy_being_added():
    """ResNet-18 at 32 px, fused Adam (measured): 182 MiB with 12.5 of activations; 16 micro-batches of 2
    measured 190: every gradient, and two copies of the largest parameter (9 MiB) as each is added."""
    parts = Parts(weights=42.7, gradients=42.7, optimizer_state=85.3, activations=11.4, gradients_at_peak=38.9)
    base = {"precision": "fp32", "batch_size": 32, "checkpointing": "none", "optimizer": "adam"}
    split = predict(parts, 182.1, base, {**base, "micro_batch_size": 2}, largest_parameter=9.0)
    assert split.peak_mib == pytest.approx(42.7 + 42.7 + 85.3 + 18.0) and "two copies of the largest" in split.basis
    # ResNet-50 at 96 px: the micro-batch's activations are far above that floor, which then says nothing
    large = Parts(weights=89.8, gradients=89.8, optimizer_state=179.5, activations=237.4, gradients_at_peak=46.2)
    bf16 = {**base, "precision": "bf16"}
    assert predict(large, 596.5, bf16, {**bf16, "micro_batch_size": 8}, largest_parameter=9.0).peak_mib == pytest.approx(
        predict(large, 596.5, bf16, {**bf16, "micro_batch_size": 8}).peak_mib)
