"""One llama.cpp build (duo/llamacpp/builds.py): the libraries the Python binding loads and llama-server
come from the same CMake build of the pinned sdist, cached once per machine, commit and flavour."""
from __future__ import annotations

import filecmp
import os
import subprocess

import pytest

from duo.llamacpp import builds, converter, gpu, sdist


def test_the_binding_and_llama_server_load_the_same_libraries_of_the_one_build():
    server = builds.binary()
    folder = server.parent
    assert folder.name.startswith(converter.versions()["llama_cpp_commit"][:12])
    installed = builds.binding_libs()
    built = {p.name for p in folder.iterdir() if p.name.startswith("lib")}
    assert {"libllama.so", "libggml.so", "libggml-base.so", "libggml-cpu.so", "libmtmd.so"} <= built
    assert built == {p.name for p in installed.iterdir()}
    for name in built:  # byte for byte: no wheel of pip's cache slipped in
        assert filecmp.cmp(folder / name, installed / name, shallow=False), name
    # llama-server resolves its libraries beside itself ($ORIGIN), not from a build tree that is gone
    linked = subprocess.run(["ldd", str(server)], capture_output=True, text=True, check=True).stdout
    assert f"libllama.so.0 => {folder}/libllama.so.0" in linked, linked
    assert "not found" not in linked


def test_install_replaces_another_builds_libraries_and_keeps_the_soname_links(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    (build / "libllama.so.0.5.0").write_bytes(b"new")
    os.symlink("libllama.so.0.5.0", build / "libllama.so.0")
    os.symlink("libllama.so.0", build / "libllama.so")
    (build / "llama-server").write_bytes(b"binary")
    lib = tmp_path / "site" / "llama_cpp" / "lib"
    lib.mkdir(parents=True)
    (lib / "libllama.so").write_bytes(b"old wheel")
    (lib / "libstale.so").write_bytes(b"old wheel")

    builds.install(build, into=lib)
    assert sorted(p.name for p in lib.iterdir()) == ["libllama.so", "libllama.so.0", "libllama.so.0.5.0"]
    assert (lib / "libllama.so").read_bytes() == b"new" and os.readlink(lib / "libllama.so") == "libllama.so.0"
    assert sorted(p.name for p in lib.parent.iterdir()) == ["lib"]  # no staging left behind


def test_the_build_is_keyed_by_commit_flavour_and_cpu(monkeypatch):
    where = builds._where("cpu", "0c1e57098bba0123")
    assert where.name == f"0c1e57098bba-cpu-{gpu.cpu_tag()}"
    assert builds._where("cuda", "0c1e57098bba0123") != where
    monkeypatch.setattr(gpu, "cpu_tag", lambda: "othercpu")
    assert builds._where("cpu", "0c1e57098bba0123") != where


def test_the_sdist_version_is_the_pin_before_the_binding_is_installed(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    pinned = [line.split("==")[1].strip() for line in sdist.CONSTRAINTS.read_text().splitlines()
              if line.lower().startswith("llama_cpp_python==")]
    assert sdist.version() == pinned[0]
    assert sdist.path().name == f"llama_cpp_python-{pinned[0]}.tar.gz"


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_one_cmake_build_makes_shared_libraries_that_find_each_other(kind):
    args = builds.cmake_args(kind)
    assert "-DBUILD_SHARED_LIBS=ON" in args and "-DCMAKE_INSTALL_RPATH=$ORIGIN" in args
    assert ("-DGGML_CUDA=on" in args) == (kind == "cuda")


def test_a_second_build_waits_for_the_compile_in_progress_and_takes_its_result(tmp_path, monkeypatch):
    """Two setups on one machine (two checkouts, one cache): the second build() waits under the cache's
    lock and finds the first one's build, never compiling a second time."""
    import fcntl
    import threading

    dest = tmp_path / "0c1e57098bba-cpu-x"
    compiled, waiting, got = [], threading.Event(), []
    monkeypatch.setattr(builds, "CACHE", tmp_path)
    monkeypatch.setattr(builds, "_where", lambda kind=None, commit=None: dest)
    monkeypatch.setattr(sdist, "fetch", lambda ver=None: tmp_path / "llama_cpp_python-0.tar.gz")
    monkeypatch.setattr(sdist, "commit", lambda source: "0c1e57098bba")
    monkeypatch.setattr(builds, "_compile", lambda *a: compiled.append(a))
    monkeypatch.setattr(builds.click, "echo", lambda text, err=False: waiting.set())

    with open(tmp_path / f".{dest.name}.lock", "w") as held:  # the other setup's compile
        fcntl.flock(held, fcntl.LOCK_EX)
        second = threading.Thread(target=lambda: got.append(builds.build("cpu")))
        second.start()
        assert waiting.wait(30) and second.is_alive()
        dest.mkdir()
        (dest / builds.SERVER).write_bytes(b"built by the first")
    second.join(30)
    assert got == [dest] and compiled == []

    # no build anywhere: the caller compiles, once
    (dest / builds.SERVER).unlink()
    builds.build("cpu")
    assert len(compiled) == 1
