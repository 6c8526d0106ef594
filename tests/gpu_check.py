"""The GPU check of issue 22 (item 5): a default cycle's finetune (4-bit QLoRA on CUDA) and the CUDA
llama.cpp against the CPU on the same GGUF, in one call of the lent GPU machine (no network there).

tests/gpu_check.sh drives it; the steps here:
  pack          (here, in .venv) gather what the machine lacks into .gpu_check/: wheels of the pinned trl,
                datasets, dill, multiprocess, peft, transformers and bitsandbytes (its CUDA 13 and CPU
                libraries only), the llama.cpp sources of the pinned llama-cpp-python minus what a CUDA
                build of llama-bench does not read, and the student's config, tokenizer and chat template
                (read from the bundled GGUF: its 94 MiB of weights do not travel)
  run           (there) a base model with SmolLM2-135M's config and tokenizer and random weights (speed
                does not depend on the weights; quality is not measured), the split and the finetune
                stage with the shipped params.yaml (stages.prepare / stages.finetune, in a work folder),
                while llama.cpp builds with CUDA on the other cores (cuBLAS and libcuda from wherever
                the machine has them); then merge, convert (llama.cpp's converter, f16), llama-quantize to
                export.quant, and llama-bench pp512/tg128 of that one GGUF with -ngl 0 (op offload off:
                all on the CPU) and -ngl 999
  merge FILE    put the gpu_check.* keys of FILE into metrics/bench_gpu.json, keeping the other keys

Run: bash tests/gpu_check.sh pack | run | merge FILE   (the script's header says how)
"""
from __future__ import annotations

import datetime
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import traceback
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / ".gpu_check"
METRICS = ROOT / "metrics" / "bench_gpu.json"
LIMIT = 64 * 2**20  # what one device call may carry, tracked tree included
# pinned in constraints.txt, missing or of another version on the machine's image (KINDS.md); its
# huggingface_hub 1.33, accelerate, pyarrow, xxhash and tokenizers are used as they are
WHEELS = ("trl", "datasets", "dill", "multiprocess", "peft", "transformers", "bitsandbytes")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
# bitsandbytes ships a library per CUDA version (129 MB unpacked): the image's torch is cu130
BNB_DROP = re.compile(r"bitsandbytes/libbitsandbytes_(cuda1[0-2]\d|rocm\d+|xpu\d+)\.so$")
# llama.cpp folders a CUDA build of llama-bench and llama-quantize never reads (docs, vocab GGUFs, tests,
# the web UI, other backends)
SKIP = ("docs/", "models/", "media/", "tests/", "benches/", "examples/", "pocs/", "ci/", ".github/", "tools/ui/",
        *(f"ggml/src/ggml-{b}/" for b in ("cann", "openvino", "webgpu", "et", "metal", "hexagon", "sycl", "vulkan",
                                          "opencl", "virtgpu", "zdnn", "zendnn", "musa", "hip")))
TARGETS = ("llama-bench", "llama-quantize")


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- pack (here)

def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    found = dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))
    return {k.lower().replace("_", "-"): v.strip() for k, v in found.items()}


def pack_wheels(dest: Path) -> None:
    versions = pins()
    dest.mkdir(parents=True, exist_ok=True)
    for name in WHEELS:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
               "--abi", "none", *(a for p in PLATFORMS for a in ("--platform", p)), "-d", str(dest),
               f"{name}=={versions[name]}"]
        subprocess.run(cmd, check=True)
    for wheel in dest.glob("bitsandbytes-*.whl"):
        slim_wheel(wheel, BNB_DROP)


def slim_wheel(wheel: Path, drop: re.Pattern) -> None:
    """Rewrite `wheel` without the members `drop` matches (and their RECORD lines)."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for item in src.infolist():
            if drop.search(item.filename):
                continue
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if not drop.search(line.split(",", 1)[0])).encode()
            out.writestr(item, data)
    tmp.replace(wheel)


def pack_llama(dest: Path) -> None:
    """llama.cpp's sources from the pinned llama-cpp-python sdist (duo.llamacpp.sdist, fetched once), as
    llama.cpp/... in a .tar.gz, with COMMIT and VERSION as tools/llama.cpp has them."""
    from duo.llamacpp import sdist as sdists

    sdist = sdists.fetch()
    top = sdist.name.removesuffix(".tar.gz")
    prefix = f"{top}/vendor/llama.cpp/"
    with tarfile.open(sdist) as src, tarfile.open(dest, "w:gz", compresslevel=9) as out:
        for m in src.getmembers():
            rel = m.name[len(prefix):]
            if not m.name.startswith(prefix) or not rel or rel.startswith(SKIP):
                continue
            m.name = "llama.cpp/" + rel
            m.pax_headers = {k: v for k, v in m.pax_headers.items() if k not in ("path", "linkpath")}
            out.addfile(m, src.extractfile(m) if m.isfile() else None)
        for name, text in (("COMMIT", sdists.commit(sdist).encode() + b"\n"),
                           ("VERSION", top.rsplit("-", 1)[1].encode() + b"\n")):
            info = tarfile.TarInfo(f"llama.cpp/{name}")
            info.size = len(text)
            out.addfile(info, io.BytesIO(text))


def pack_base(dest: Path) -> None:
    """The student's config, tokenizer and chat template as stages.base would write them, without weights."""
    from duo import models
    from duo.data import records

    model, tokenizer, provenance = models.load_source("bundled:smollm2", False)
    dest.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(dest)
    model.generation_config.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    (dest / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
    records.write_json(dest / "provenance.json", provenance)


def tree_bytes() -> int:
    """Tracked and untracked-not-ignored files: what every device call sends besides `carry`."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def pack() -> None:
    if BUNDLE.exists():
        shutil.rmtree(BUNDLE)
    BUNDLE.mkdir()
    log("wheels")
    pack_wheels(BUNDLE / "wheels")
    log("llama.cpp sources")
    pack_llama(BUNDLE / "llama.cpp.tar.gz")
    log("student config and tokenizer (reads the bundled GGUF)")
    pack_base(BUNDLE / "base")
    sizes = {str(p.relative_to(BUNDLE)): p.stat().st_size for p in sorted(BUNDLE.rglob("*")) if p.is_file()}
    tree, bundle = tree_bytes(), folder_bytes(BUNDLE)
    for name, size in sizes.items():
        if size > 2**20:
            print(f"  {size / 2**20:7.1f} MiB  {name}")
    print(f"  {bundle / 2**20:7.1f} MiB  .gpu_check in all ({len(sizes)} files)\n"
          f"  {tree / 2**20:7.1f} MiB  the working tree that travels anyway\n"
          f"  {(bundle + tree) / 2**20:7.1f} MiB  one call (limit {LIMIT / 2**20:.0f} MiB)")
    if bundle + tree > LIMIT:
        raise SystemExit(f"gpu_check pack: {(bundle + tree) / 2**20:.1f} MiB is over the {LIMIT / 2**20:.0f} MiB "
                         f"one device call carries")


# --------------------------------------------------------------------------- run (there)

def machine() -> dict:
    info = {"cores": os.cpu_count(), "python": platform.python_version()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                            if line.startswith("model name")), None)
    except OSError:
        pass
    for key, cmd in {"gpu": ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                     "nvcc": ["nvcc", "--version"], "gcc": ["gcc", "--version"]}.items():
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out:
            info[key] = out[-2] if key == "nvcc" and len(out) > 1 else out[0]
    import torch

    info["torch"], info["torch_cuda"] = torch.__version__, torch.version.cuda
    return info


def versions() -> dict:
    import importlib.metadata as md

    names = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "pyarrow", "fsspec",
             "huggingface-hub", "tokenizers", "safetensors", "numpy", "dill", "multiprocess")
    found = {}
    for name in names:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


class Figures(dict):
    """gpu_check.* keys, saved to OUT/gpu_check.json after every step (a timeout keeps what was done)."""

    def __init__(self, out: Path):
        super().__init__()
        self.out = out

    def save(self, **keys) -> None:
        self.update({f"gpu_check.{k}": v for k, v in keys.items()})
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self, indent=2) + "\n")


def make_base(files: Path, work: Path, seed: int = 0) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from duo import models

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(files), dtype=torch.float32)
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(files)
    provenance = json.loads((files / "provenance.json").read_text()) | {
        "weights": f"random init (seed {seed}) by tests/gpu_check.py: the GGUF's config and tokenizer only"}
    models.save_base(model, tokenizer, provenance, work / "models" / "base")


# A CUDA toolkit assembled from pip wheels (nvcc, runtime), as on the CPU boxes here, lacks cuBLAS and
# the driver's libcuda.so that ggml-cuda links: these point CMake at the ones the machine does have.

def _link(work: Path, name: str, real: Path) -> Path:
    shim = work / "cuda-shim"
    shim.mkdir(exist_ok=True)
    (shim / name).unlink(missing_ok=True)
    (shim / name).symlink_to(real)
    return shim / name


def cublas_shim(work: Path, args: list[str]) -> list[str]:
    """cuBLAS of the nvidia-cublas wheel torch depends on (nvidia/cu13/{include,lib})."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for where in (spec.submodule_search_locations or []) if spec else []:
        for header in sorted(Path(where).glob("*/include/cublas_v2.h")):
            extra = [f"-DCMAKE_CUDA_FLAGS=-I{header.parent}"]
            for name in ("cublas", "cublasLt"):
                real = next((header.parent.parent / "lib").glob(f"lib{name}.so.*"))
                _link(work, real.name, real)  # the name the loader asks for, found through the build's rpath
                extra.append(f"-DCUDA_{name}_LIBRARY={_link(work, f'lib{name}.so', real)}")
            log(f"llama.cpp: cuBLAS from {header.parent.parent}")
            return [f"{a} -I{header.parent}" if a.startswith("-DCMAKE_CXX_FLAGS=") else a for a in args] + extra
    return args


def driver_shim(work: Path, args: list[str]) -> list[str]:
    """The driver library (libcuda.so.1 where only that name exists), else ggml without VMM (no libcuda)."""
    listed = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    found = [Path(line.split("=>")[-1].strip()) for line in listed.splitlines() if "libcuda.so" in line.split("=>")[0]]
    for pattern in ("/usr/local/nvidia/lib*/libcuda.so*", "/usr/lib/x86_64-linux-gnu/libcuda.so*",
                    "/usr/local/cuda*/targets/*/lib/stubs/libcuda.so", "/usr/local/cuda*/lib64/stubs/libcuda.so"):
        found += sorted(Path("/").glob(pattern.lstrip("/")))
    for real in found:
        if real.exists():
            log(f"llama.cpp: driver library {real}")
            return args + [f"-DCUDA_cuda_driver_LIBRARY={_link(work, 'libcuda.so', real)}"]
    log("llama.cpp: no libcuda.so found: GGML_CUDA_NO_VMM=ON (ggml's legacy CUDA memory pool)")
    return args + ["-DGGML_CUDA_NO_VMM=ON"]


def configure(src: Path, build: Path, work: Path) -> tuple[str, list[str]]:
    """CMake for llama-bench and llama-quantize with duo's llama.cpp flags (duo.llamacpp.llama_server), CUDA for
    Hopper only where nvcc is (GPU_CHECK_KIND=cpu|cuda overrides). Returns the flavour and the command."""
    from duo.llamacpp import builds

    kind = os.environ.get("GPU_CHECK_KIND") or ("cuda" if shutil.which("nvcc") else "cpu")
    off = ("-DLLAMA_BUILD_SERVER", "-DLLAMA_BUILD_APP")  # the server and the unified binary: not needed
    args = [a for a in builds.cmake_args(kind) if a.split("=")[0] not in off] + [f"{a}=OFF" for a in off]
    if kind == "cuda":
        args.append("-DCMAKE_CUDA_ARCHITECTURES=90-real")
    fixes, tried = {"CUDA::cublas": cublas_shim, "CUDA::cuda_driver": driver_shim}, set()
    while True:
        cmd = ["cmake", "-S", str(src), "-B", str(build), *args]
        with open(work / "build.log", "w") as out:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
        text = (work / "build.log").read_text()
        todo = [target for target in fixes if rc and target in text and target not in tried]
        if not todo:
            break
        for target in todo:
            args = fixes[target](work, args)
            tried.add(target)
        shutil.rmtree(build)
    if rc:
        raise SystemExit(f"llama.cpp configure ({kind}) failed:\n{text[-3000:]}")
    return kind, cmd


def start_build(build: Path, cores: set[int]) -> subprocess.Popen:
    """The compile, in the background on `cores`, appending to build.log."""
    cmd = ["cmake", "--build", str(build), "-j", str(len(cores)), "--target", *TARGETS]
    return subprocess.Popen(cmd, stdout=open(build.parent / "build.log", "a"), stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=lambda: os.sched_setaffinity(0, cores))


def finetune(work: Path, quick: bool) -> dict:
    """stages.prepare and stages.finetune as a cycle runs them, in `work`, with the shipped params.yaml."""
    import torch
    import yaml

    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    if quick:
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        raw["finetune"]["max_steps"] = 2
        (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (work / "data").mkdir(exist_ok=True)
    shutil.copy(ROOT / "data" / "coverage.jsonl", work / "data" / "coverage.jsonl")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        from stages import finetune as finetune_stage
        from stages import prepare as prepare_stage

        prepare_stage.main.main(["--params", "params.yaml"], standalone_mode=False)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.monotonic()
        finetune_stage.main.main(["--params", "params.yaml"], standalone_mode=False)
        wall = time.monotonic() - start
    finally:
        os.chdir(cwd)
    m = json.loads((work / "metrics" / "train.json").read_text())
    keys = ("rows", "steps", "epochs", "tokens", "tokens_per_s", "train_seconds", "precision", "quantized_4bit",
            "micro_batch_size", "device", "stopped_early", "best_step", "validation_rows")
    out = {k: m.get(k) for k in keys} | {"stage_seconds": round(wall, 1),
                                         "loss_first_last": [m["loss_curve"][0]["loss"], m["final_loss"]]}
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def export(work: Path, build: Path, quant: str) -> Path:
    """What the export stage does without llama-cpp-python: merge, convert to f16, quantize. Without an
    adapter (the finetune failed) the base itself, so that the llama.cpp half still measures."""
    from duo.llamacpp import converter
    from duo.export import gguf

    hf = work / "models" / "base"
    if (work / "models" / "adapter").exists():
        hf = work / "merged"
        gguf.merge(work / "models" / "base", work / "models" / "adapter", hf)
    f16, out = work / "student-f16.gguf", work / "student.gguf"
    proc = subprocess.run([sys.executable, str(converter.converter()), str(hf), "--outfile", str(f16),
                           "--outtype", "f16"], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"convert_hf_to_gguf failed:\n{(proc.stderr + proc.stdout)[-3000:]}")
    tool = build / "bin" / "llama-quantize"
    if tool.exists():
        proc = subprocess.run([str(tool), str(f16), str(out), quant], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"llama-quantize failed:\n{(proc.stderr + proc.stdout)[-3000:]}")
    else:  # quick mode here: llama-cpp-python's quantize, as the export stage does
        gguf.quantize(f16, out, quant)
    return out


def bench(tool: Path, model: Path, runs: dict[str, list[str]], reps: int) -> tuple[dict, list]:
    figures, raw = {}, []
    for name, extra in runs.items():
        cmd = [str(tool), "-m", str(model), "-p", "512", "-n", "128", "-r", str(reps), "-o", "json", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        rows = json.loads(proc.stdout)
        raw += [r | {"run": name} for r in rows]
        for r in rows:
            test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
            figures[f"{name}.{test}_tokens_per_s"] = round(r["avg_ts"], 1)
            figures[f"{name}.{test}_stddev"] = round(r["stddev_ts"], 1)
        figures[f"{name}.args"] = " ".join(extra)
        figures[f"{name}.threads"], figures[f"{name}.backends"] = rows[0].get("n_threads"), rows[0].get("backends")
        figures[f"{name}.flash_attn"] = rows[0].get("flash_attn")
    return figures, raw


def run(out: Path, work: Path, quick: bool, deadline: float) -> None:
    import yaml

    t0 = time.monotonic()
    figures = Figures(out)
    all_cores = os.sched_getaffinity(0)
    figures.save(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 quick=quick, machine=machine(), versions=versions(),
                 base="SmolLM2-135M-Instruct's config and tokenizer, random weights (the 94 MiB GGUF does not "
                      "travel): speed only, losses mean nothing")
    log(f"machine {figures['gpu_check.machine']}")
    log(f"versions {figures['gpu_check.versions']}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    with tarfile.open(BUNDLE / "llama.cpp.tar.gz") as tar:
        tar.extractall(work, filter="data")
    tools = ROOT / "tools" / "llama.cpp"
    if not (tools / "convert_hf_to_gguf.py").exists():  # what `make setup` puts there (duo.llamacpp.converter)
        tools.mkdir(parents=True, exist_ok=True)
        for name in (*("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "COMMIT", "VERSION"),
                     "conversion", "gguf-py"):
            src = work / "llama.cpp" / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, tools / name)
    commit = (work / "llama.cpp" / "COMMIT").read_text().strip()

    # training gets two cores (one drives the GPU), the build the rest; the bench runs after both
    ordered = sorted(all_cores)
    train_cores, build_cores = set(ordered[:2]), set(ordered[2:]) or set(ordered)
    build_dir = work / "build"
    t_build = time.monotonic()
    figures.save(**{"llama.commit": commit})
    errors, builder = [], None
    try:  # a failed configure costs the llama.cpp half only: the finetune still runs
        kind, cmake = configure(work / "llama.cpp", build_dir, work)
    except SystemExit as exc:
        print(exc, flush=True)
        errors.append("llama.cpp configure failed")
        figures.save(**{"llama.error": str(exc)[-2000:]})
    else:
        figures.save(**{"llama.cmake": " ".join(cmake[5:])})
        # quick (a 2-core box): configure only, which checks the packed sources; no compile, no llama-bench
        builder = None if quick else start_build(build_dir, build_cores)
        log(f"llama.cpp ({kind}) configured in {time.monotonic() - t_build:.0f} s" +
            ("" if quick else f", compiling {', '.join(TARGETS)} on cores {min(build_cores)}-{max(build_cores)}"))
    try:
        os.sched_setaffinity(0, train_cores)
        make_base(BUNDLE / "base", work)
        log("finetune (stages.prepare, stages.finetune)")
        try:
            train = finetune(work, quick)
        except Exception as exc:  # the llama.cpp half still runs, on the untrained base
            traceback.print_exc()
            errors.append(f"finetune: {exc!r}")
            figures.save(**{"train.error": repr(exc)[-2000:]})
        else:
            figures.save(**{f"train.{k}": v for k, v in train.items()})
            if builder:
                figures.save(**{"train.cores": f"{len(train_cores)}, while llama.cpp compiled on the other "
                                               f"{len(build_cores)}"})
            log(f"finetune: {train}")
        os.sched_setaffinity(0, all_cores)

        if builder:
            wait = max(1.0, deadline - time.monotonic() - 60)  # a minute for export and bench
            try:
                rc = builder.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                figures.save(**{"llama.build": f"not finished after {time.monotonic() - t_build:.0f} s (killed)"})
                raise SystemExit(f"llama.cpp build ran past the deadline; tail of build.log:\n"
                                 f"{(work / 'build.log').read_text()[-2000:]}")
            if rc:
                raise SystemExit(f"llama.cpp build failed ({rc}):\n{(work / 'build.log').read_text()[-3000:]}")
            figures.save(**{"llama.build_seconds": round(time.monotonic() - t_build, 1),
                            "llama.build_cores": len(build_cores)})
            log(f"llama.cpp built in {time.monotonic() - t_build:.0f} s")

        if not (builder or quick):
            raise SystemExit("; ".join(errors))
        quant = yaml.safe_load((ROOT / "params.yaml").read_text())["export"]["quant"]
        model = export(work, build_dir, quant)
        figures.save(**{"gguf.quant": quant, "gguf.mb": round(model.stat().st_size / 2**20, 1),
                        "gguf.weights": "base + trained adapter, merged" if (work / "merged").exists()
                        else "the untrained base (finetune failed)"})
        log(f"GGUF {model} ({model.stat().st_size / 2**20:.1f} MiB)")
        tool = build_dir / "bin" / "llama-bench"
        if not tool.exists():
            log("llama-bench not built (quick mode configures only): no tokens/s")
        else:
            # -nopo 1: with weights on the CPU, llama.cpp would still send big prompt batches to the GPU
            runs = {"llama.cpu": ["-ngl", "0", "-nopo", "1"], "llama.cuda": ["-ngl", "999"]}
            found, raw = bench(tool, model, runs, reps=5)
            figures.save(**found)
            (out / "llama_bench.json").write_text(json.dumps(raw, indent=1) + "\n")
            cpu, gpu = found.get("llama.cpu.tg128_tokens_per_s"), found.get("llama.cuda.tg128_tokens_per_s")
            if cpu and gpu:
                figures.save(**{"llama.tg128_speedup_cuda_vs_cpu": round(gpu / cpu, 2)})
            log(f"llama-bench: {found}")
    finally:
        if builder and builder.poll() is None:  # its own session: it would outlive this call
            os.killpg(builder.pid, signal.SIGKILL)
        figures.save(seconds=round(time.monotonic() - t0, 1))
    if errors:
        raise SystemExit("; ".join(errors))


# --------------------------------------------------------------------------- merge

def merge(new: Path, into: Path = METRICS) -> None:
    from duo.data import records

    figures = json.loads(into.read_text()) if into.exists() else {}
    fresh = {k: v for k, v in json.loads(new.read_text()).items() if k.startswith("gpu_check.")}
    if fresh.get("gpu_check.quick"):
        raise SystemExit(f"{new} is a quick (CPU) run: not merged into {into}")
    figures.update(fresh)
    records.write_json(into, figures)
    print(f"{len(fresh)} gpu_check.* keys -> {into}")


def main(argv: list[str]) -> None:
    step = argv[0] if argv else ""
    if step == "pack":
        pack()
    elif step == "run":
        quick = os.environ.get("GPU_CHECK_QUICK") == "1"
        out = Path(os.environ.get("OUT") or BUNDLE / "out")
        work = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/gpu_check"))
        budget = float(os.environ.get("GPU_CHECK_BUDGET_S", "450"))
        started = float(os.environ.get("GPU_CHECK_T0", time.time()))
        run(out, work, quick, time.monotonic() + budget - (time.time() - started))
    elif step == "merge" and len(argv) == 2:
        merge(Path(argv[1]))
    else:
        raise SystemExit("usage: python -m tests.gpu_check pack | run | merge FILE")


if __name__ == "__main__":
    main(sys.argv[1:])
