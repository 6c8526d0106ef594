"""llama-server compiled from the llama.cpp sources of the pinned llama-cpp-python (the same llama.cpp
as the runtime and the converter), once per llama.cpp commit and flavour (`cpu`, or `cuda` where nvcc
and a GPU are both found: duo/llamacpp/gpu.py), into a user cache, `$XDG_CACHE_HOME/duo/llama-server/`
(like pip's wheel cache: a fresh clone reuses it).

Run by `make setup`: python -m duo.llamacpp.builds   (builds if missing, prints the binary's path)
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import click

from duo import machine
from duo.llamacpp import converter, gpu

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "duo" / "llama-server"
# GCC 12 miscompiles ggml's AMX kernels (SIGILL on AMX Xeons; see the Makefile): left out on x86, as in
# the llama-cpp-python build
AMX_OFF = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def flavour() -> str:
    """duo/llamacpp/gpu.py's choice; a bad DUO_GPU is the user's to fix, said without a traceback."""
    try:
        return gpu.flavour()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def cmake_args(kind: str) -> list[str]:
    args = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_SERVER=ON",
            "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
            # no web UI: it would be fetched from a hub or built with npm; the API is what duo serves
            "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF"]
    if platform.machine() in ("x86_64", "AMD64"):
        args += [f"-DCMAKE_C_FLAGS={AMX_OFF}", f"-DCMAKE_CXX_FLAGS={AMX_OFF}"]
    return args + gpu.cmake_flags(kind)


def _where(kind: str | None = None) -> Path:
    commit = converter.versions()["llama_cpp_commit"] or "unknown"
    return CACHE / f"{commit[:12]}-{kind or flavour()}" / "llama-server"


def binary() -> Path:
    path = _where()
    if not path.is_file():
        raise click.ClickException(f"{path} is missing: run `make setup` (builds llama.cpp's server once)")
    return path


def build(kind: str | None = None, jobs: int | None = None) -> Path:
    """Compile llama-server from the pinned sdist's llama.cpp unless the cache has it (minutes, once)."""
    kind = kind or flavour()
    dest = _where(kind)
    if dest.is_file():
        return dest
    with tempfile.TemporaryDirectory(prefix="duo-llama-server-") as tmp:
        tmp = Path(tmp)
        sdist = converter.download_sdist(tmp)
        prefix = sdist.name.removesuffix(".tar.gz") + "/vendor/llama.cpp/"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(tmp / "src", members=members, filter="data")
        click.echo(f"llama-server: building ({kind}) from llama.cpp {converter.versions()['llama_cpp_commit']}, "
                   f"a few minutes once", err=True)
        log = tmp / "build.log"
        with open(log, "w") as out:
            steps = [["cmake", "-S", str(tmp / "src"), "-B", str(tmp / "build"), *cmake_args(kind)],
                     ["cmake", "--build", str(tmp / "build"), "--target", "llama-server",
                      "-j", str(jobs or machine.cores())]]
            for cmd in steps:
                if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                    raise click.ClickException(f"building llama-server failed:\n{log.read_text()[-3000:]}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = dest.with_name(".llama-server.tmp")
        shutil.copy2(tmp / "build" / "bin" / "llama-server", staged)
        os.replace(staged, dest)
    return dest


if __name__ == "__main__":
    print(build())
    sys.exit(0)
