"""Predicted peak memory: what a memory move should save, from the breakdown of the configuration it
builds on, before it is measured (the report sets prediction beside measurement).

The breakdown is the measured one (weights, gradients and optimizer state summed from the tensors;
activations and the rest = the measured peak minus those). Each move acts on one part:
- bf16 autocast halves the activations kept for backward;
- k accumulated micro-batches keep the activations of one micro-batch (1/k of them), but not of
  autocast's cached low-precision weight copies (half the weights, kept for the whole step); and
  while the later micro-batches run, every gradient is already allocated, where one batch's peak
  (mid-backward) held only part of them (the memory timeline says how much), and adding each new
  gradient into its predecessor holds two copies of a parameter: where the activations are small,
  that is the floor;
- checkpointing the blocks keeps their inputs and one block's recompute. Where the step's memory
  timeline and each block's shares of the activations and parameters are known, the backward pass is
  walked block by block (BackwardProfile): while backward runs through block j, every later block's
  gradients are allocated, and the activations of block j (recomputed if checkpointed) and of every
  earlier block that kept its own. Checkpointing moves the peak late into backward, where nearly every
  gradient exists and the first, widest blocks are recomputed, so a CNN saves less than its share of
  the activations. Without those figures, about half of the activations;
- another optimizer changes the state to what its own tensors need, counted exactly from the
  parameters' shapes (`optimizer_state_mib`, recorded by the measuring process), and its step's own
  temporaries where they are known (`step_temporaries_mib`): a smaller state can move the peak into
  the optimizer step, where every gradient is allocated;
- sharding over N processes (FSDP) divides weights, gradients and state by N;
- offloading the optimizer to the host leaves none of its state on the device.
Torch-free: shapes are tuples, sizes MiB.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

from workbench.config import checkpoint_picks, checkpoint_share

MIB = 2**20
# The two activation shares are the ResNet-50 figures (96 px, CPU, 2026-11): bf16 saved 49% (batch 64)
# and 50% (batch 32) of the activations part, checkpointing the stem and layer1-4 53% at both sizes.
# A model with many small blocks checkpoints closer to all of it: the report shows the error.
# Accumulation, same runs: fp32 4 micro-batches saved 301 MiB (predicted 296 with the gradient term,
# 331 without); bf16 + channels_last 2 micro-batches saved 52 (predicted 52; 118 without either term).
AMP_ACTIVATION_SAVING = 0.5
CHECKPOINT_ACTIVATION_SAVING = 0.5
# bitsandbytes' 8-bit states: tensors under this many elements keep two fp32 states; larger ones one byte
# per state per element, an fp32 absmax per block of 256, and a 256-entry fp32 code book per state.
BNB_MIN_8BIT_SIZE, BNB_BLOCK, BNB_QMAP = 4096, 256, 256
ADAM_KINDS = ("adam", "adamw")
EIGHT_BIT_KINDS = ("adam8bit", "adamw8bit")
OPTIMIZER_KINDS = ADAM_KINDS + ("sgd",) + EIGHT_BIT_KINDS + ("adafactor",)


@dataclass(frozen=True)
class Parts:
    """Where a measured peak sits, in MiB."""

    weights: float
    gradients: float
    optimizer_state: float
    activations: float
    # The gradients allocated at the moment of the peak (the memory timeline); None: not profiled.
    gradients_at_peak: float | None = None

    @classmethod
    def of(cls, metrics: Mapping) -> "Parts | None":
        """The parts of a stage's measured metrics (None where it was not measured)."""
        parts = metrics.get("memory_breakdown_mb") or {}
        if metrics.get("peak_memory_mb") is None or "weights" not in parts:
            return None
        peak = ((metrics.get("memory_timeline") or {}).get("peak") or {}).get("by_category_mib") or {}
        return cls(parts["weights"], parts["gradients"], parts["optimizer_state"],
                   max(0.0, parts.get("activations_and_other", 0.0)), peak.get("gradients"))

    def largest(self) -> str:
        named = {"weights": self.weights, "gradients": self.gradients, "optimizer state": self.optimizer_state,
                 "activations": self.activations}
        return max(named, key=named.get)


def optimizer_state_bytes(shapes: Iterable[tuple[int, ...]], kind: str) -> float:
    """Bytes of optimizer state for parameters of these shapes, as each optimizer allocates it."""
    return float(sum(_state_bytes(tuple(shape), kind) for shape in shapes))


def _state_bytes(shape: tuple[int, ...], kind: str) -> int:
    numel = math.prod(shape)
    if kind in ADAM_KINDS:
        return 2 * 4 * numel + 4  # exp_avg, exp_avg_sq and the step, a float32 tensor each
    if kind == "sgd":
        return 4 * numel          # the momentum buffer
    if kind in EIGHT_BIT_KINDS:
        if numel < BNB_MIN_8BIT_SIZE:
            return 2 * 4 * numel
        return 2 * (numel + 4 * math.ceil(numel / BNB_BLOCK) + 4 * BNB_QMAP)
    if kind == "adafactor":     # torch.optim.Adafactor: factored second moment, no first moment
        if len(shape) < 2:
            return 4 * numel + 4
        rows, cols = math.prod(shape[:-1]), math.prod(shape[:-2]) * shape[-1]
        return 4 * (rows + cols) + 4
    raise ValueError(f"unknown optimizer kind {kind!r}; known: {', '.join(OPTIMIZER_KINDS)}")


# bitsandbytes' 8-bit step on a CPU (0.50.2) works one tensor at a time in fp32: both states dequantized
# and three more temporaries, five fp32 copies of the largest parameter at its height (measured on
# ResNet-18/50, MobileNetV2 and two MLPs: 45, 45, 7.8, 320 and 80 MiB, each exactly 5x). On CUDA its
# kernels update the 8-bit states in place (not measured here).
EIGHT_BIT_CPU_COPIES = 5


# Accumulating into an existing gradient: the new one is computed beside it, then added: two fp32
# copies of a parameter at once, the largest one the highest (ResNet-18, 16 micro-batches of 2 at 32 px:
# 18.9 MiB over every gradient, its largest parameter 9 MiB). It shows where the micro-batch's own
# activations are smaller.
ACCUMULATION_COPIES = 2


def largest_parameter_mib(shapes: list[tuple[int, ...]]) -> float:
    """The largest parameter's fp32 size: what per-tensor temporaries scale with."""
    return max((math.prod(shape) for shape in shapes), default=0) * 4 / MIB


def step_temporaries_mib(shapes: list[tuple[int, ...]], device_type: str) -> dict[str, float]:
    """The optimizer step's own temporaries at its height, in MiB, for the optimizers whose figure is
    known on this device; another optimizer's are taken as the measured configuration's own."""
    if device_type != "cpu":
        return {}
    return {kind: EIGHT_BIT_CPU_COPIES * largest_parameter_mib(shapes) for kind in EIGHT_BIT_KINDS}


def optimizer_state_mib(shapes: list[tuple[int, ...]]) -> dict[str, float]:
    """The state every known optimizer would keep for these parameters, in MiB (recorded per stage)."""
    return {kind: optimizer_state_bytes(shapes, kind) / MIB for kind in OPTIMIZER_KINDS}


@dataclass(frozen=True)
class Prediction:
    peak_mib: float
    saving_mib: float
    basis: str   # which parts move, and by how much: said in the report beside the measurement


@dataclass(frozen=True)
class BackwardProfile:
    """What walking the backward pass block by block needs, all measured on the basis configuration:
    each natural block's share of the activations and of the parameters (forward order), the
    activations held as the forward ends, and the highest total of each step part (the timeline's
    phases: forward, backward, optimizer_step) in MiB."""

    activation_shares: tuple[float, ...]
    parameter_shares: tuple[float, ...]
    forward_activations: float
    phase_peaks: Mapping[str, float]
    held_at_peak: float | None = None   # the gradients, activations and input the measured peak held
    step_temporaries: float = 0.0       # what the optimizer step's high held besides weights, gradients, state

    @classmethod
    def of(cls, metrics: Mapping, decisions: Mapping) -> "BackwardProfile | None":
        """From a stage's metrics and decisions; None where the timeline or either share is missing. The
        forward's activations are its peak less what is told by identity (weights, gradients, optimizer
        state): torch's own labels miss a compiled graph's activations."""
        activation, parameter = decisions.get("block_activation_shares"), decisions.get("block_parameter_shares")
        phases = ((metrics.get("memory_timeline") or {}).get("phases")) or {}
        forward = phases.get("forward")
        if not activation or not parameter or len(activation) != len(parameter) or not forward:
            return None
        held = forward.get("by_category_mib") or {}
        known = sum(held.get(name, 0.0) for name in ("weights", "gradients", "optimizer_state"))
        at_peak = ((metrics.get("memory_timeline") or {}).get("peak") or {}).get("by_category_mib") or {}
        # The batch's own tensors count with the activations: torch labels some of them "input" or not, from
        # one run to the next (0.3 or 7 MiB of ResNet-50's at 96 px), as the forward's figure above does.
        peak_held = sum(at_peak.get(name, 0.0) for name in ("gradients", "activations", "input")) if at_peak else None
        return cls(tuple(activation), tuple(parameter), max(0.0, forward["mib"] - known),
                   {name: phase["mib"] for name, phase in phases.items()}, peak_held, _temporaries(phases))

    def backward_high(self, picked: set[int], gradients: float, scale: float = 1.0) -> float:
        """The most gradients and activations held at once while backward runs through the blocks, last
        to first, with the blocks `picked` checkpointed (activations scaled by `scale`: bf16, micro-batches).
        As block j's backward begins, the gradients of every later block and of the parameters outside
        the blocks (a head, embeddings: reached first) exist, with block j's activations (recomputed if
        checkpointed) and those of each earlier block that kept its own; as it ends, block j's gradients
        are added and its activations freed."""
        activations, shares = self.forward_activations * scale, self.activation_shares
        outside = max(0.0, 1.0 - sum(self.parameter_shares))
        high = 0.0
        for j in range(len(shares)):
            kept_before = activations * sum(shares[i] for i in range(j) if i not in picked)
            later = outside + sum(self.parameter_shares[j + 1:])
            begins = gradients * later + kept_before + activations * shares[j]
            ends = gradients * (later + self.parameter_shares[j]) + kept_before
            high = max(high, begins, ends)
        return high


def predict(parts: Parts, peak_mib: float, before: Mapping, after: Mapping,
            state_by_kind: Mapping[str, float] | None = None, world: int = 1, blocks: int | None = None,
            block_shares: tuple[float, ...] | None = None, profile: BackwardProfile | None = None,
            step_temporaries: Mapping[str, float] | None = None, largest_parameter: float | None = None) -> Prediction:
    """The peak of configuration `after` (a RunConfig dict), from `before`'s measured parts and peak,
    per process of `world` (state_by_kind: each optimizer's whole state, unsharded)."""
    activations, basis = parts.activations, []
    if before.get("precision") == "fp32" and after.get("precision") in ("bf16", "fp16"):
        activations *= 1 - AMP_ACTIVATION_SAVING
        basis.append(f"{after['precision']} activations: x{1 - AMP_ACTIVATION_SAVING:g}")
    micro_before, micro_after = _micro(before), _micro(after)
    late_gradients = 0.0
    if micro_after < micro_before:
        cached = parts.weights / 2 if after.get("precision") in ("bf16", "fp16") else 0.0
        activations = min(activations, cached) + max(0.0, activations - cached) * micro_after / micro_before
        if parts.gradients_at_peak is not None:
            late_gradients = max(0.0, parts.gradients - parts.gradients_at_peak)
        basis.append(f"micro-batch {micro_before} -> {micro_after}: activations x{micro_after / micro_before:.2g}"
                     + (f" but autocast's weight copies ({cached:.0f} MiB)" if cached else "")
                     + (f"; +{late_gradients:.0f} MiB of gradients already allocated in the later micro-batches"
                        if late_gradients else ""))
    walked = 0.0
    if before.get("checkpointing", "none") == "none" and after.get("checkpointing", "none") != "none":
        if profile is not None:
            walked = _walked_saving(profile, parts, after["checkpointing"], activations / parts.activations
                                    if parts.activations else 1.0, basis)
        else:
            share, how = _checkpointed_share(after["checkpointing"], blocks, block_shares)
            activations *= 1 - CHECKPOINT_ACTIVATION_SAVING * share
            basis.append(f"checkpointed blocks: activations x{1 - CHECKPOINT_ACTIVATION_SAVING * share:.2g}"
                         + (f" ({after['checkpointing']} of {blocks}: {how})" if share < 0.999 else ""))
    state = _state(parts, before, after, state_by_kind, world, basis)
    replicated = parts.weights + parts.gradients
    if before.get("sharding", "none") != "fsdp" and after.get("sharding") == "fsdp" and world > 1:
        replicated /= world
        basis.append(f"weights and gradients sharded over {world} processes (one block gathered at a time: not counted)")
    saving = ((parts.activations - activations) + (parts.optimizer_state - state)
              + (parts.weights + parts.gradients - replicated) - late_gradients + walked)
    predicted = peak_mib - saving
    sharded = replicated != parts.weights + parts.gradients or (world > 1 and after.get("sharding", "none") != "none")
    state_changed = after.get("optimizer") != before.get("optimizer") or state != parts.optimizer_state
    step_high = 0.0 if sharded else _step_high(profile, parts, state, after.get("optimizer"), step_temporaries,
                                               state_changed, basis)
    # The later micro-batches hold every gradient and, adding a new one into each, a copy beside it.
    accumulating = (replicated + state + ACCUMULATION_COPIES * largest_parameter
                    if micro_after < micro_before and largest_parameter else 0.0)
    if accumulating > predicted:
        basis.append(f"the later micro-batches' floor: weights, every gradient, the state and two copies of the "
                     f"largest parameter ({largest_parameter:.0f} MiB) as each new gradient is added, {accumulating:.0f} MiB")
        predicted, saving = accumulating, peak_mib - accumulating
    if step_high > predicted:
        # Forward and backward may save more, but the optimizer step holds the weights, every gradient,
        # the state and its own temporaries: its high is the floor (measured, or with another optimizer's state).
        basis.append(f"the optimizer step's high ({step_high:.0f} MiB) is the peak")
        predicted, saving = step_high, peak_mib - step_high
    return Prediction(predicted, saving, "; ".join(basis) or "no part changes")


def _temporaries(phases: Mapping) -> float:
    step = (phases.get("optimizer_step") or {}).get("by_category_mib") or {}
    return step.get("temporaries", 0.0) + step.get("other", 0.0)


def _step_high(profile: BackwardProfile | None, parts: Parts, state: float, kind: str | None,
               step_temporaries: Mapping[str, float] | None, changed: bool, basis: list[str]) -> float:
    """The optimizer step's high under the predicted state: the measured one, with the state (and, where
    the new optimizer's are known, the step's temporaries) replaced. 0 where no timeline was measured."""
    measured = (profile.phase_peaks.get("optimizer_step") if profile is not None else None) or 0.0
    if not measured or not changed:
        return measured
    temporaries = (step_temporaries or {}).get(kind)
    high = measured - parts.optimizer_state + state
    if temporaries is not None:
        high += temporaries - profile.step_temporaries
        basis.append(f"{kind}'s step temporaries on this device {temporaries:.0f} MiB instead of "
                     f"{profile.step_temporaries:.0f}: the step's high {high:.0f} MiB")
    return high


def _walked_saving(profile: BackwardProfile, parts: Parts, mode: str, scale: float, basis: list[str]) -> float:
    """What checkpointing `mode` saves at the peak, by the backward walk: the gradients and activations
    the measured peak held against the walk's high with the blocks checkpointed (the rest at the peak,
    backward's temporaries, stays). Where another move scales the activations too, the walk's own high
    without checkpointing stands in for the measured one."""
    count = len(profile.activation_shares)
    picked = set(checkpoint_picks(mode, count))
    measured = profile.held_at_peak is not None and scale == 1.0
    plain = profile.held_at_peak if measured else profile.backward_high(set(), parts.gradients, scale)
    checkpointed = profile.backward_high(picked, parts.gradients, scale)
    basis.append(f"checkpointed {len(picked)} of {count} blocks, backward walked block by block: gradients and "
                 f"activations {plain:.0f} MiB at the {'measured' if measured else 'modelled'} peak -> at most "
                 f"{checkpointed:.0f} (the forward's {profile.forward_activations * scale:.0f} MiB of activations "
                 "shared by the blocks' measured shares)")
    return plain - checkpointed


def _state(parts: Parts, before: Mapping, after: Mapping, state_by_kind: Mapping[str, float] | None, world: int,
           basis: list[str]) -> float:
    """This process's optimizer state under `after`: another optimizer's own size, sharded or not."""
    state, kind = parts.optimizer_state, after.get("optimizer")
    if kind != before.get("optimizer") and state_by_kind and kind in state_by_kind:
        was_sharded = before.get("sharding", "none") != "none" and world > 1
        state = state_by_kind[kind] / (world if was_sharded else 1)
        basis.append(f"{kind} state {state:.0f} MiB (from the parameters' shapes) instead of {parts.optimizer_state:.0f}")
    if before.get("sharding", "none") == "none" and after.get("sharding", "none") != "none" and world > 1:
        state /= world
        basis.append(f"optimizer state sharded over {world} processes")
    if after.get("offload_optimizer") and not before.get("offload_optimizer"):
        basis.append(f"optimizer state ({state:.0f} MiB) in host memory: none on the device")
        state = 0.0
    return state


@dataclass(frozen=True)
class Basis:
    """What a measured configuration's predictions start from: its parts and peak, the state each
    optimizer would keep for its parameters, and how many natural blocks it has (for blocks:K)."""

    parts: Parts
    peak_mib: float
    config: Mapping
    state_by_kind: Mapping[str, float]
    blocks: int | None = None
    block_shares: tuple[float, ...] | None = None   # each block's share of the kept activations
    profile: BackwardProfile | None = None
    step_temporaries: Mapping[str, float] | None = None   # each optimizer's step temporaries, where known
    largest_parameter: float | None = None                 # MiB, fp32

    @classmethod
    def of(cls, doc: Mapping) -> "Basis | None":
        """From a stage document (None where it has no measured breakdown)."""
        metrics = doc.get("metrics") or {}
        parts = Parts.of(metrics)
        if parts is None or doc.get("config") is None:
            return None
        decisions = doc.get("decisions") or {}
        shares = decisions.get("block_activation_shares")
        return cls(parts, metrics["peak_memory_mb"], doc["config"], metrics.get("optimizer_state_mib_by_kind") or {},
                   decisions.get("natural_blocks"), tuple(shares) if shares else None,
                   BackwardProfile.of(metrics, decisions), metrics.get("optimizer_step_temporaries_mib_by_kind"),
                   metrics.get("largest_parameter_mib"))

    def predict(self, after: Mapping, world: int = 1) -> Prediction:
        return predict(self.parts, self.peak_mib, self.config, after, self.state_by_kind, world, self.blocks,
                       self.block_shares, self.profile, self.step_temporaries, self.largest_parameter)


def _checkpointed_share(mode: str, blocks: int | None, shares: tuple[float, ...] | None = None) -> tuple[float, str]:
    """The share of the blocks' activations a checkpointing mode wraps (blocks:K of n, every:K; 1 for all),
    and how it was counted: by each block's measured share of the activations where known (a CNN's first
    blocks hold most), else evenly."""
    if shares and (not blocks or len(shares) == blocks):
        picked = checkpoint_picks(mode, len(shares))
        return min(1.0, sum(shares[i] for i in picked)), "their share of the blocks' activations, counted per block"
    return (checkpoint_share(mode, blocks) if blocks else 1.0), "counted as their share of the blocks"


def _micro(cfg: Mapping) -> int:
    return cfg.get("micro_batch_size") or cfg.get("batch_size") or 1


def sharded_peak(parts: Parts, world: int) -> float:
    """The per-process peak with weights, gradients and optimizer state sharded over `world` (FSDP)."""
    return (parts.weights + parts.gradients + parts.optimizer_state) / world + parts.activations


def processes_to_fit(parts: Parts, budget_mib: float, most: int = 64) -> int | None:
    """The fewest processes whose sharded peak fits the budget (None: activations alone exceed it)."""
    for world in range(2, most + 1):
        if sharded_peak(parts, world) <= budget_mib:
            return world
    return None
