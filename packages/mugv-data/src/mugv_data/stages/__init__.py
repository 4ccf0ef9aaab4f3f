"""Curation stages. Each module holds one stage: a typed result and a pure function.

Per video: ``probe`` -> ``scenes``; per clip: ``quality`` (sharpness, motion, perceptual
hash), ``aesthetic``, ``vlm`` (captioner, artifact filter); across clips: ``dedup``,
``balance``, ``buckets``; then ``encode`` writes shards.
"""
