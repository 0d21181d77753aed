"""Masking strategies: which responses, frames and behavior the model sees, and which it must predict.

A strategy is a record of window fields (in samples of the block) and neuron counts. The input pipeline has already
put each example's neurons in random order, real neurons first, so "visible = the first n_visible real neurons,
reconstructed = the next up to max_reconstructed_neurons" realises the paper's disjoint slices of one random
permutation. `make_masks` is a pure jnp function of the fields as integer arrays: one compiled step serves every
strategy, and the host samples a strategy per batch and passes its `strategy_arrays`.

Responses at (sample t, neuron n), for a real neuron of rank r (its position among the example's real neurons):
  visible  = t in prefix and t in context and (r < n_visible_neurons or t in the first full_population_prefix_len
             samples of the prefix)
  target   = t in suffix and r < n_visible_neurons + max_reconstructed_neurons and not visible
Video frames in [video_start, video_start + video_len) are visible. Behavior is an input when behavior_encoded, a
target when behavior_reconstructed (never both). A field left None means "everything" (all neurons, or the rest of
the block from the window's start).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omnimouse_jax.errors import UserError

# Stands for "all" in the integer arrays: far above any neuron count or block length.
ALL = 1 << 24
PAPER_BLOCK = 60  # samples per block the presets are written for (2 s at 30 Hz)
PAPER_NEURON_COUNTS = (64, 256, 1024)
PAPER_MAX_RECONSTRUCTED = 3072


@dataclasses.dataclass(frozen=True)
class MaskingStrategy:
    """One masking strategy; see the module docstring for the meaning of each window."""

    n_visible_neurons: int | None = None
    prefix_start: int = 0
    prefix_len: int | None = None
    full_population_prefix_len: int = 0
    context_start: int = 0
    context_len: int | None = None
    max_reconstructed_neurons: int | None = None
    suffix_start: int = 30
    suffix_len: int | None = None
    video_start: int = 0
    video_len: int | None = None
    behavior_encoded: bool = True
    behavior_reconstructed: bool = False


FIELDS = tuple(f.name for f in dataclasses.fields(MaskingStrategy))


class Masks(NamedTuple):
    """Per-element masks (a pytree). Responses (B, T, N); video (B, T); behavior per example (B,)."""

    response_visible: jax.Array
    response_target: jax.Array
    video_visible: jax.Array
    behavior_visible: jax.Array
    behavior_target: jax.Array


def strategy_arrays(s: MaskingStrategy) -> dict[str, np.ndarray]:
    """The strategy's fields as int32 scalars for the jitted step (None -> ALL, booleans -> 0/1)."""
    return {name: np.asarray(ALL if getattr(s, name) is None else int(getattr(s, name)), np.int32) for name in FIELDS}


def make_masks(fields: dict, neuron_mask_BxN: jax.Array, num_samples: int) -> Masks:
    """Builds the masks from strategy fields (int scalars, or (B,) arrays for one strategy per example)."""
    neuron_mask_BxN = jnp.asarray(neuron_mask_BxN, bool)
    batch = neuron_mask_BxN.shape[0]
    f = {name: jnp.broadcast_to(jnp.asarray(fields[name], jnp.int32).reshape(-1), (batch,)) for name in FIELDS}
    t_1xT = jnp.arange(num_samples)[None, :]

    def window(start, length):  # (B, T): start <= t < start + length, without overflow for length = ALL
        return (t_1xT >= start[:, None]) & (t_1xT - start[:, None] < length[:, None])

    rank_Bx1xN = (jnp.cumsum(neuron_mask_BxN, axis=1) - 1)[:, None, :]
    real_Bx1xN = neuron_mask_BxN[:, None, :]
    col = lambda a: a[:, None, None]  # noqa: E731
    prefix = window(f["prefix_start"], f["prefix_len"]) & window(f["context_start"], f["context_len"])
    full_population = window(f["prefix_start"], f["full_population_prefix_len"])
    chosen = (rank_Bx1xN < col(f["n_visible_neurons"])) | full_population[:, :, None]
    visible = real_Bx1xN & prefix[:, :, None] & chosen
    candidate = rank_Bx1xN - col(f["n_visible_neurons"]) < col(f["max_reconstructed_neurons"])
    target = real_Bx1xN & window(f["suffix_start"], f["suffix_len"])[:, :, None] & candidate & ~visible
    return Masks(
        response_visible=visible,
        response_target=target,
        video_visible=window(f["video_start"], f["video_len"]),
        behavior_visible=f["behavior_encoded"] != 0,
        behavior_target=f["behavior_reconstructed"] != 0,
    )


def validate_strategy(s: MaskingStrategy, *, max_neurons: int, num_samples: int, name: str = "strategy") -> None:
    """Raises UserError naming the field when the strategy cannot apply to blocks of this size."""
    if s.behavior_encoded and s.behavior_reconstructed:
        raise UserError(f"masking {name}: behavior_encoded and behavior_reconstructed cannot both be true")
    for start, length in (("prefix_start", "prefix_len"), ("context_start", "context_len"),
                          ("suffix_start", "suffix_len"), ("video_start", "video_len")):
        first, size = getattr(s, start), getattr(s, length)
        if first < 0 or first > num_samples or (size is not None and (size < 0 or first + size > num_samples)):
            raise UserError(f"masking {name}: window {start}={first}, {length}={size} does not fit in a block of "
                            f"config.model.num_samples={num_samples} samples")
    if s.full_population_prefix_len < 0 or (s.prefix_len is not None and s.full_population_prefix_len > s.prefix_len):
        raise UserError(f"masking {name}: full_population_prefix_len={s.full_population_prefix_len} must be within "
                        f"prefix_len={s.prefix_len}")
    if s.n_visible_neurons is not None and s.n_visible_neurons > max_neurons:
        raise UserError(f"masking {name}: n_visible_neurons={s.n_visible_neurons} is more than "
                        f"config.model.max_neurons={max_neurons}")


def _named_presets() -> dict[str, MaskingStrategy]:
    """The evaluation presets (paper's test regimes), written for 60-sample blocks with the target in 30-60."""
    presets = {
        # Neural prediction from the stimulus (and behavior); behavior decoded from video alone.
        "video_behavior": MaskingStrategy(n_visible_neurons=0, prefix_len=0, behavior_encoded=True),
        "video_only": MaskingStrategy(n_visible_neurons=0, prefix_len=0, behavior_encoded=False,
                                      behavior_reconstructed=True),
        # Behavior decoding from the whole population (with or without video); no response targets.
        "all_response_only": MaskingStrategy(max_reconstructed_neurons=0, suffix_len=0, video_len=0,
                                             behavior_encoded=False, behavior_reconstructed=True),
        "all_response_video": MaskingStrategy(max_reconstructed_neurons=0, suffix_len=0,
                                              behavior_encoded=False, behavior_reconstructed=True),
    }
    for suffix, video_len, behavior in (("", 0, False), ("_video", None, False), ("_behavior", 0, True),
                                        ("_video_behavior", None, True)):
        for n in (64, 1024):  # population completion: n neurons visible over the target window
            presets[f"population_{n}_response{suffix}"] = MaskingStrategy(
                n_visible_neurons=n, prefix_start=30, prefix_len=30, context_start=30, context_len=30,
                max_reconstructed_neurons=PAPER_MAX_RECONSTRUCTED, video_len=video_len,
                behavior_encoded=behavior, behavior_reconstructed=not behavior)
        for prefix in (10, 25):  # forecasting: all neurons visible for a prefix, predict the last second
            presets[f"causal_response_{prefix}{suffix}"] = MaskingStrategy(
                prefix_len=prefix, video_len=video_len, behavior_encoded=behavior, behavior_reconstructed=not behavior)
    return presets


def training_mix(neuron_counts=PAPER_NEURON_COUNTS, max_reconstructed: int = PAPER_MAX_RECONSTRUCTED,
                 video_splits=(0, 10, 20, 30, 40, 50)) -> list[tuple[MaskingStrategy, float]]:
    """The multi-task training mix, all weights 1 (sampled uniformly), for 60-sample blocks.

    For each split v the last v frames of video are visible and responses are confined to the other 60 - v
    samples (the end of the block for population masking, the start for causal masking). Families: population,
    causal, population + causal, inverse population + causal (all neurons over a short prefix, n neurons after);
    at v = 0 each with behavior encoded or reconstructed, otherwise behavior encoded. Plus video-only prediction
    (behavior encoded or decoded) and pure behavior decoding from all neurons.
    """
    causal = ((15, 10), (10, 15), (0, 25))  # (prefix_start, prefix_len): 10, 15 or 25 samples before the target
    mix: list[MaskingStrategy] = []
    for v in video_splits:
        video = dict(video_start=PAPER_BLOCK - v, video_len=v)
        late = dict(context_start=v, context_len=PAPER_BLOCK - v)  # population: responses in the later samples
        early = dict(context_start=0, context_len=PAPER_BLOCK - v)  # causal: responses in the earlier samples
        family = []
        for n in neuron_counts:
            family.append(MaskingStrategy(n_visible_neurons=n, prefix_start=v,
                                          max_reconstructed_neurons=max_reconstructed, **late, **video))
        for start, length in causal:
            if start + length <= PAPER_BLOCK - v:
                family.append(MaskingStrategy(prefix_start=start, prefix_len=length, **early, **video))
                family.extend(MaskingStrategy(n_visible_neurons=n, prefix_start=start, prefix_len=length,
                                              max_reconstructed_neurons=max_reconstructed, **early, **video)
                              for n in neuron_counts)
            if start >= v:
                family.extend(MaskingStrategy(n_visible_neurons=n, prefix_start=start,
                                              full_population_prefix_len=length,
                                              max_reconstructed_neurons=max_reconstructed, **late, **video)
                              for n in neuron_counts)
        mix.extend(family)
        if v == 0:
            mix.extend(dataclasses.replace(s, behavior_encoded=False, behavior_reconstructed=True) for s in family)
    mix.extend([PRESETS["video_behavior"], PRESETS["video_only"], PRESETS["all_response_only"]])
    return [(s, 1.0) for s in mix]


PRESETS: dict[str, MaskingStrategy] = _named_presets()
EVAL_PRESETS: list[str] = list(PRESETS)
TRAINING_MIX: list[tuple[MaskingStrategy, float]] = training_mix()


def presets_for(max_neurons: int, num_samples: int) -> list[str]:
    """The evaluation presets that apply to blocks of this size (e.g. CPU configs drop population_1024_*)."""
    names = []
    for name in EVAL_PRESETS:
        try:
            validate_strategy(PRESETS[name], max_neurons=max_neurons, num_samples=num_samples, name=name)
        except UserError:
            continue
        names.append(name)
    return names
