"""Across clips: near-duplicate removal, entity tags, stratified weights (paper §2.1).

Duplicates: clips whose perceptual hashes differ by at most ``max_distance`` bits (mean
over the sampled frames) and whose durations are within ``max_duration_ratio`` are one
group (union-find over all pairs); the group keeps its largest, then longest, then
first-by-id clip. Exact copies have distance 0.

Tags: the paper parses captions into entities with an LLM; the default tagger here keeps a
caption's lower-cased content words (stop words removed), which is enough to find
under-represented subjects. Weights: each clip's *rarest* tag defines its stratum; its
weight is ``count(stratum) ** -alpha``, normalised to mean 1 over kept clips (alpha = 1
gives every stratum the same total weight).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import numpy as np

from mugv_data.config import BalanceConfig, DedupConfig

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def _hamming_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Summed bit differences of uint64 hash rows: ``a [m, F]`` x ``b [k, F]`` -> ``[m, k]``."""
    x = a[:, None, :] ^ b[None, :, :]  # [m, k, F]
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x).sum(axis=-1, dtype=np.int64)
    return _POPCOUNT8[x.view(np.uint8)].sum(axis=-1)


def _candidate_groups(hashes: np.ndarray, max_distance: float) -> Iterator[np.ndarray]:
    """Groups of clip indices (ascending) that share a band of a frame's hash; every pair
    within ``max_distance`` shares at least one group.

    Exact, by the pigeonhole principle: a mean distance <= D over F frames means some
    frame differs in at most floor(D) bits, and a 64-bit hash cut into floor(D) + 1 bands
    (any widths) then has one band equal. Only clips in the same (frame, band, value) group are
    compared, so the work grows with the near matches (and random band collisions, about
    N^2 x F x 13 / 2^11 pairs for D = 6), never with a stored set of pairs.
    """
    n, frames = hashes.shape
    nb = int(max_distance) + 1
    if nb > 64:  # every pair is a candidate
        yield np.arange(n)
        return
    # Bands as equal as possible (64 = 10 + 6 x 9 bits for D = 6): a narrow last band
    # would make groups of N / 16 clips, i.e. quadratic work and memory.
    widths = [64 // nb + (b < 64 % nb) for b in range(nb)]
    shifts = np.cumsum([0, *widths[:-1]])
    for f in range(frames):
        for width, shift in zip(widths, shifts):
            mask = np.uint64((1 << width) - 1)
            vals = (hashes[:, f] >> np.uint64(shift)) & mask
            order = np.argsort(vals, kind="stable")
            for g in np.split(order, np.flatnonzero(np.diff(vals[order])) + 1):
                if len(g) > 1:
                    yield g


def duplicate_groups(clips: list[dict], cfg: DedupConfig) -> dict[str, tuple[str, float]]:
    """Map each duplicate clip id -> (id of the clip kept instead, hash distance).

    ``clips`` in a fixed order (clip id); each needs ``clip_id``, ``phash`` (hex strings),
    ``duration_s``, ``width``, ``height``. See ``duplicate_links`` for the arrays form.
    """
    by_len: dict[int, list[int]] = {}
    for i, c in enumerate(clips):
        if c["phash"]:  # clips without hashes are never duplicates
            by_len.setdefault(len(c["phash"]), []).append(i)
    hash_sets = [
        (np.array(idx, dtype=np.int64),
         np.array([[int(h, 16) for h in clips[i]["phash"]] for i in idx],
                  dtype=np.uint64).reshape(len(idx), frames))
        for frames, idx in by_len.items()
    ]  # fmt: skip
    ids = [c["clip_id"] for c in clips]
    links = duplicate_links(
        hash_sets,
        np.array([c["duration_s"] for c in clips], dtype=np.float64),
        np.array([c["width"] * c["height"] for c in clips], dtype=np.int64),
        np.array([i.encode() for i in ids]) if ids else np.zeros(0, "S1"),
        cfg,
    )
    return {ids[i]: (ids[b], d) for i, (b, d) in links.items()}


def duplicate_links(
    hash_sets: list[tuple[np.ndarray, np.ndarray]],
    dur: np.ndarray,
    area: np.ndarray,
    ids: np.ndarray,
    cfg: DedupConfig,
) -> dict[int, tuple[int, float]]:
    """``duplicate_groups`` on compact columns: clip index -> (index kept instead, distance).

    ``hash_sets``: ``(clip indices, uint64 hashes [m, F])`` per frame count F (clips
    without hashes in none); ``dur`` (float64), ``area`` (width x height) and ``ids``
    (UTF-8 clip ids, ``S`` array: byte order is the ids' string order) per clip. Memory:
    those columns and the matching pairs; candidate groups are compared as they are found,
    a block of rows at a time, and never stored. The result is independent of clip order.
    """
    parent: dict[int, int] = {}  # union-find over the clips in some matching pair

    def find(i: int) -> int:
        while (p := parent.get(i, i)) != i:
            parent[i] = i = parent.get(p, p)
        return i

    dist: dict[tuple[int, int], float] = {}
    for index, hashes in hash_sets:
        frames = hashes.shape[1]
        for g in _candidate_groups(hashes, cfg.max_distance):
            step = max(1, (1 << 18) // (len(g) * frames))  # [step, len(g), F] at a time
            for r0 in range(0, len(g) - 1, step):
                rows = g[r0 : r0 + step]
                d = _hamming_rows(hashes[rows], hashes[g]) / frames
                gi, gj = index[rows][:, None], index[g][None, :]
                di, dj = dur[gi], dur[gj]
                close = (d <= cfg.max_distance) & (gi < gj)
                close &= np.maximum(di, dj) <= cfg.max_duration_ratio * np.maximum(
                    np.minimum(di, dj), 1e-6
                )
                for a, b in zip(*np.nonzero(close)):
                    i, j = int(index[rows[a]]), int(index[g[b]])
                    dist[(i, j)] = float(d[a, b])
                    parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in sorted(set(parent) | set(parent.values())):
        groups.setdefault(find(i), []).append(i)
    out: dict[int, tuple[int, float]] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        best = min(members, key=lambda i: (-int(area[i]), -float(dur[i]), bytes(ids[i])))
        for i in members:
            if i != best:
                out[i] = (best, dist.get((min(i, best), max(i, best)), cfg.max_distance))
    return out


_WORD = re.compile(r"[a-z][a-z\-]+")


def entity_tags(caption: str, cfg: BalanceConfig) -> list[str]:
    """Lower-cased content words of a caption, in order, without repeats."""
    stop = set(cfg.stopwords)
    seen: dict[str, None] = {}
    for w in _WORD.findall(caption.lower()):
        if w not in stop and len(w) > 1:
            seen.setdefault(w, None)
    return list(seen)


def stratified_weights(tags: list[list[str]], cfg: BalanceConfig) -> tuple[list[str], list[float]]:
    """Each clip's stratum (its rarest tag, '' if untagged) and its sampling weight."""
    counts = Counter(t for ts in tags for t in set(ts))
    strata = [min(ts, key=lambda t: (counts[t], t)) if ts else "" for ts in tags]
    size = Counter(strata)
    raw = [size[s] ** -cfg.alpha for s in strata]
    mean = sum(raw) / len(raw) if raw else 1.0
    return strata, [r / mean for r in raw]
