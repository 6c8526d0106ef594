"""llama.cpp compiled once per machine, commit and flavour: one CMake build of the pinned
llama-cpp-python's own llama.cpp sources (duo/llamacpp/sdist.py) gives both the shared libraries the
Python binding loads and `llama-server`, cached in `$XDG_CACHE_HOME/duo/llama.cpp/` (a fresh clone or a
new .venv reuses it, as pip reuses its wheels). `make setup` installs llama-cpp-python without compiling
it (its CMake option LLAMA_BUILD=OFF) and this module copies the libraries into it.

The flavour is `cpu`, or `cuda` where nvcc and a GPU are both found (duo/llamacpp/gpu.py). The build is
also keyed by the CPU's instruction sets: ggml compiles for the CPU it is built on (-march=native), so a
cache on a home directory shared by two CPU kinds must not hand one kind the other's build.

Run by `make setup`: python -m duo.llamacpp.builds   (builds if missing, installs the libraries)
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from duo import machine
from duo.llamacpp import converter, gpu, sdist

CACHE = sdist.DUO_CACHE / "llama.cpp"
SERVER = "llama-server"
# GCC 12 miscompiles ggml's AMX kernels: on AMX Xeons any batched prompt dies with SIGILL (only the
# palette byte of the tile config is stored before ldtilecfg; llama.cpp PR #26954, open). Explicit -mno-*
# flags win over -march=native, so ggml uses its AVX512-VNNI kernels there; other CPUs: no effect.
AMX_OFF = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def flavour() -> str:
    """duo/llamacpp/gpu.py's choice; a bad DUO_GPU is the user's to fix, said without a traceback."""
    try:
        return gpu.flavour()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def cmake_args(kind: str) -> list[str]:
    args = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON",
            # the libraries find each other, and llama-server finds them, in the directory they lie in
            "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON", "-DCMAKE_INSTALL_RPATH=$ORIGIN",
            "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
            # no web UI: it would be fetched from a hub or built with npm; the API is what duo serves
            "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF"]
    if platform.machine() in ("x86_64", "AMD64"):
        args += [f"-DCMAKE_C_FLAGS={AMX_OFF}", f"-DCMAKE_CXX_FLAGS={AMX_OFF}"]
    return args + gpu.cmake_flags(kind)


def _where(kind: str | None = None, commit: str | None = None) -> Path:
    commit = commit or converter.versions()["llama_cpp_commit"] or "unknown"
    return CACHE / f"{commit[:12]}-{gpu.build_key(kind or flavour())}"


def binary() -> Path:
    path = _where() / SERVER
    if not path.is_file():
        raise click.ClickException(f"{path} is missing: run `make setup` (builds llama.cpp once)")
    return path


def _copy_libraries(folder: Path, into: Path) -> None:
    for lib in folder.iterdir():
        if lib.name.startswith("lib") and ".so" in lib.name:
            shutil.copy2(lib, into / lib.name, follow_symlinks=False)  # the soname links stay links


def build(kind: str | None = None, jobs: int | None = None) -> Path:
    """The build's folder (llama-server and the lib*.so it and the binding load), compiled unless cached.
    One compile per key at a time: a second caller (another checkout's setup on this machine) waits for
    the first under a lock, then finds its result."""
    kind = kind or flavour()
    source = sdist.fetch()
    commit = sdist.commit(source)
    dest = _where(kind, commit)
    if (dest / SERVER).is_file():
        return dest
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{dest.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            click.echo(f"llama.cpp: waiting for the build in progress ({dest.name})", err=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / SERVER).is_file():
            _compile(source, kind, commit, dest, jobs)
    return dest


def _compile(source: Path, kind: str, commit: str, dest: Path, jobs: int | None) -> None:
    with tempfile.TemporaryDirectory(prefix=".build-", dir=CACHE) as tmp:
        tmp = Path(tmp)
        sdist.extract_llama_cpp(source, tmp / "src")
        click.echo(f"llama.cpp: building ({kind}, {commit[:12]}) the libraries and llama-server, once per "
                   f"machine (~5 min on 2 cores)", err=True)
        log = tmp / "build.log"
        with open(log, "w") as out:
            steps = [["cmake", "-S", str(tmp / "src"), "-B", str(tmp / "build"), *cmake_args(kind)],
                     ["cmake", "--build", str(tmp / "build"), "--target", SERVER, "-j",
                      str(jobs or machine.cores())]]
            for cmd in steps:
                if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                    raise click.ClickException(f"building llama.cpp failed:\n{log.read_text()[-3000:]}")
        staged = tmp / "out"
        staged.mkdir()
        built = tmp / "build" / "bin"
        _copy_libraries(built, staged)
        shutil.copy2(built / SERVER, staged / SERVER)
        os.replace(staged, dest)


def binding_libs() -> Path:
    """llama_cpp/lib of the installed binding, found without importing it (an import loads the library)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise click.ClickException("llama-cpp-python is not installed: run `make setup`")
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def install(folder: Path, into: Path | None = None) -> Path:
    """Put the build's libraries where the binding loads them from, replacing what was there (a wheel from
    pip's cache may hold another build's)."""
    into = into or binding_libs()
    staged = into.with_name(".lib.tmp")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    _copy_libraries(folder, staged)
    old = into.with_name(".lib.old")
    shutil.rmtree(old, ignore_errors=True)
    if into.exists():
        os.replace(into, old)
    os.replace(staged, into)
    shutil.rmtree(old, ignore_errors=True)
    return into


if __name__ == "__main__":
    built = build()
    print(f"llama.cpp: {built} -> {install(built)}")
    sys.exit(0)
