"""The development data (`../shared/devdata/`, or $DUO_DEVDATA): real tasks no one here wrote, read in
place (never copied into the repository), and a scratch project that holds them as its coverage file."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def folder() -> Path:
    path = Path(os.environ.get("DUO_DEVDATA") or ROOT.parent / "shared" / "devdata")
    if not (path / "coverage.jsonl").exists():
        raise RuntimeError(f"no development data at {path} (coverage.jsonl, templates.jsonl, pool.jsonl); "
                           f"set DUO_DEVDATA")
    return path


def git_env() -> dict:
    """The environment for commits in a bench project (no identity is configured on a fresh machine)."""
    return {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
            "GIT_COMMITTER_EMAIL": "b@b"}


def set_params(dest: Path, params: dict) -> None:
    """Set `params` ({section: {key: value}}) in dest/params.yaml."""
    import yaml

    raw = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in params.items():
        if isinstance(values, dict):
            raw[section].update(values)
        else:
            raw[section] = values
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def project(dest: Path, params: dict | None = None, stages: tuple[str, ...] = ("base", "prepare")) -> Path:
    """A fresh copy of the project in `dest` (its own git repo) whose coverage file is the development
    data's, with `params` ({section: {key: value}}) set, and the given stages run."""
    from tests.conftest import copy_project

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    copy_project(dest)
    shutil.copyfile(folder() / "coverage.jsonl", dest / "data" / "coverage.jsonl")
    set_params(dest, params or {})
    env = git_env()
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "development data"], cwd=dest, check=True, env=env)
    for stage in stages:
        proc = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=dest, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"stages.{stage} failed in {dest}:\n{proc.stderr[-3000:]}")
    return dest
