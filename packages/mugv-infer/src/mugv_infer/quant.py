"""Quantized DiT weights through diffusers' torchao integration (``TorchAoConfig``).

Weight-only int8 or FP8 (e4m3) on the linears of the DiT blocks: weights are stored in 8
bits with a per-output-channel scale and dequantized on the fly, activations stay in the
compute dtype (bf16). The embedders, ``t_block`` and the final layer (about 1 % of the
weights, the ones every token's modulation depends on) stay unquantized. Memory arithmetic
for the 10b preset is in ``docs/memory.md``; accuracy on the debug model is measured by the
tests (PSNR of the velocity against the bf16 model).

Use::

    from mugv_dit import MUGDiT
    from mugv_infer import MUGVPipeline, torchao_config

    dit = MUGDiT.from_pretrained(folder, subfolder="dit", dtype=torch.bfloat16,
                                 quantization_config=torchao_config("int8"))
    pipe = MUGVPipeline.from_pretrained(folder, dit=dit)

or for a whole saved pipeline ``quantization_config=pipeline_quantization_config("int8")``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

#: Weight-only kinds: name -> torchao config class.
QUANT_KINDS: dict[str, str] = {"int8": "Int8WeightOnlyConfig", "fp8": "Float8WeightOnlyConfig"}

#: DiT modules kept in the compute dtype (small, and every token's modulation uses them).
KEEP_UNQUANTIZED: tuple[str, ...] = (
    "x_embedder",
    "t_embedder",
    "fps_embedder",
    "t_block",
    "y_embedder",
    "final_layer",
)


def _require_torchao() -> None:
    if importlib.util.find_spec("torchao") is None:
        raise ImportError(
            "quantized weights need torchao, which is not installed: install the extra "
            "`pip install 'mugv-infer[quant]'` (or `pip install torchao`)"
        )


def torchao_config(kind: str = "int8", *, keep: tuple[str, ...] = KEEP_UNQUANTIZED) -> Any:
    """diffusers ``TorchAoConfig`` for weight-only ``kind`` ("int8" or "fp8") DiT linears."""
    if kind not in QUANT_KINDS:
        raise ValueError(f"unknown quantization {kind!r}; choose one of {sorted(QUANT_KINDS)}")
    _require_torchao()
    import torchao.quantization as tq
    from diffusers import TorchAoConfig

    return TorchAoConfig(getattr(tq, QUANT_KINDS[kind])(), modules_to_not_convert=list(keep))


def pipeline_quantization_config(kind: str = "int8") -> Any:
    """diffusers ``PipelineQuantizationConfig`` quantizing only the ``dit`` component."""
    from diffusers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_mapping={"dit": torchao_config(kind)})
