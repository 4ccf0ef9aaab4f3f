"""Resumable stages: each stage writes into ``<out>/<name>.partial/``, then renames it.

A stage's folder appears under its final name only when the stage finished: its
``done.json`` (summary and wall time) is written inside the partial folder and the
folder is renamed with ``os.replace``, so an interrupted run leaves either a finished
stage or a partial folder that the next run deletes and redoes. ``<out>/run.json``
records the config; a rerun into the same folder with other settings is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mugv_quickstart._media import write_text
from mugv_quickstart.config import QuickstartConfig

DONE = "done.json"


class RunError(RuntimeError):
    """A run cannot start or go on; the message says why and what to do."""


@dataclass(frozen=True)
class Stage:
    """One step of the run: ``fn(ctx, folder) -> summary`` writes its outputs in ``folder``.

    ``resumable``: after an interruption the stage runs again in its partial folder,
    continuing from what is there (the stage resumes by itself); otherwise the partial
    folder is deleted and the stage starts from scratch.
    """

    name: str
    title: str
    fn: Callable[[RunContext, Path], dict[str, Any]]
    resumable: bool = False


class RunContext:
    """What a stage sees: the config, earlier stages' folders and summaries, a logger."""

    def __init__(self, out: Path, config: QuickstartConfig, log: Callable[[str], None]) -> None:
        self.out = out
        self.config = config
        self.log = log

    def folder(self, stage: str) -> Path:
        """The folder of a finished stage."""
        path = self.out / stage
        if not (path / DONE).is_file():
            raise RunError(f"stage {stage!r} has not finished (no {path / DONE})")
        return path

    def summary(self, stage: str) -> dict[str, Any]:
        """The summary a finished stage returned."""
        return json.loads((self.folder(stage) / DONE).read_text())["summary"]

    def seconds(self, stage: str) -> float:
        """Wall time of a finished stage (of the run that finished it)."""
        return float(json.loads((self.folder(stage) / DONE).read_text())["seconds"])


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_stages(
    stages: Sequence[Stage],
    out: Path,
    config: QuickstartConfig,
    *,
    log: Callable[[str], None] = _log_stderr,
    stop_after: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Run ``stages`` in order into ``out``, skipping those already finished there.

    Returns ``{stage: {"summary", "seconds", "skipped"}}``. ``stop_after`` ends the run
    after that stage (later stages stay to do).
    """
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    if stop_after is not None and stop_after not in names:
        raise ValueError(f"unknown stage {stop_after!r}; stages are {names}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_run_file(out, config)
    ctx = RunContext(out, config, log)
    results: dict[str, dict[str, Any]] = {}
    total = len(stages)
    for i, stage in enumerate(stages, 1):
        final, partial = out / stage.name, out / f"{stage.name}.partial"
        head = f"[{i}/{total}] {stage.name}"
        if (final / DONE).is_file():
            record = json.loads((final / DONE).read_text())
            log(f"{head}: already done ({record['seconds']:.1f} s in an earlier run), skipped")
            results[stage.name] = {**record, "skipped": True}
        else:
            if final.exists():  # renamed but unmarked: cannot happen through this runner
                shutil.rmtree(final)
            resuming = partial.exists() and stage.resumable
            if partial.exists() and not stage.resumable:  # interrupted: start again
                shutil.rmtree(partial)
            partial.mkdir(exist_ok=True)
            log(
                f"{head}: {stage.title}"
                + (" (resuming an interrupted attempt)" if resuming else "")
            )
            start = time.perf_counter()
            summary = stage.fn(ctx, partial)
            seconds = time.perf_counter() - start
            record = {"stage": stage.name, "summary": summary, "seconds": seconds}
            write_text(partial / DONE, json.dumps(record, indent=1, sort_keys=True) + "\n")
            os.replace(partial, final)
            log(f"{head}: done in {seconds:.1f} s")
            results[stage.name] = {**record, "skipped": False}
        if stage.name == stop_after:
            break
    return results


def _check_run_file(out: Path, config: QuickstartConfig) -> None:
    path = out / "run.json"
    record = {"fingerprint": config.fingerprint(), "config": config.to_dict()}
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("fingerprint") != record["fingerprint"]:
            raise RunError(
                f"{out} holds a run with other settings (seed, preset or overrides); "
                "use another --out folder, or delete this one to start over"
            )
        return
    write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
