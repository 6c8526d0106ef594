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
    from duo.compat import training as compat

    trl_utils = compat.trl_fused_head_module()
    original = getattr(trl_utils, compat.TRL_FUSED_HEAD[1])
    if getattr(original, "duo_compact", False):
        return

    @functools.wraps(original)
    def compact(device) -> bool:
        # read by the fused forward only to pick compact vs fixed-shape scoring; the kernels module
        # keeps its own reference, so the CPU path still uses the torch (not Triton) tiles
        return device.type == "cpu" or original(device)

    compact.duo_compact = True
    setattr(trl_utils, compat.TRL_FUSED_HEAD[1], compact)


def use_padding_free(wanted: bool, lengths: list[int], max_length: int) -> bool:
    """Padding-free needs no truncation: TRL refuses to truncate without packing."""
    return wanted and bool(lengths) and max(lengths) <= max_length


# Allocations from 8 MiB up are mmap'd: see return_freed_memory.
MMAP_THRESHOLD = 8 * 2**20


def _glibc():
    """The C library when it is glibc (mallopt and malloc_trim exist), else None."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def return_freed_memory(threshold: int = MMAP_THRESHOLD) -> None:
    """Fix glibc's mmap threshold at 8 MiB: activations come from the heap, the largest blocks from mmap.

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which blocks
    of every shape come from the heap and fragment it: a 4-epoch run grew to 5.4 GB peak RSS although
    one step holds ~2.5 GB. Fixing the threshold stops that drift. It was first fixed at glibc's initial
    128 KiB, which kept the peak lowest but mmap'd nearly every activation (a [4 x 186 x 576] fp32
    tensor is 1.7 MB): each is a fresh mapping whose pages the kernel faults in and zeroes, which made
    element-wise ops ~4x slower than from the heap (profiled) and the whole step 1.4-1.6x slower. On 48
    rows x 2 epochs (machine B, tests/bench_train.py's duo_train): 128 KiB 243 s / 3.08 GB peak; glibc's dynamic
    default 150 s / 3.77 GB; fixed at 4, 8, 16, 32 MiB 155, 157, 154, 158 s / 3.81, 3.46, 3.81, 3.81 GB.
    No-op off glibc.
    """
    libc = _glibc()
    if libc:
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD


def trim_heap_each_forward(model):
    """glibc's malloc_trim(0) before every forward of `model` (each micro-batch), on the CPU only.

    Even with the threshold fixed (return_freed_memory) the heap holds the pages of the previous
    micro-batch's freed activations, in pieces of every size; the next batch, of another length, cannot
    reuse all of them and the peak grows with every epoch. Trimming hands the free pages back first, at
    the price of faulting them in again. Machine A (bf16 autocast), the 116 sample rows, 4 epochs (the
    default cycle's finetune): untrimmed 295 s / 5,382 MB; trimmed before every forward 346 s / 4,397 MB;
    every other forward 337 s / 4,759 MB; only while RSS > 3 GiB 328 s / 4,799 MB; losses identical.
    Memory is the limit a small machine cannot exceed, so every forward. Returns the hook's handle;
    None off glibc or on a GPU."""
    libc = _glibc()
    if libc is None or next(model.parameters()).device.type != "cpu":
        return None

    def hook(module, args):
        libc.malloc_trim(0)  # a forward pre-hook that returns something replaces the inputs: return None

    return model.register_forward_pre_hook(hook)


def _mask_dropout_class():
    import torch

    class MaskDropout(torch.nn.Module):
        """nn.Dropout(p) with the mask drawn 16 bits per element (see the module docstring)."""

        def __init__(self, p: float):
            super().__init__()
            self.p = p
            # lanes 0-2 of an int64 draw hold 16 random bits; lane 3 holds 15 (random_ never sets the
            # sign bit), so its threshold is halved: every lane drops with probability even / 65536
            self.drop = 2 * round(p * 32768)
            self.scale = 1.0 / (1.0 - self.drop / 65536)
            # a plain tensor, not a buffer: DDP broadcasts every buffer when it wraps the model, and gloo
            # cannot carry int16 ("Invalid scalar type" on every rank with finetune.processes > 1)
            self.threshold = torch.tensor([self.drop - 32768] * 3 + [self.drop // 2], dtype=torch.int16)

        def keep_mask(self, x):
            n = x.numel()
            m = (n + 3) // 4
            lanes = torch.empty(m, dtype=torch.int64, device=x.device).random_().view(torch.int16).view(m, 4)
            return (lanes >= self.threshold).view(-1)[:n].view(x.shape)

        def forward(self, x):
            if not self.training or self.drop == 0:
                return x
            return x * self.keep_mask(x).to(x.dtype).mul_(self.scale)

        def extra_repr(self) -> str:
            return f"p={self.p}, 16-bit masks"

    return MaskDropout


def cheap_dropout_masks(model) -> int:
    """Swap the nn.Dropout of every LoRA input on a CPU model for MaskDropout; returns how many."""
    import torch

    from duo.compat import training as compat

    if next(model.parameters()).device.type != "cpu":
        return 0
    mask_dropout = _mask_dropout_class()
    swapped = 0
    for module in list(model.modules()):
        drops = compat.lora_dropouts(module)
        if drops is None:
            continue
        for name, drop in drops.items():
            if isinstance(drop, torch.nn.Dropout) and drop.p > 0:
                drops[name] = mask_dropout(drop.p)
                swapped += 1
    return swapped
