"""Which llama.cpp build a machine gets, and how many layers a load offloads to the GPU.

Standard library only: `make setup` runs this file with the system Python before the environment
exists (`python3 duo/llamacpp/gpu.py` prints the flavour, `--cpu` the CPU tag; together they name the
build) to choose the llama.cpp build."""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

FLAVOURS = ("cpu", "cuda")


def flavour() -> str:
    """`cuda` where a CUDA compiler and an NVIDIA GPU are both present, else `cpu`: nvcc alone (as on
    the CPU machines here) would build kernels nothing can run, and a GPU without nvcc cannot build them.
    DUO_GPU=cpu|cuda overrides (say, a CUDA build on a build box without a GPU)."""
    forced = os.environ.get("DUO_GPU", "auto")
    if forced in FLAVOURS:
        return forced
    if forced != "auto":
        raise ValueError(f"DUO_GPU={forced!r}: use auto, cpu or cuda")
    if shutil.which("nvcc") and shutil.which("nvidia-smi"):
        try:
            found = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return "cpu"
        if found.returncode == 0 and any(line.startswith("GPU ") for line in found.stdout.splitlines()):
            return "cuda"
    return "cpu"


def cpu_tag() -> str:
    """A short hash of the CPU's instruction-set flags (what -march=native reads): ggml compiles for the
    CPU it is built on, so a home directory or .venv shared by two CPU kinds needs a build for each."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    except OSError:
        pass
    return hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:8]


def build_key(kind: str) -> str:
    return f"{kind}-{cpu_tag()}"


def cmake_flags(kind: str) -> list[str]:
    """What the flavour adds to llama.cpp's CMake arguments (llama-cpp-python's and llama-server's)."""
    return ["-DGGML_CUDA=on"] if kind == "cuda" else []


def offload_layers(setting="auto") -> int:
    """llama.cpp's n_gpu_layers: `auto` offloads every layer (-1) when the installed llama.cpp can use a
    GPU and none otherwise; a number is taken as given."""
    if setting != "auto":
        return int(setting)
    import llama_cpp

    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--cpu"]:
        print(cpu_tag())
        sys.exit(0)
    try:
        kind = flavour()
    except ValueError as exc:
        sys.exit(str(exc))
    print(" ".join(cmake_flags(kind)) if sys.argv[1:] == ["--cmake"] else kind)
