"""MistralForCausalLM and Qwen3ForCausalLM checkpoints, both ways, with transformers as the oracle: greedy ids equal
transformers' generate on every decode path (batch 1: the compiled GEMV, with the compiled whole step for Mistral
and declined for Qwen3's q/k norm; plain layers; a left-padded batch), the training loss (its last layer at trained
rows only), a Qwen3 sliding window on some layers (exact up to it, refused past it), the fields a config.json may
leave to the class's defaults (Qwen3's head_dim 128, Mistral's window 4096), the attention maps of `ocellus explain`,
a LLaVA whose text model is Qwen3, and what cannot be written as the model_type it names is refused. Logits and the save -> transformers round trip over
head_dim / GQA / tied variants: test_decoder_parity.py."""
import json
from dataclasses import replace

import pytest
import torch

import ocellus
from ocellus.errors import ConfigError, InputError
from ocellus.infer.fused_decode import FusedDecode, _why_not, attach_fused_decode
from ocellus.kernels import gemv as gemv_mod
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.viz.attention_map import AttentionRecorder
from _init import padded
from test_decoder_parity import build_reference
from test_llava_parity import _both_and_batch

REFS = {"qwen3": dict(head_dim=24, attention_bias=True, eos_token_id=None),          # 4 x 24 != 64, GQA 4/2
        "mistral": dict(head_dim=24, tie_word_embeddings=True, eos_token_id=None)}


@pytest.fixture(scope="module", params=list(REFS))
def pair(request, tmp_path_factory):
    ref = build_reference(request.param, **REFS[request.param])
    path = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(path)
    return request.param, ref, ocellus.load(path)


def _prompt(b=1, t=9, seed=1):
    return torch.randint(6, 97, (b, t), generator=torch.Generator().manual_seed(seed))


def test_greedy_ids_equal_transformers_on_every_decode_path(pair):
    """Batch 1 by default runs the compiled step where it can: Mistral's layers are the plain ones it computes,
    Qwen3's q/k norm is not, so Qwen3 decodes through its layers (GEMV linears); both give transformers' ids."""
    kind, ref, ours = pair
    ids = _prompt()
    want = ref.generate(ids, max_new_tokens=24, do_sample=False)
    assert torch.equal(ours.generate(ids, max_new_tokens=24), want)
    if gemv_mod.unavailable_reason() is None:
        assert isinstance(ours.fused_decode, FusedDecode) == (kind == "mistral")
    assert torch.equal(ours.generate(ids, max_new_tokens=24, prepack=False), want)      # plain layers
    batch, mask = padded([_prompt(1, 9, 2)[0].tolist(), _prompt(1, 5, 3)[0].tolist()])
    want = ref.generate(batch, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert torch.equal(ours.generate(batch, attention_mask=mask, max_new_tokens=12), want)


def test_the_compiled_step_declines_qk_norm():
    model = DecoderLM(DecoderConfig.from_hf({"model_type": "qwen3", "vocab_size": 11, "hidden_size": 16,
                                             "intermediate_size": 8, "num_hidden_layers": 1,
                                             "num_attention_heads": 2, "head_dim": 8})).eval()
    assert "q/k norm" in _why_not(model)
    assert attach_fused_decode(model) == 0 and model.fused_decode is None


def test_loss_equals_transformers(pair):
    """With labels the last layer runs at trained rows only (nn/attention.py's kept-row path)."""
    _, ref, ours = pair
    ids = _prompt(2, 30)
    labels = ids.clone()
    labels[:, :7] = -100
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, labels=labels).loss, ref(ids, labels=labels).loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("written", [True, False], ids=["layer_types", "max_window_layers"])
@pytest.mark.parametrize("first_windowed,window", [(1, 12), (2, None)])
def test_a_qwen3_window_on_the_upper_layers_is_exact_up_to_it(first_windowed, window, written, tmp_path):
    """use_sliding_window with max_window_layers=1 of 2: layer 1 slides over 12 keys. Up to 12 tokens that is full
    attention (equal logits), past them it is refused; with max_window_layers=2 no layer slides: no cap. The
    layers are read from config.json's layer_types, or (an older config without it) from max_window_layers."""
    import transformers
    ref = build_reference("qwen3", head_dim=24, use_sliding_window=True, sliding_window=12,
                          max_window_layers=first_windowed)
    ref.save_pretrained(tmp_path)
    if not written:
        cfg = json.loads((tmp_path / "config.json").read_text())
        cfg.pop("layer_types")
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        assert transformers.AutoConfig.from_pretrained(tmp_path).layer_types == ref.config.layer_types
    ours = ocellus.load(tmp_path)
    assert ours.config.sliding_window == window and ours.max_context == (window or 256)
    ids = _prompt(2, window or 40)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)
        if window is not None:
            with pytest.raises(InputError, match="sliding-window attention past 12 tokens"):
                ours(_prompt(1, 13))


@pytest.mark.parametrize("kind,key,default", [("qwen3", "head_dim", 128), ("mistral", "sliding_window", 4096)])
def test_a_field_left_out_reads_the_class_default(kind, key, default, tmp_path):
    """A hand-written config.json may leave a field to transformers' class default, which is not Llama's."""
    ref = build_reference(kind, max_position_embeddings=8192, eos_token_id=None)
    ref.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg.pop(key) == default
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours = ocellus.load(tmp_path)
    assert getattr(ours.config, key) == default
    ids = _prompt(1, 20)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)


def test_a_config_another_class_would_compute_differently_is_not_saved_as_it():
    cfg = DecoderConfig.from_hf({"model_type": "qwen3", "vocab_size": 11, "hidden_size": 16, "intermediate_size": 8,
                                 "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 8})
    assert cfg.qk_norm and cfg.to_hf()["architectures"] == ["Qwen3ForCausalLM"]
    with pytest.raises(ConfigError, match="model_type 'qwen3'"):
        replace(cfg, mlp_bias=True).to_hf()                   # Qwen3's MLP has no bias
    with pytest.raises(ConfigError, match="model_type 'llama'"):
        replace(cfg, hf={**cfg.hf, "model_type": "llama"}).to_hf()    # Llama has no q/k norm
    unnamed = replace(cfg, hf={}).to_hf()                      # no source config: the class its layout names
    assert unnamed["model_type"] == "qwen3" and unnamed["architectures"] == ["Qwen3ForCausalLM"]


def test_a_llava_with_a_qwen3_text_model_equals_transformers(tmp_path):
    ref, ours, ids, mask, pixels, pos = _both_and_batch(dict(vision="siglip", layer=-1, select="full", text="qwen3",
                                                             tie=True), tmp_path)
    assert ours.language_model.config.qk_norm
    with torch.no_grad():
        a = ref(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
        b = ours(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=1e-5, rtol=1e-5)


def test_attention_maps_equal_transformers_eager_attention(pair, tmp_path):
    """viz/attention_map.py recomputes each layer's softmax from q_proj / k_proj: with Qwen3's q/k norm too."""
    import transformers
    kind, ref, ours = pair
    ref.save_pretrained(tmp_path)
    eager = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, rows = _prompt(1, 12), [3, 11]
    with torch.no_grad(), AttentionRecorder(ours, rows) as rec:
        ours(ids)
        want = torch.stack(eager(ids, output_attentions=True).attentions)[:, :, :, rows]     # [L, B, H, Q, T]
    torch.testing.assert_close(rec.probabilities, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("extra,match", [({"layer_types": ["sliding_attention", "chunked_attention"]}, "layer_types"),
                                         ({"layer_types": ["sliding_attention"]}, "layer_types"),
                                         ({"max_window_layers": -1}, "max_window_layers")])
def test_a_bad_window_layout_is_named(extra, match):
    with pytest.raises(ConfigError, match=match):
        DecoderConfig.from_hf({"model_type": "qwen3", "vocab_size": 11, "hidden_size": 16, "intermediate_size": 8,
                               "num_hidden_layers": 2, "num_attention_heads": 2, "use_sliding_window": True, **extra})
