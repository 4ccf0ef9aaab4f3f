"""Pluggable model stages with tiny randomly initialised models built here."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest
import torch

from mugv_data import CurationConfig, curate
from mugv_data.stages.aesthetic import AestheticPredictor


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_clip")
    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=16,
    )  # fmt: skip
    CLIPVisionModelWithProjection(cfg).save_pretrained(d / "clip")
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(d / "clip")
    dims = [16, 1024, 128, 64, 16, 1]
    state = {}
    for idx, (i, o) in zip((0, 2, 4, 6, 7), itertools.pairwise(dims)):
        state[f"layers.{idx}.weight"] = torch.randn(o, i) / i**0.5
        state[f"layers.{idx}.bias"] = torch.randn(o) * 0.1
    state["layers.7.bias"] = torch.tensor([5.0])  # scores land around 5, like LAION's
    save_file(state, d / "head.safetensors")
    return d / "clip", d / "head.safetensors", state


def test_aesthetic_score_matches_manual_computation(tiny_clip, synthetic_set):
    from transformers import CLIPVisionModelWithProjection

    clip_dir, head_path, state = tiny_clip
    pred = AestheticPredictor(str(clip_dir), str(head_path))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    px = pred.processor(images=frames, return_tensors="pt")["pixel_values"]
    model = CLIPVisionModelWithProjection.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        e = model(pixel_values=px).image_embeds
    x = e / e.norm(dim=-1, keepdim=True)
    for idx in (0, 2, 4, 6, 7):  # dropout is identity at inference
        x = x @ state[f"layers.{idx}.weight"].T + state[f"layers.{idx}.bias"]
    assert pred(frames) == pytest.approx(float(x.mean()), rel=1e-5, abs=1e-5)


def test_aesthetic_stage_drops_below_threshold(tiny_clip, synthetic_set, tmp_path):
    clip_dir, head_path, _ = tiny_clip
    _root, truth = synthetic_set
    src = tmp_path / "in"
    src.mkdir()
    for name in ("good_00", "good_01", "good_02"):
        shutil.copyfile(truth[name].path, src / truth[name].path.name)
    base = CurationConfig.preset("synthetic")
    on = {"enabled": True, "clip_model": str(clip_dir), "head_weights": str(head_path)}
    scored = curate(
        src,
        tmp_path / "a",
        CurationConfig.from_dict({"default": {"aesthetic": {**on, "min": -1e9}}}, base=base),
    )
    scores = sorted(r["aesthetic"] for r in scored.table().to_pylist())
    assert len(scores) == 3 and all(r["status"] == "kept" for r in scored.table().to_pylist())
    cut = (scores[0] + scores[1]) / 2  # between the lowest and the middle score
    res = curate(
        src,
        tmp_path / "b",
        CurationConfig.from_dict({"default": {"aesthetic": {**on, "min": cut}}}, base=base),
    )
    rows = res.table().to_pylist()
    dropped = [r for r in rows if r["status"] == "dropped"]
    assert len(dropped) == 1 and dropped[0]["stage"] == "aesthetic"
    assert dropped[0]["aesthetic"] == pytest.approx(scores[0])
    assert "below" in dropped[0]["reason"]


def _word_tokenizer(special: list[str], **kwargs):
    """A word-level fast tokenizer over a few words; token 0 is "yes"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [
        "yes",
        "no",
        "a",
        "the",
        "video",
        "clip",
        "describe",
        "this",
        "does",
        "?",
        ".",
        "user",
        "assistant",
        ":",
    ]
    vocab = {w: i for i, w in enumerate(words)} | {"[UNK]": len(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", additional_special_tokens=special, **kwargs
    )


def _tiny_llava():
    """A tiny LLaVA (CLIP vision tower + Llama text model) with a word-level tokenizer."""
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    fast = _word_tokenizer(["<image>"], bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    template = (
        "{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %} "
        "{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}"
    )
    proc = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=fast, chat_template=template, patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )  # fmt: skip
    cfg = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=32, intermediate_size=37, num_hidden_layers=1,
            num_attention_heads=2, image_size=28, patch_size=14, projection_dim=16,
        ),
        text_config=dict(
            model_type="llama", vocab_size=len(fast), hidden_size=32, intermediate_size=64,
            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        ),
        image_token_index=fast.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default", pad_token_id=fast.pad_token_id,
    )  # fmt: skip
    return LlavaForConditionalGeneration(cfg), proc


def _tiny_qwen2_vl():
    """A tiny Qwen2-VL (1-block vision tower, 1-layer Qwen2 text model with M-RoPE).

    Images are resized to 56x56: 4x4 patches of 14 px, merged 2x2 into 4 image tokens.
    """
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    special = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    fast = _word_tokenizer(special, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    template = (
        "{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %} "
        "{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}"
    )
    pix = dict(
        min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    proc = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pix), tokenizer=fast,
        video_processor=Qwen2VLVideoProcessor(**pix), chat_template=template,
    )  # fmt: skip
    ids = fast.convert_tokens_to_ids
    cfg = Qwen2VLConfig(
        vision_config=dict(
            depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
        ),
        text_config=dict(
            vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            bos_token_id=None, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        ),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )  # fmt: skip
    return Qwen2VLForConditionalGeneration(cfg), proc


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def tiny_vlm(request, tmp_path_factory):
    """A tiny randomly initialised VLM saved with its processor, built offline.

    Both run the same AutoProcessor / AutoModelForImageTextToText path. The final norm is
    zeroed so every logit is 0 and greedy decoding always emits token 0, "yes": a model
    whose answer is known.
    """
    torch.manual_seed(0)
    model, proc = {"llava": _tiny_llava, "qwen2_vl": _tiny_qwen2_vl}[request.param]()
    model.eval()
    with torch.no_grad():
        model.model.language_model.norm.weight.zero_()
    d = tmp_path_factory.mktemp(f"tiny_{request.param}")
    model.save_pretrained(d)
    proc.save_pretrained(d)
    return d


def test_vlm_stage_answers_and_prompts(tiny_vlm):
    from mugv_data.stages.vlm import VLMStage

    vlm = VLMStage.from_pretrained(
        str(tiny_vlm), max_new_tokens=3, caption_prompt="describe this clip ."
    )
    frames = [np.full((48, 64, 3), 100 + 20 * i, np.uint8) for i in range(2)]
    assert vlm.caption(frames) == "yes yes yes"
    flagged, answer = vlm.has_artifacts(frames)
    assert flagged and answer.startswith("yes")
    # The chat turn carries one image placeholder per frame and the prompt.
    seen = {}

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, **kwargs):
            seen.update(kwargs)
            seen["out"] = self.inner(**kwargs)
            return seen["out"]

        def __getattr__(self, name):
            return getattr(self.inner, name)

    vlm.processor = Spy(vlm.processor)
    vlm.caption(frames)
    assert len(seen["images"]) == 2 and "describe this clip ." in seen["text"][0]
    # Each frame expands to 4 image tokens in both tiny models (2x2 patches, or 4x4 merged 2x2).
    image_id = vlm.processor.tokenizer.convert_tokens_to_ids(vlm.processor.image_token)
    assert int((seen["out"]["input_ids"] == image_id).sum()) == 2 * 4


def test_vlm_stages_in_the_pipeline(tiny_vlm, synthetic_set, tmp_path):
    _root, truth = synthetic_set
    src = tmp_path / "in"
    src.mkdir()
    shutil.copyfile(truth["good_00"].path, src / "with_caption.mp4")
    (src / "with_caption.txt").write_text("a red circle\n")
    shutil.copyfile(truth["good_01"].path, src / "no_caption.mp4")
    base = CurationConfig.preset("synthetic")
    caps = {"model": str(tiny_vlm), "max_new_tokens": 2, "num_frames": 2}
    res = curate(
        src, tmp_path / "cap", CurationConfig.from_dict({"default": {"captions": caps}}, base=base)
    )
    rows = {r["video_key"].split("-")[0]: r for r in res.table().to_pylist()}
    assert rows["with_caption"]["caption"] == "a red circle"  # side-car captions win
    assert rows["no_caption"]["caption"] == "yes yes"
    flt = {**caps, "caption": False, "artifact_filter": True}
    res = curate(
        src, tmp_path / "flt", CurationConfig.from_dict({"default": {"captions": flt}}, base=base)
    )
    rows = res.table().to_pylist()
    assert all(r["stage"] == "artifact" and r["artifact"] == "yes yes" for r in rows)


def test_aesthetic_head_from_the_hub_cache(tiny_clip, tmp_path):
    from mugv_data.stages.aesthetic import load_head
    from mugv_testing import build_hf_cache, offline_hf_cache

    _, head_path, state = tiny_clip
    build_hf_cache(tmp_path / "hub", "laion/aesthetic-head", {"heads/head.safetensors": head_path})
    with offline_hf_cache(tmp_path / "hub"):
        head = load_head("hf://laion/aesthetic-head/heads/head.safetensors")
    for k, v in state.items():
        assert torch.equal(head.state_dict()[k], v)
    with pytest.raises(ValueError, match="hf://org/repo/file"):
        load_head("hf://laion/aesthetic-head")
