"""Building blocks of MUG-DiT (embedders, RoPE, attention, blocks); re-exported at top level."""
