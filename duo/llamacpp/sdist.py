"""The source distribution of the pinned llama-cpp-python: the one copy of llama.cpp's sources that the
build (duo/llamacpp/builds.py), the converter scripts and the Python binding's install all come from,
fetched once per machine into `$XDG_CACHE_HOME/duo/sdist/`.

Standard library only: `make setup` runs this file before the environment has duo's dependencies
(`python duo/llamacpp/sdist.py` fetches it if missing and prints its path, for pip to install from).
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DUO_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "duo"  # per machine, like pip's
CACHE = DUO_CACHE / "sdist"
CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"


def version() -> str:
    """The installed llama-cpp-python's version; before it is installed, the one constraints.txt pins."""
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        pin = re.search(r"^llama[-_]cpp[-_]python==(\S+)", CONSTRAINTS.read_text(), re.M | re.I)
        if not pin:
            raise RuntimeError(f"{CONSTRAINTS} pins no llama_cpp_python==<version>") from None
        return pin.group(1)


def path(ver: str | None = None) -> Path:
    return CACHE / f"llama_cpp_python-{ver or version()}.tar.gz"


def fetch(ver: str | None = None) -> Path:
    """The cached sdist, downloaded through pip the first time (atomically: a killed download leaves none)."""
    ver = ver or version()
    dest = path(ver)
    if dest.is_file():
        return dest
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".fetch-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-qq", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={ver}", "-d", tmp], check=True)
        os.replace(Path(tmp) / dest.name, dest)
    return dest


def _top(sdist: Path) -> str:
    return sdist.name.removesuffix(".tar.gz")


def commit(sdist: Path) -> str:
    """The llama.cpp commit the sdist vendors: its git submodule metadata rides along in the sdist."""
    with tarfile.open(sdist) as tar:
        try:
            return tar.extractfile(f"{_top(sdist)}/.git/modules/vendor/llama.cpp/HEAD").read().decode().strip()
        except (KeyError, AttributeError):
            return "unknown"


def extract_llama_cpp(sdist: Path, into: Path, wanted: tuple[str, ...] = ("",)) -> None:
    """vendor/llama.cpp/ of the sdist into `into`, only the paths starting with one of `wanted`."""
    prefix = f"{_top(sdist)}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            rel = m.name[len(prefix):]
            if m.name.startswith(prefix) and rel and rel.startswith(wanted):
                m.name = rel
                members.append(m)
        tar.extractall(into, members=members, filter="data")


if __name__ == "__main__":
    print(fetch())
