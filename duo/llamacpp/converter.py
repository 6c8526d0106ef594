"""llama.cpp's own converter scripts, taken from the source distribution of the pinned
llama-cpp-python so that converter and runtime are the same llama.cpp version.

Run by `make setup`: python -m duo.llamacpp.converter  (from the sdist duo/llamacpp/sdist.py fetched)
"""
from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from pathlib import Path

import click

from duo.llamacpp import sdist

TOOLS = Path(__file__).resolve().parents[2] / "tools" / "llama.cpp"
# The vendors' real vocabularies (tokenizer-only GGUFs, with llama.cpp's tokenizer test texts .inp and the
# vendors' own token ids .out) that the family tests build their students on.
VOCABS = ("llama-bpe", "qwen2", "phi-3", "llama-spm", "gemma-4")
WANTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/",
          "models/templates/", *(f"models/ggml-vocab-{name}.gguf" for name in VOCABS))


def _find(name: str) -> Path:
    """tools/llama.cpp/<name> of this checkout, else of an enclosing one: `dvc exp run --temp/--queue`
    runs in a copy of the tracked files under <repo>/.dvc/tmp/exps/, without the (git-ignored) tools/."""
    path = TOOLS / name
    for parent in TOOLS.parents[2:]:
        if path.exists():
            break
        path = parent / "tools" / "llama.cpp" / name
    return path


def converter(name: str = "convert_hf_to_gguf.py") -> Path:
    script = _find(name)
    if not script.exists():
        raise click.ClickException(f"{TOOLS / 'convert_hf_to_gguf.py'} is missing: run `make setup` "
                                   f"(fetches llama.cpp's converter)")
    return script


def lora_converter() -> Path:
    return converter("convert_lora_to_gguf.py")


def templates() -> Path:
    """The vendors' own chat templates (models/templates/*.jinja of the pinned llama.cpp)."""
    return _find("models/templates")


def vocab(name: str) -> Path:
    """A vendor's vocabulary as a tokenizer-only GGUF (models/ggml-vocab-<name>.gguf); <path>.inp/.out
    beside it hold test texts and the token ids the vendor's own tokenizer gives them."""
    return _find(f"models/ggml-vocab-{name}.gguf")


def versions() -> dict:
    """llama-cpp-python's version and the llama.cpp commit its sources (and so its build) come from."""
    commit = _find("COMMIT")
    return {"llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
            "llama_cpp_commit": commit.read_text().strip() if commit.exists() else None}


def fetch(dest: Path = TOOLS) -> Path:
    version = importlib.metadata.version("llama-cpp-python")
    stamp, wanted = dest / "VERSION", dest / "WANTED"
    if (stamp.exists() and stamp.read_text().strip() == version and (dest / "COMMIT").exists()
            and wanted.exists() and wanted.read_text().split() == list(WANTED)):
        return dest  # complete: same version, and extracted with this list of wanted paths
    with tempfile.TemporaryDirectory() as tmp:
        source = sdist.fetch(version)
        staging = Path(tmp) / "out"
        sdist.extract_llama_cpp(source, staging, WANTED)
        commit = sdist.commit(source)
        (staging / "COMMIT").write_text(commit + "\n")
        (staging / "VERSION").write_text(version + "\n")
        (staging / "WANTED").write_text("\n".join(WANTED) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, dest)
    return dest


if __name__ == "__main__":
    print(f"llama.cpp converter: {fetch()}")
