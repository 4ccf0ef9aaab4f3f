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

from mugv_data.config import BalanceConfig, DedupConfig
from mugv_data.stages.quality import hamming


def duplicate_groups(clips: list[dict], cfg: DedupConfig) -> dict[str, tuple[str, float]]:
    """Map each duplicate clip id -> (id of the clip kept instead, hash distance)."""
    n = len(clips)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    dist: dict[tuple[int, int], float] = {}
    for i in range(n):
        hi = [int(h, 16) for h in clips[i]["phash"]]
        for j in range(i + 1, n):
            hj = [int(h, 16) for h in clips[j]["phash"]]
            if not hi or len(hi) != len(hj):
                continue
            di, dj = clips[i]["duration_s"], clips[j]["duration_s"]
            if max(di, dj) > cfg.max_duration_ratio * max(min(di, dj), 1e-6):
                continue
            d = sum(hamming(a, b) for a, b in zip(hi, hj)) / len(hi)
            if d <= cfg.max_distance:
                dist[(i, j)] = d
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    out: dict[str, tuple[str, float]] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        best = min(
            members,
            key=lambda i: (
                -clips[i]["width"] * clips[i]["height"],
                -clips[i]["duration_s"],
                clips[i]["clip_id"],
            ),
        )
        for i in members:
            if i != best:
                d = dist.get((min(i, best), max(i, best)), cfg.max_distance)
                out[clips[i]["clip_id"]] = (clips[best]["clip_id"], d)
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
