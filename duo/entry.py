"""What an entry point sets up for its process (nothing happens at import).

What an entry point (`duo ...`, `python -m stages.<name>`) sets up for its process, and nothing does
at import: offline defaults for the libraries, and a one-line message instead of a traceback when the
disk fills."""
from __future__ import annotations

import errno
import os
import sys

# litellm fetches its price table from the network at import unless told otherwise; these machines
# (and air-gapped users) have no network. No telemetry anywhere.
OFFLINE = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_DISABLE_TELEMETRY": "1",
           "TOKENIZERS_PARALLELISM": "false", "DO_NOT_TRACK": "1"}
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DISK_FULL_TEXT = ("No space left on device", "File too large", "Disk quota exceeded", "os error 28",
                   "os error 27", "file write failed")


# The libraries' own progress bars (datasets' map, transformers' weight loading) go to a log or CI as a
# line per update: only on a terminal, as duo's own (duo/progress.py).
QUIET = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def environment() -> None:
    from duo import progress

    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    if not progress.enabled():
        for key, value in QUIET.items():
            os.environ.setdefault(key, value)
    _quiet_library_noise()


def _quiet_library_noise() -> None:
    """Two lines every training log carried that no duo call causes and no user can act on."""
    import logging
    import warnings

    # PEFT reads `model.is_gradient_checkpointing` when it wraps a model; transformers deprecated the name
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # bitsandbytes, imported by PEFT, tries to fetch a CPU kernel from a model hub on bf16 CPUs and says it
    # could not: duo never downloads at run time, and its 4-bit path is for GPUs
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _disk_full_hook(kind, exc, tb, _default=sys.excepthook):
    # Every stage writes to a temp file/folder and renames it when complete, so a full disk leaves the
    # previous outputs intact: say that in one line instead of a traceback. C/Rust writers
    # (safetensors, torch.save) raise their own types; their text carries the OS error.
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        reason = exc.strerror + (f" while writing {exc.filename}" if exc.filename else "")
    elif any(m in str(exc) for m in _DISK_FULL_TEXT):
        reason = f"{type(exc).__name__}: {str(exc)[:300]}"
    else:
        return _default(kind, exc, tb)
    sys.stderr.write(f"Error: disk full ({reason}). Nothing was replaced: outputs are written aside and "
                     f"renamed only when complete, so the previous versions are intact and temp files "
                     f"were removed. Free space and rerun.\n")


def process() -> None:
    """Everything an entry point sets up before it works."""
    environment()
    sys.excepthook = _disk_full_hook


def run(command) -> None:
    """Set up the process, then run a click command (a stage's main)."""
    process()
    command()
