"""Which llama.cpp a machine builds and how many layers a load offloads: CUDA only where nvcc and an
NVIDIA GPU are both present (these CPU machines have nvcc and no GPU), the override, the Makefile's
build line, and llama-server's command. Fake nvcc/nvidia-smi on PATH stand in for a GPU box."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

H200 = "GPU 0: NVIDIA H200 (UUID: GPU-5c1b7f3e-0000-0000-0000-000000000000)"


def fake_path(tmp_path, nvcc=True, smi: str | None = H200, smi_rc: int = 0) -> str:
    bin_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    if nvcc:
        (bin_dir / "nvcc").write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.8'\n")
    if smi is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho '{smi}'\nexit {smi_rc}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    # the system tools, without any directory that holds the machine's own nvcc/nvidia-smi
    keep = [d for d in os.environ["PATH"].split(os.pathsep)
            if not any(os.path.exists(os.path.join(d, t)) for t in ("nvcc", "nvidia-smi"))]
    return os.pathsep.join([str(bin_dir), *keep])


def gpu_script(path: str, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "duo" / "llamacpp" / "gpu.py"), *args], capture_output=True, text=True,
                          env={**os.environ, "PATH": path, **env})


@pytest.mark.parametrize("case, expected", [
    (dict(), "cuda"),
    (dict(smi=None), "cpu"),                                                     # nvcc alone: these machines
    (dict(nvcc=False), "cpu"),                                                   # a GPU cannot build kernels
    (dict(smi="NVIDIA-SMI has failed: couldn't communicate with the driver", smi_rc=9), "cpu"),
    (dict(smi="No devices were found", smi_rc=6), "cpu"),
])
def test_flavour_needs_a_compiler_and_a_gpu(tmp_path, case, expected):
    out = gpu_script(fake_path(tmp_path, **case))
    assert out.returncode == 0 and out.stdout.strip() == expected, out.stderr
    flags = gpu_script(fake_path(tmp_path, **case), "--cmake").stdout.strip()
    assert flags == ("-DGGML_CUDA=on" if expected == "cuda" else "")


def test_override_and_a_bad_override(tmp_path):
    path = fake_path(tmp_path)
    assert gpu_script(path, DUO_GPU="cpu").stdout.strip() == "cpu"
    assert gpu_script(fake_path(tmp_path, smi=None), DUO_GPU="cuda").stdout.strip() == "cuda"
    bad = gpu_script(path, DUO_GPU="rocm")
    assert bad.returncode != 0 and "DUO_GPU='rocm'" in bad.stderr and "Traceback" not in bad.stderr


def test_the_makefile_builds_llama_cpp_once_in_the_flavour_of_the_box(tmp_path):
    def dry_run(path: str) -> str:
        proc = subprocess.run(["make", "-n", "-B", "setup", f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                              capture_output=True, text=True, env={**os.environ, "PATH": path})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    on_gpu = dry_run(fake_path(tmp_path))
    on_cpu = dry_run(fake_path(tmp_path, smi=None))
    for plan in (on_gpu, on_cpu):  # pip never compiles llama.cpp; the one build is duo's (builds.cmake_args)
        binding = [line for line in plan.splitlines() if "pip install" in line and "sdist.py" in line]
        assert binding and "-DLLAMA_BUILD=OFF" in binding[0] and "GGML_CUDA" not in plan
        assert "-m duo.llamacpp.builds" in plan
    tag = gpu_script(fake_path(tmp_path), "--cpu").stdout.strip()
    assert f".duo-llama-cuda-{tag}" in on_gpu and f".duo-llama-cpu-{tag}" in on_cpu


def test_loads_offload_every_layer_only_with_a_gpu_build(monkeypatch, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from duo.llamacpp import builds, gpu, llama_server, local_llm

    expected = -1 if llama_cpp.llama_supports_gpu_offload() else 0
    assert gpu.offload_layers() == expected == local_llm.load_kwargs(1)["n_gpu_layers"]
    assert local_llm.load_kwargs(1, 12)["n_gpu_layers"] == 12

    monkeypatch.setattr(builds, "binary", lambda: tmp_path / "llama-server")
    monkeypatch.setenv("DUO_GPU", "cuda")
    cmd = llama_server.command(tmp_path / "m.gguf", host="127.0.0.1", port=1, n_ctx=64, parallel=1)
    assert cmd[cmd.index("--n-gpu-layers") + 1] == "999"
    assert "-DGGML_CUDA=on" in builds.cmake_args("cuda")
    monkeypatch.setenv("DUO_GPU", "cpu")
    cmd = llama_server.command(tmp_path / "m.gguf", host="127.0.0.1", port=1, n_ctx=64, parallel=1)
    assert "--n-gpu-layers" not in cmd and "-DGGML_CUDA=on" not in builds.cmake_args("cpu")


def test_a_bad_override_stops_llama_server_with_a_message(monkeypatch):
    import click

    from duo.llamacpp import builds

    monkeypatch.setenv("DUO_GPU", "rocm")
    with pytest.raises(click.ClickException, match="DUO_GPU='rocm': use auto, cpu or cuda"):
        builds.flavour()
