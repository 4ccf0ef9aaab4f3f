"""Streams mugv-data shards as bucketed, token-balanced, resumable micro-batches.

Dimension legend: B batch, C latent channels, T latent frames, h/w latent height/width,
S text tokens, E text dim.

How a run is cut into batches (deterministic from ``seed`` and the epoch number):
1. samples are grouped by latent shape (one bucket = one [C, T, h, w]), shuffled per epoch
   and cut into micro-batches of ``batch_size`` (fewer when ``max_tokens`` caps the tokens);
2. micro-batches are sorted by token count and dealt out ``dp_size`` at a time, so the ranks
   of one step get batches of similar cost (paper §5.2 "dynamic balanced sampling"); the
   order of the steps is then shuffled;
3. with an ``image_share`` schedule, each step draws from the image stream (one-frame
   samples) with the annealed probability and from the video stream otherwise.
The position (epoch, cursor) is the sampler state saved in checkpoints; a background thread
prefetches batches and each batch carries the state *after* it, so a resumed run continues
exactly after the last consumed batch. Corrupt samples are skipped and counted.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from mugv_data import ShardError, ShardSet, open_shards
from mugv_train.config import DataConfig


@dataclass
class Batch:
    """One collated micro-batch."""

    latent: torch.Tensor  # [B, C, T, h, w]
    text: torch.Tensor  # [B, S, E] padded
    text_mask: torch.Tensor  # [B, S] bool
    fps: torch.Tensor  # [B]
    height: torch.Tensor  # [B] pixels
    width: torch.Tensor  # [B] pixels
    ids: list[str]
    extra: dict[str, list[Any]] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0

    @property
    def num_tokens(self) -> int:
        b, _, t, h, w = self.latent.shape
        return b * t * ((h + 1) // 2) * ((w + 1) // 2)


def collate(samples: list[dict]) -> Batch:
    """Stack same-shape latents, pad captions to the longest one with a mask."""
    shapes = {tuple(s["latent"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"a micro-batch needs one latent shape, got {sorted(shapes)}")
    s_max = max(int(s["text"].shape[0]) for s in samples)
    e = int(samples[0]["text"].shape[1])
    text = torch.zeros(len(samples), s_max, e)
    mask = torch.zeros(len(samples), s_max, dtype=torch.bool)
    for i, s in enumerate(samples):
        n = s["text"].shape[0]
        text[i, :n] = s["text"]
        mask[i, :n] = True
    known = {"latent", "text", "id", "fps", "height", "width"}
    extra_keys = sorted(set().union(*(s.keys() for s in samples)) - known)
    return Batch(
        latent=torch.stack([s["latent"] for s in samples]),
        text=text,
        text_mask=mask,
        fps=torch.tensor([float(s["fps"]) for s in samples]),
        height=torch.tensor([float(s["height"]) for s in samples]),
        width=torch.tensor([float(s["width"]) for s in samples]),
        ids=[str(s["id"]) for s in samples],
        extra={k: [s.get(k) for s in samples] for k in extra_keys},
    )


def open_shard_roots(spec: str) -> list[ShardSet]:
    """Open every root of a ','-separated list, checking that every listed shard exists."""
    roots = [r for r in (p.strip() for p in spec.split(",")) if r]
    if not roots:
        raise ShardError("DataConfig.shards is empty: point it at a folder written by mugv-data")
    sets = [open_shards(r) for r in roots]
    for s in sets:
        missing = sorted({row["shard"] for row in s.rows if not (s.root / row["shard"]).exists()})
        if missing:
            raise ShardError(
                f"{len(missing)} shard file(s) listed in {s.root}/manifest.parquet are missing: "
                f"{missing[:5]}; restore them or re-run `mugv-data` to rewrite the root"
            )
    return sets


class ShardStream:
    """Infinite, resumable stream of micro-batches for one data-parallel rank."""

    def __init__(
        self,
        sets: list[ShardSet],
        config: DataConfig,
        *,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 0,
        total_steps: int = 1,
    ) -> None:
        self.sets, self.config = sets, config
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.total_steps = max(1, total_steps)
        self.index = [(si, i) for si, s in enumerate(sets) for i in range(len(s))]
        if not self.index:
            raise ShardError("the shard roots hold no samples")
        self.shape = [tuple(sets[si].rows[i]["latent_shape"]) for si, i in self.index]
        self.streams = {"all": [j for j in range(len(self.index))]}
        a, b = config.image_share
        if a > 0 or b > 0:
            self.streams = {
                "image": [j for j, s in enumerate(self.shape) if s[1] == 1],
                "video": [j for j, s in enumerate(self.shape) if s[1] > 1],
            }
            for name, members in self.streams.items():
                if not members:
                    raise ShardError(
                        f"image_share={config.image_share} needs {name} samples; none found"
                    )
        self.state: dict[str, Any] = {"step": 0, **{name: [0, 0] for name in self.streams}}
        self._plans: dict[tuple[str, int], list[list[list[int]]]] = {}
        self.corrupt_skipped = 0

    # -- planning ------------------------------------------------------------------------------------
    def _tokens(self, j: int) -> int:
        _, t, h, w = self.shape[j]
        return t * ((h + 1) // 2) * ((w + 1) // 2)

    def _plan(self, stream: str, epoch: int) -> list[list[list[int]]]:
        """Steps of one epoch: each step is ``dp_size`` micro-batches of sample indices."""
        key = (stream, epoch)
        if key in self._plans:
            return self._plans[key]
        rng = random.Random(f"{self.seed}-{stream}-{epoch}")
        buckets: dict[tuple, list[int]] = {}
        for j in self.streams[stream]:
            buckets.setdefault(self.shape[j], []).append(j)
        batches: list[list[int]] = []
        for shape in sorted(buckets):
            members = buckets[shape]
            rng.shuffle(members)
            size = self.config.batch_size
            if self.config.max_tokens > 0:
                size = max(1, min(size, self.config.max_tokens // max(1, self._tokens(members[0]))))
            batches += [members[i : i + size] for i in range(0, len(members), size)]
        # balance: similar-cost batches side by side, dealt dp_size at a time
        batches.sort(key=lambda bt: (sum(self._tokens(j) for j in bt), bt))
        while len(batches) % self.dp_size:
            batches.append(batches[len(batches) % max(1, len(batches))])
        steps = [batches[i : i + self.dp_size] for i in range(0, len(batches), self.dp_size)]
        rng.shuffle(steps)
        self._plans = {k: v for k, v in self._plans.items() if k[0] != stream or k[1] >= epoch - 1}
        self._plans[key] = steps
        return steps

    def _choose_stream(self, step: int) -> str:
        if "all" in self.streams:
            return "all"
        a, b = self.config.image_share
        p = a + (b - a) * min(1.0, step / self.total_steps)
        return "image" if random.Random(f"{self.seed}-mix-{step}").random() < p else "video"

    # -- iteration ------------------------------------------------------------------------------------
    def next_indices(self) -> list[int]:
        stream = self._choose_stream(self.state["step"])
        epoch, cursor = self.state[stream]
        plan = self._plan(stream, epoch)
        batch = plan[cursor][self.dp_rank]
        cursor += 1
        if cursor == len(plan):
            epoch, cursor = epoch + 1, 0
        self.state = {**self.state, stream: [epoch, cursor], "step": self.state["step"] + 1}
        return batch

    def load(self, j: int) -> dict | None:
        si, i = self.index[j]
        try:
            return self.sets[si][i]
        except ShardError:
            self.corrupt_skipped += 1
            return None

    def __iter__(self) -> Iterator[Batch]:
        while True:
            skipped = 0
            samples: list[dict] = []
            while not samples:
                for j in self.next_indices():
                    sample = self.load(j)
                    if sample is None:
                        skipped += 1
                    else:
                        samples.append(sample)
                if skipped > 1000:
                    raise ShardError(
                        f"{skipped} consecutive corrupt samples; check the shard files"
                    )
            batch = collate(samples)
            batch.state = self.state_dict()
            batch.skipped = skipped
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - set(self.state)
        if unknown:
            raise ValueError(
                f"data state has streams {sorted(unknown)} this run does not have; was image_share changed?"
            )
        self.state = {
            **self.state,
            **{k: (list(v) if isinstance(v, list) else v) for k, v in state.items()},
        }


class Prefetcher:
    """Runs an iterator in a daemon thread, ``depth`` items ahead (0 = synchronous)."""

    def __init__(self, it: Iterator[Batch], depth: int) -> None:
        self.it, self.depth = it, depth
        if depth > 0:
            self.q: queue.Queue = queue.Queue(maxsize=depth)
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()

    def _run(self) -> None:
        try:
            for item in self.it:
                self.q.put((True, item))
        except BaseException as exc:  # surfaced in the consumer thread
            self.q.put((False, exc))

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Batch:
        if self.depth == 0:
            return next(self.it)
        ok, item = self.q.get()
        if not ok:
            raise item
        return item


class ReplicaBatches:
    """The micro-batches of one data-parallel replica, read by one of its ranks and
    broadcast to the others (Megatron's ``broadcast_data`` idea: every sample is read once
    per replica, not once per TP / CP / PP rank).

    ``source``: the batch iterator on the reading rank, None elsewhere. ``hops``: the
    broadcasts this rank takes part in, in order, as (group, source global rank), e.g. over
    the pipeline group among the TP/CP-rank-0 ranks, then over the TP x CP group. A batch
    travels as a pickled object (tensors on CPU). An exception of the reader (a corrupt
    shard set, the end of the data) is broadcast too and raised on every rank, so no rank
    waits for a batch that never comes.
    """

    def __init__(self, source: Iterator[Batch] | None, hops: list[tuple[Any, int]]) -> None:
        self.source, self.hops = source, hops

    def __iter__(self) -> ReplicaBatches:
        return self

    def __next__(self) -> Batch:
        import torch.distributed as dist

        item: tuple[bool, Any] | None = None
        if self.source is not None:
            try:
                item = (True, next(self.source))
            except BaseException as exc:  # re-raised on every rank below
                item = (False, exc)
        for group, src in self.hops:
            box = [item if dist.get_rank() == src else None]
            dist.broadcast_object_list(box, src=src, group=group)
            item = box[0]
        if item is None:
            raise RuntimeError("this rank neither reads batches nor receives them")
        ok, value = item
        if not ok:
            raise value
        return value
