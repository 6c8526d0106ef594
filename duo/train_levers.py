"""Training speed levers that change no result, measured in `make bench` (README, "Performance").

- Score only the labelled positions in the LM head. TRL's fused LM head (log-probs without the
  full logits) scores only positions with a label on CUDA, but scores *every* position elsewhere, to
  keep tile shapes fixed for compilers (Neuron). On CPU nothing is compiled, and with the loss on the
  response only most positions carry no label (72% of the sample data's tokens are prompt): their
  projection onto the 49k-token vocabulary, forward and backward (in fp32), is wasted work. The loss
  and gradients are the same (the unscored positions contribute exact zeros); tests check it.
- Padding-free batches: the rows of a batch are concatenated into one sequence with restarting
  position ids, which transformers turns into a block-diagonal causal mask, so no compute is spent on
  padding. TRL then cannot truncate, so it is used only when no row exceeds `max_length`.
"""
from __future__ import annotations

import functools


def score_labelled_positions_only() -> None:
    """Make TRL's fused LM head compact (labelled positions only) on CPU too. Idempotent."""
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    if getattr(original, "duo_compact", False):
        return

    @functools.wraps(original)
    def compact(device) -> bool:
        # read by the fused forward only to pick compact vs fixed-shape scoring; the kernels module
        # keeps its own reference, so the CPU path still uses the torch (not Triton) tiles
        return device.type == "cpu" or original(device)

    compact.duo_compact = True
    trl_utils._use_triton = compact


def use_padding_free(wanted: bool, lengths: list[int], max_length: int) -> bool:
    """Padding-free needs no truncation: TRL refuses to truncate without packing."""
    return wanted and bool(lengths) and max(lengths) <= max_length


def return_freed_memory() -> None:
    """Allocate large tensors with mmap so freeing them returns the memory to the system at once.

    glibc raises its mmap threshold each time a large block is freed, after which activations of
    every shape come from the heap and fragment it: a 4-epoch run grew to 5.4 GB peak RSS although
    one step holds ~2.5 GB. Fixing the threshold at glibc's initial 128 KiB keeps the peak at what one
    step needs (measured: 2.7 GB vs 3.2 GB after 3 steps, resident 1.3 GB vs 3.0 GB). No-op off glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
