"""MUG-V inference: text-to-video and image-to-video generation.

Entry points:
- ``MUGVPipeline``: a diffusers ``DiffusionPipeline`` (``DiffusionPipeline.from_pretrained``
  returns it; diffusers offload, LoRA via ``MUGVLoraLoaderMixin``; ``MUGVFlowScheduler``),
  ``convert_megatron_lora``, ``torchao_config`` / ``pipeline_quantization_config``
  (``from_pretrained``, components,
  ``__call__`` with ``output_type`` "latent" / "np" / "pil" / "mp4").
- ``FlowEulerSampler`` with ``ClassifierFreeGuidance`` / ``CFGZeroStar``, and
  ``frame_conditioning`` / ``extension_conditioning`` for any set of clean frames.
- ``StepCache``: TeaCache-style step skipping with a quality knob.
- ``ComponentOffload`` / ``BlockOffload`` / ``enable_block_offload``: CPU offload.
- ``init_parallel``, ``cfg_parallel``, ``ulysses_attention``, ``SequenceParallelDiT``:
  multi-process inference (CFG and Ulysses sequence parallelism).
- ``preprocess_image``, ``write_mp4``, ``read_mp4``: reference images and MP4 files.
- Presets: ``ASPECT_RATIOS_720P``, ``DURATIONS``, ``OFFICIAL_NEGATIVE_PROMPT``,
  ``OfficialQuirks``, ``resolve_size``.
- ``MUGVEnhancer`` (``mugv_infer.enhance``): the official one-step video enhancer on
  diffusers' Wan components, with ``EnhancerQuirks``, ``EnhancementOutput``,
  ``WAN_NEGATIVE_PROMPT`` and ``ENHANCE_PROMPT``.
- The ``mugv`` command (``mugv generate ...``, ``mugv enhance ...``).

Everything not listed in ``__all__`` is private.
"""

# mugv_dit first: its import brings in diffusers (and torchao, where installed) with their
# import-time noise silenced (mugv_dit._quiet), so what follows imports them quietly too.
import mugv_dit as _mugv_dit  # noqa: F401
from mugv_infer._cache import StepCache
from mugv_infer._media import VideoFile, preprocess_image, read_mp4, write_mp4
from mugv_infer.enhance import (
    ENHANCE_PROMPT,
    WAN_NEGATIVE_PROMPT,
    EnhancementOutput,
    EnhancerQuirks,
    MUGVEnhancer,
)
from mugv_infer.lora import MUGVLoraLoaderMixin, convert_megatron_lora
from mugv_infer.offload import BlockOffload, ComponentOffload, enable_block_offload
from mugv_infer.parallel import (
    ParallelGroups,
    SequenceParallelDiT,
    cfg_parallel,
    init_parallel,
    ulysses_attention,
)
from mugv_infer.pipeline import NULL_TEXT_FILE, GenerationOutput, MUGVPipeline, load_null_text
from mugv_infer.presets import (
    ASPECT_RATIOS_720P,
    DURATIONS,
    OFFICIAL_NEGATIVE_PROMPT,
    OfficialQuirks,
    resolve_num_frames,
    resolve_size,
)
from mugv_infer.quant import pipeline_quantization_config, torchao_config
from mugv_infer.sampling import (
    CFGZeroStar,
    ClassifierFreeGuidance,
    FlowEulerSampler,
    Guidance,
    MUGVFlowScheduler,
    as_guidance,
    extension_conditioning,
    frame_conditioning,
    initial_noise,
    psnr,
)

__version__ = "0.1.0"

__all__ = [
    "ASPECT_RATIOS_720P",
    "DURATIONS",
    "ENHANCE_PROMPT",
    "NULL_TEXT_FILE",
    "OFFICIAL_NEGATIVE_PROMPT",
    "WAN_NEGATIVE_PROMPT",
    "BlockOffload",
    "CFGZeroStar",
    "ClassifierFreeGuidance",
    "ComponentOffload",
    "EnhancementOutput",
    "EnhancerQuirks",
    "FlowEulerSampler",
    "GenerationOutput",
    "Guidance",
    "MUGVEnhancer",
    "MUGVFlowScheduler",
    "MUGVLoraLoaderMixin",
    "MUGVPipeline",
    "OfficialQuirks",
    "ParallelGroups",
    "SequenceParallelDiT",
    "StepCache",
    "VideoFile",
    "__version__",
    "as_guidance",
    "cfg_parallel",
    "convert_megatron_lora",
    "enable_block_offload",
    "extension_conditioning",
    "frame_conditioning",
    "init_parallel",
    "initial_noise",
    "load_null_text",
    "pipeline_quantization_config",
    "preprocess_image",
    "psnr",
    "read_mp4",
    "resolve_num_frames",
    "resolve_size",
    "torchao_config",
    "ulysses_attention",
    "write_mp4",
]
