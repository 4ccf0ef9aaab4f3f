"""The model stages of a clip, batched: RAFT motion, aesthetics, artifact filter, captioner.

Both engines run clips through ``ModelRunner``: the local engine per video (its clips
batched together), the Ray engine in class-based actors (``ModelStageActor``) that load
the models once, on their own device, and batch the clips of whole blocks. A clip reaches
the runner after the CPU stage (decode, sharpness, Farneback motion, hashes, cheap
checks) with the frames each model needs; stages run in the paper's order, each on the
clips that survived the previous one, ``config.model_batch_size`` clips per forward:

    RAFT motion (backend "raft") -> aesthetics -> artifact filter -> captioner

A model is any callable on one clip's frames (``Models``); when it also has a ``batch``
method (``AestheticPredictor``, the VLM wrappers, RAFT here) that is called on lists of
clips instead. Unparsable VLM answers follow ``captions.on_unparsable``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mugv_data.config import CurationConfig, SourceConfig

__all__ = ["ModelLoadError", "ModelRunner", "Models", "model_kinds"]


class ModelLoadError(RuntimeError):
    """A model stage's model could not be loaded (named, with the setting to fix)."""


@dataclass
class Models:
    """Optional model stages: callables on lists of RGB frames.

    ``aesthetic(frames) -> float`` (LAION-style score), ``artifact(frames) -> (flag, str)``
    (flag True = has artifacts, False = clean, None = the answer did not parse; with the
    model's answer), ``captioner(frames) -> str`` (empty = no caption). A callable with a
    ``batch(list_of_frame_lists) -> list`` method is called on batches of clips.
    """

    aesthetic: Callable[[list], float] | None = None
    artifact: Callable[[list], tuple[bool | None, str]] | None = None
    captioner: Callable[[list], str] | None = None


def model_kinds(scfg: SourceConfig, given: Models | None) -> frozenset[str]:
    """Which model stages run for a source (known without loading any model)."""
    kinds = set()
    if scfg.motion.enabled and scfg.motion.backend == "raft":
        kinds.add("raft")
    if scfg.aesthetic.enabled or (given and given.aesthetic):
        kinds.add("aesthetic")
    if (scfg.captions.model and scfg.captions.artifact_filter) or (given and given.artifact):
        kinds.add("artifact")
    if (scfg.captions.model and scfg.captions.caption) or (given and given.captioner):
        kinds.add("captioner")
    return frozenset(kinds)


def default_device() -> str:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _batched(fn: Callable, inputs: Sequence, batch_size: int) -> list:
    batch = getattr(fn, "batch", None)
    out: list = []
    for i in range(0, len(inputs), batch_size):
        chunk = list(inputs[i : i + batch_size])
        out += list(batch(chunk)) if batch is not None else [fn(x) for x in chunk]
    return out


class _VLMCall:
    """``VLMStage`` as a per-clip callable with a ``batch`` method (one prompt)."""

    def __init__(self, vlm: Any, kind: str) -> None:
        self.vlm, self.kind = vlm, kind

    def __call__(self, frames: list) -> Any:
        return self.batch([frames])[0]

    def batch(self, clips: list[list]) -> list:
        if self.kind == "caption":
            return self.vlm.caption_batch(clips)
        return self.vlm.artifact_batch(clips)


class _RaftCall:
    def __init__(self, weights: str, max_side: int | None, device: str) -> None:
        from mugv_data.stages.quality import load_raft

        self.model = load_raft(weights).to(device)
        self.max_side, self.device = max_side, device

    def batch(self, clips: list[list[tuple[np.ndarray, np.ndarray]]]) -> list[float]:
        from mugv_data.stages.quality import raft_motion_batch

        return raft_motion_batch(clips, self.model, self.max_side, self.device)


def _load(what: str, setting: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ModelLoadError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"{what} failed to load ({type(e).__name__}: {msg}); check {setting}"
        ) from e


_BUILT: dict[tuple[str, str, frozenset[str]], dict[str, Any]] = {}


def _build(scfg: SourceConfig, kinds: frozenset[str], device: str) -> dict[str, Any]:
    m: dict[str, Any] = {}
    if "raft" in kinds:
        mc = scfg.motion
        m["raft"] = _load(
            f"RAFT weights {mc.raft_weights!r}",
            "motion.raft_weights",
            lambda: _RaftCall(mc.raft_weights, mc.max_side, device),
        )
    if "aesthetic" in kinds:
        from mugv_data.stages.aesthetic import AestheticPredictor

        ac = scfg.aesthetic
        m["aesthetic"] = _load(
            f"aesthetic model (CLIP {ac.clip_model!r}, head {ac.head_weights!r})",
            "aesthetic.clip_model / aesthetic.head_weights",
            lambda: AestheticPredictor.from_config(ac, device=device),
        )
    if "artifact" in kinds or "captioner" in kinds:
        from mugv_data.stages.vlm import VLMStage

        cc = scfg.captions
        vlm = _load(
            f"VLM {cc.model!r} ({cc.backend} backend)",
            "captions.model / captions.backend",
            lambda: VLMStage.from_config(cc, device=device),
        )
        if "artifact" in kinds:
            m["artifact"] = _VLMCall(vlm, "artifact")
        if "captioner" in kinds:
            m["captioner"] = _VLMCall(vlm, "caption")
    return m


class ModelRunner:
    """Loads a config's model stages (once per source setting) and runs clips through them.

    ``given`` models replace the configured ones stage by stage. ``device`` None picks
    ``config.model_device`` or, failing that, CUDA when visible.
    """

    def __init__(self, cfg: CurationConfig, given: Models | None = None, device: str | None = None):
        self.cfg = cfg
        self.given = given
        self.device = device or cfg.model_device or default_device()
        self._built: dict[str, dict[str, Any]] = {}

    def _key(self, scfg: SourceConfig) -> str:
        return json.dumps(
            [scfg.aesthetic.__dict__, scfg.captions.__dict__, scfg.motion.__dict__],
            sort_keys=True,
            default=str,
        )

    def models(self, source: str) -> dict[str, Any]:
        """The stage callables of ``source`` (built on first use), by kind."""
        scfg = self.cfg.for_source(source)
        key = self._key(scfg)
        if key not in self._built:
            g = self.given or Models()
            kinds = model_kinds(scfg, self.given)
            given = {"aesthetic": g.aesthetic, "artifact": g.artifact, "captioner": g.captioner}
            m = {k: given[k] for k in kinds if given.get(k) is not None}
            todo = frozenset(k for k in kinds if k not in m)
            cache_key = (key, self.device, todo)
            if cache_key not in _BUILT:  # once per process: actors and pool workers reuse it
                _BUILT[cache_key] = _build(scfg, todo, self.device)
            self._built[key] = {**_BUILT[cache_key], **m}
        return self._built[key]

    def load_all(self, sources: Sequence[str]) -> None:
        """Build every model the given sources need now (an actor does this at start)."""
        for s in sources:
            self.models(s)

    def run(self, items: list[tuple[dict, dict, dict[int, np.ndarray]]]) -> list[dict]:
        """Clips pending model stages -> clips ``passed`` or ``dropped``, in input order.

        ``items``: (clip, plan, frames) from the CPU stage, plan = {"raft": [[a, b], ...],
        "aesthetic": [i, ...], "vlm": [i, ...]} and frames = index -> RGB frame.
        """
        out = [dict(c) for c, _, _ in items]
        groups: dict[str, list[int]] = {}
        for i, (c, _, _) in enumerate(items):
            groups.setdefault(self._key(self.cfg.for_source(c["source"])), []).append(i)
        bs = self.cfg.model_batch_size
        for idx in groups.values():
            src = items[idx[0]][0]["source"]
            scfg = self.cfg.for_source(src)
            m = self.models(src)

            def alive(kind: str, idx: list[int] = idx, m: dict = m) -> list[int]:
                return [i for i in idx if out[i]["status"] == "pending" and kind in m]

            def frames(i: int, key: str) -> list:
                _, plan, fr = items[i]
                if key == "raft":
                    return [(fr[a], fr[b]) for a, b in plan["raft"]]
                return [fr[j] for j in plan[key]]

            live = alive("raft")
            for i, v in zip(live, _batched(m.get("raft"), [frames(i, "raft") for i in live], bs)):
                out[i]["motion"] = float(v)
                lo, hi = scfg.motion.min, scfg.motion.max
                if not lo <= v <= hi:
                    out[i].update(status="dropped", stage="motion",
                                  reason=f"motion {v:.2f} outside [{lo:g}, {hi:g}]")  # fmt: skip
            live = alive("aesthetic")
            vals = _batched(m.get("aesthetic"), [frames(i, "aesthetic") for i in live], bs)
            for i, v in zip(live, vals):
                out[i]["aesthetic"] = float(v)
                if v < scfg.aesthetic.min:
                    out[i].update(status="dropped", stage="aesthetic",
                                  reason=f"aesthetic {v:.2f} below {scfg.aesthetic.min:g}")  # fmt: skip
            keep_unparsable = scfg.captions.on_unparsable == "keep"
            live = alive("artifact")
            for i, (flag, answer) in zip(
                live, _batched(m.get("artifact"), [frames(i, "vlm") for i in live], bs)
            ):
                out[i]["artifact"] = answer
                if flag is None:
                    why = f"artifact filter answer is neither yes nor no: {answer.strip()[:80]!r}"
                    if keep_unparsable:
                        out[i]["model_note"] = why
                    else:
                        out[i].update(status="dropped", stage="artifact", reason=why)
                elif flag:
                    out[i].update(status="dropped", stage="artifact",
                                  reason=f"artifact filter: {answer.strip()[:80]}")  # fmt: skip
            live = [i for i in alive("captioner") if not out[i]["caption"]]
            caps = _batched(m.get("captioner"), [frames(i, "vlm") for i in live], bs)
            for i, cap in zip(live, caps):
                cap = (cap or "").strip()
                if cap:
                    out[i].update(caption=cap, caption_source="model")
                elif keep_unparsable:
                    out[i]["model_note"] = "captioner returned no text"
                else:
                    out[i].update(status="dropped", stage="caption",
                                  reason="captioner returned no text")  # fmt: skip
        for c in out:
            if c["status"] == "pending":
                c["status"] = "passed"
        return out


def _missing_path(value: str | None) -> bool:
    """True for a value that names a local file or folder (not a Hub id) that is absent."""
    if not value or value.startswith("hf://"):
        return False
    from pathlib import Path

    p = Path(value).expanduser()
    if p.exists():
        return False
    local = value.startswith(("/", "./", "../", "~")) or value.count("/") > 1
    return local or p.suffix in (".safetensors", ".pth", ".pt", ".bin")


def check_model_settings(cfg: CurationConfig, given: Models | None, sources: Sequence[str]) -> None:
    """Cheap checks before any work: every configured model path that is local exists."""
    for s in sources:
        scfg = cfg.for_source(s)
        kinds = model_kinds(scfg, given)
        g = given or Models()
        checks = []
        if "raft" in kinds:
            checks.append(("motion.raft_weights", scfg.motion.raft_weights))
        if "aesthetic" in kinds and g.aesthetic is None:
            checks += [
                ("aesthetic.clip_model", scfg.aesthetic.clip_model),
                ("aesthetic.head_weights", scfg.aesthetic.head_weights),
            ]
        if ("artifact" in kinds and g.artifact is None) or (
            "captioner" in kinds and g.captioner is None
        ):
            checks.append(("captions.model", scfg.captions.model))
        for setting, value in checks:
            if _missing_path(value):
                where = "" if s == "default" else f" (source {s!r})"
                raise ModelLoadError(
                    f"{setting}{where}: no file or folder at {value!r}; give an existing path "
                    "or a Hub id"
                )
