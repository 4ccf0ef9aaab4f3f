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


def _candidate_pairs(hashes: list[list[int]], max_distance: float) -> set[tuple[int, int]]:
    """Pairs (i < j) that can be within ``max_distance``: those sharing a band of a hash.

    Exact, by the pigeonhole principle: a mean distance <= D over F frames means some
    frame differs in at most floor(D) bits, and a 64-bit hash cut into floor(D) + 1 bands
    then has one band equal. Only clips in the same (frame, band, value) bucket are
    compared, so the work grows with the number of near matches, not with N^2.
    """
    nb = int(max_distance) + 1
    if nb > 64:  # every pair is a candidate
        return {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))}
    width = -(-64 // nb)
    buckets: dict[tuple[int, int, int, int], list[int]] = {}
    for i, hs in enumerate(hashes):
        for f, h in enumerate(hs):
            for b in range(nb):
                val = (h >> (b * width)) & ((1 << width) - 1)
                buckets.setdefault((len(hs), f, b, val), []).append(i)
    pairs = set()
    for members in buckets.values():
        for a in range(len(members)):
            for c in range(a + 1, len(members)):
                pairs.add((members[a], members[c]))
    return pairs


def duplicate_groups(clips: list[dict], cfg: DedupConfig) -> dict[str, tuple[str, float]]:
    """Map each duplicate clip id -> (id of the clip kept instead, hash distance).

    ``clips`` in a fixed order (clip id); each needs ``clip_id``, ``phash`` (hex strings),
    ``duration_s``, ``width``, ``height``.
    """
    n = len(clips)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    hashes = [[int(h, 16) for h in c["phash"] or []] for c in clips]
    dist: dict[tuple[int, int], float] = {}
    for i, j in sorted(_candidate_pairs(hashes, cfg.max_distance)):
        hi, hj = hashes[i], hashes[j]
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
