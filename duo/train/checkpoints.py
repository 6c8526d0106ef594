"""Crash-safe training checkpoints that `dvc repro` does not wipe.

transformers' Trainer writes `checkpoint-N/` in place, file by file, so a kill mid-save leaves a
folder that looks resumable and is not (a truncated optimizer.pt fails to unpickle; a truncated
adapter silently restarts from noise). Here each checkpoint is written by the Trainer into a staging
folder, every file is fsync'd, a `COMPLETE` marker listing each file's size and sha256 is written last,
and only then is the folder renamed into place. Resume takes the newest checkpoint whose marker
exists and whose files still match it; any other is skipped with a warning.

Checkpoints live in `.duo/checkpoints/<key>/`, outside every DVC output (repro deletes outputs before
running a stage). The key hashes everything that decides the run (the training rows, the finetune
params except how often to save, the base model's files), so a changed input never resumes a stale
run. The folder is removed after the stage has published its adapter.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import click

from duo.data import records

ROOT = Path(".duo/checkpoints")
MARKER = "COMPLETE"
KEEP = 2  # the newest two: if the newest is damaged after all, the one before still resumes
# Params that do not change what is trained: a different value may resume the same run.
NOT_IN_KEY = ("save_steps", "threads", "frozen_cache_mb")


def run_key(rows: list[dict], finetune: dict, base: Path) -> str:
    """A hash of what decides the training run: rows (in order), finetune params, base model bytes."""
    h = hashlib.sha256()
    settings = {k: v for k, v in finetune.items() if k not in NOT_IN_KEY}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    for f in sorted(p for p in Path(base).rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(base)}\0{records.file_sha256(f)}\n".encode())
    return h.hexdigest()[:16]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(folder: Path, step: int) -> None:
    """fsync every file of `folder`, then write the marker (sizes and sha256 of each) last."""
    files = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        files[str(f.relative_to(folder))] = {"size": f.stat().st_size, "sha256": records.file_sha256(f)}
    records.write_json(folder / MARKER, {"step": step, "files": files})
    _fsync_dir(folder)


def verify(folder: Path) -> str | None:
    """None if `folder` is a complete checkpoint, else why not."""
    marker = folder / MARKER
    if not marker.is_file():
        return f"no {MARKER} marker (the save was interrupted)"
    try:
        manifest = json.loads(marker.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MARKER} marker ({exc})"
    if not files:
        return "the marker lists no files"
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{name} is {size} bytes, the marker says {want['size']} (truncated?)"
        if records.file_sha256(path) != want["sha256"]:
            return f"{name} does not match its checksum (corrupt)"
    return None


def _step(folder: Path) -> int:
    tail = folder.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


class Checkpoints:
    """The checkpoint folder of one training run (see the module docstring)."""

    def __init__(self, folder: Path, every: int, log: Callable[[str], None] = click.echo):
        self.dir = Path(folder)
        self.every = every
        self.log = log

    @classmethod
    def for_run(cls, rows: list[dict], finetune: dict, base: Path, every: int, root: Path = ROOT,
                log: Callable[[str], None] = click.echo) -> "Checkpoints":
        return cls(Path(root) / run_key(rows, finetune, base), every, log)

    def trainer_args(self) -> dict:
        """The SFTConfig/TrainingArguments keys that make the Trainer save here every `every` steps."""
        if self.every <= 0:
            return {"output_dir": str(self.dir), "save_strategy": "no"}
        # save_total_limit stays off: rotation is done here, over sealed checkpoints only.
        return {"output_dir": str(self.dir), "save_strategy": "steps", "save_steps": self.every,
                "save_total_limit": None, "save_only_model": False}

    def attach(self, trainer) -> None:
        """Make `trainer` save each checkpoint into a staging folder, seal it, then rename it in."""
        if self.every <= 0:
            return
        from duo.compat import training as compat

        original_save = getattr(trainer, compat.TRAINER_SAVE)

        def atomic_save(model, trial=None, **kwargs):
            # Under DDP every process calls this (each saves its own RNG state): all write into one
            # staging folder, the main process seals and renames it once all are done.
            step = trainer.state.global_step
            acc = trainer.accelerator
            staging = self.dir / f".staging-{step}"
            if acc.is_main_process:
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            acc.wait_for_everyone()
            setattr(trainer, compat.TRAINER_OUTPUT_DIR, lambda trial=None: str(staging))
            try:
                original_save(model, trial, **kwargs)
                acc.wait_for_everyone()
                built = staging / f"checkpoint-{step}"
                self._point_best_here(trainer, built)
                if acc.is_main_process:
                    seal(built, step)
                    final = self.dir / built.name
                    if final.exists():
                        shutil.rmtree(final)
                    os.rename(built, final)
                    _fsync_dir(self.dir)
                acc.wait_for_everyone()
            finally:
                delattr(trainer, compat.TRAINER_OUTPUT_DIR)  # back to the class's method
                if acc.is_main_process:
                    shutil.rmtree(staging, ignore_errors=True)
            if acc.is_main_process:
                self._rotate(trainer.state.best_global_step)

        setattr(trainer, compat.TRAINER_SAVE, atomic_save)

    def _point_best_here(self, trainer, built: Path) -> None:
        """The Trainer records the best checkpoint (early stopping) under the staging folder it wrote to;
        point it at the checkpoint's final place, in memory and in the state saved with the checkpoint."""
        best = trainer.state.best_global_step
        if not best:
            return
        trainer.state.best_model_checkpoint = str(self.dir / f"checkpoint-{best}")
        state = built / "trainer_state.json"
        if trainer.accelerator.is_main_process and state.exists():
            trainer.state.save_to_json(str(state))

    def _rotate(self, best: int | None = None) -> None:
        sealed = sorted((f for f in self.dir.glob("checkpoint-*") if (f / MARKER).is_file()), key=_step)
        for old in sealed[:-KEEP]:
            if _step(old) != best:  # the best checkpoint stays: early stopping restores it at the end
                shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> str | None:
        """The newest complete checkpoint to resume from, or None; damaged ones are skipped loudly."""
        if not self.dir.is_dir():
            return None
        for leftover in self.dir.glob(".staging-*"):  # a save that was killed half-way
            shutil.rmtree(leftover, ignore_errors=True)
        for folder in sorted(self.dir.glob("checkpoint-*"), key=_step, reverse=True):
            problem = verify(folder)
            if problem is None:
                self.log(f"finetune: resuming from {folder} (step {_step(folder)})")
                return str(folder)
            self.log(f"finetune: warning: skipping {folder}: {problem}")
        return None

    def clean(self) -> None:
        """After the adapter is published, the run's checkpoints are no longer needed."""
        shutil.rmtree(self.dir, ignore_errors=True)
