"""Attention maps over image patches (ocellus/viz/attention_map.py):
- a decoder crafted so every layer and head attends to one image patch gives a map peaking at it, and
  the upsampled heat peaks over that patch's pixels in the ORIGINAL image (crop mapped back);
- on a random tiny LLaVA the map equals the one computed from transformers' eager attention
  probabilities (output_attentions=True), the independent manual computation;
- `ocellus explain` writes a PNG of the image's size;
- the processor's stop strings end the answer (and its map) as they end `ocellus generate`'s;
- a model whose image tokens are learned queries (MiniGPT-4's Q-Former) is refused, saying so.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import ocellus
from ocellus.cli import main
from ocellus.errors import ConfigError
from ocellus.viz.attention_map import AttentionRecorder, answer_attention, explain, heat_image, view_box

transformers = pytest.importorskip("transformers")

SPECIALS = ["<pad>", "<s>", "</s>", "<image>"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'].upper() + ': ' }}"
            "{% for p in m['content'] %}{% if p['type'] == 'image' %}{{ '<image>\n' }}{% else %}{{ p['text'] }}"
            "{% endif %}{% endfor %}{{ '\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
QUESTION = "What is in the picture?"
GRID = 4  # 32px image, 8px patches


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny LLaVA (CLIP tower, 'full' strategy: CLS + 16 patches) saved by transformers, with a
    BPE tokenizer and a CLIP preprocessor_config.json."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    path = tmp_path_factory.mktemp("llava")
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([QUESTION + " A red circle left of a blue square."] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    raw.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(dict(
        tokenizer_class="PreTrainedTokenizerFast", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        image_token="<image>", chat_template=TEMPLATE)))
    (path / "preprocessor_config.json").write_text(json.dumps(dict(
        image_processor_type="CLIPImageProcessor", size={"shortest_edge": 32}, do_center_crop=True,
        crop_size={"height": 32, "width": 32}, resample=3)))
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=32, patch_size=8)
    text = dict(model_type="llama", vocab_size=raw.get_vocab_size(), hidden_size=48, intermediate_size=96,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                pad_token_id=0, eos_token_id=None)
    cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=raw.token_to_id("<image>"),
                                   vision_feature_layer=-2, vision_feature_select_strategy="full")
    torch.manual_seed(0)
    transformers.LlavaForConditionalGeneration(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)  # H 40, W 50: cropped sides
    return path


def _craft_peak(model, target: int):
    """Every layer/head attends to image patch `target`: the residual stream stays the embeddings
    (o_proj, down_proj zeroed), text tokens carry a constant on channel 1 that the queries read, the
    target patch alone carries channel 0 that the keys read. RoPE's slowest pair carries q and k, so
    the rotation barely changes the score over this short context."""
    lm = model.language_model
    D, Dh = lm.config.hidden_size, lm.config.head_dim
    j = Dh // 2 - 1  # slowest-rotating RoPE pair (j, j + Dh/2)
    with torch.no_grad():
        lm.embed_tokens.weight[:, 0] = 0
        lm.embed_tokens.weight[:, 1] = 3
        for layer in lm.layers:
            attn = layer.self_attn
            attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
            attn.q_proj.weight.zero_()
            attn.k_proj.weight.zero_()
            for h in range(attn.num_heads):
                attn.q_proj.weight[h * Dh + j, 1] = 3.0
            for g in range(attn.num_kv_heads):
                attn.k_proj.weight[g * Dh + j, 0] = 3.0
    feats = torch.randn(1, 1 + GRID * GRID, D, generator=torch.Generator().manual_seed(1))
    feats[..., :2] = 0
    feats[0, 1 + target, 0] = 10.0  # index 0 is the CLS token ("full" strategy)
    return feats


def test_crafted_attention_peaks_at_the_patch(tiny, photo, monkeypatch, tmp_path):
    model, proc = ocellus.load(tiny), ocellus.load_processor(tiny)
    target = 6  # row 1, col 2
    feats = _craft_peak(model, target)
    monkeypatch.setattr(model, "image_features", lambda pixel_values: feats)
    result = explain(model, proc, photo, QUESTION, out=tmp_path / "heat.png", max_new_tokens=3)
    assert result.grid.shape == (GRID, GRID) and result.peak == (1, 2)
    assert result.layer_head.shape == (2, 4, GRID, GRID)
    assert result.grid[1, 2] > 0.9  # nearly all attention mass of every head lands on it
    # 50x40 image -> shortest edge 32 -> 40x32 -> center crop 32: the model saw x in [5, 45) of the original
    assert view_box((50, 40), proc.image_config) == pytest.approx((5.0, 0.0, 45.0, 40.0))
    heat, seen = heat_image(result.grid, (50, 40), result.view_box)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 25 <= x < 35 and 10 <= y < 20  # patch (1, 2) spans x 5+16*1.25..5+24*1.25, y 10..20
    assert not seen[:, :5].any() and seen[:, 5:45].all()
    with Image.open(tmp_path / "heat.png") as png:
        assert png.size == (50, 40) and png.mode == "RGB"


def test_map_equals_transformers_eager_attention(tiny, photo):
    model, proc = ocellus.load(tiny), ocellus.load_processor(tiny)
    result = answer_attention(model, proc, photo, QUESTION, max_new_tokens=4)
    assert len(result.answer_ids) == 4

    batch = proc(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
                 images=[photo])
    prompt = batch["input_ids"][0].tolist()
    seq = torch.tensor([prompt + result.answer_ids[:-1]])
    ref = transformers.LlavaForConditionalGeneration.from_pretrained(tiny, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = ref(input_ids=seq, pixel_values=batch["pixel_values"], output_attentions=True).attentions
    probs = torch.stack(attentions)[:, 0]                                      # [L, H, T, T]
    rows = list(range(len(prompt) - 1, len(prompt) - 1 + 4))                  # positions that chose the answer
    image_cols = [i for i, t in enumerate(prompt) if t == model.image_token_id][1:]  # CLS dropped
    expected = probs[:, :, rows][..., image_cols].mean(dim=2).reshape(2, 4, GRID, GRID)
    np.testing.assert_allclose(result.layer_head, expected.numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(result.grid, expected.mean(dim=(0, 1)).numpy(), atol=1e-6, rtol=1e-4)


def test_recorder_leaves_the_model_unchanged(tiny):
    model = ocellus.load(tiny)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    before = model.language_model(input_ids=ids).logits
    with AttentionRecorder(model.language_model, [5]) as rec:
        during = model.language_model(input_ids=ids).logits
    assert torch.equal(before, during) and rec.probabilities.shape == (2, 1, 4, 1, 6)
    torch.testing.assert_close(rec.probabilities.sum(-1), torch.ones(2, 1, 4, 1))
    assert all(not m._forward_pre_hooks for m in rec.modules)  # hooks removed on exit


def test_cli_explain_writes_png(tiny, photo, tmp_path, capsys):
    out = tmp_path / "heat.png"
    assert main(["explain", "--model", str(tiny), "--image", str(photo), "--out", str(out),
                 "--max-new-tokens", "3", QUESTION]) == 0
    assert "patch grid" in capsys.readouterr().err
    with Image.open(out) as png:
        assert png.size == (50, 40)
    assert main(["explain", "--model", str(tiny), "--image", str(tmp_path / "absent.png"), "--out",
                 str(tmp_path / "x.png"), QUESTION]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_processors_stop_strings_end_the_answer(tiny, photo, monkeypatch, capsys, tmp_path):
    """The tiny model answers "\\n��W3�" (6 tokens; "W" and "3" one token each): with "W3" as the processor's stop
    string (MiniGPT-4's "###" is one) the answer, its ids and its map are those of the 3 tokens before it, in the
    library, `ocellus explain` and the server (which calls answer_attention)."""
    model, proc = ocellus.load(tiny), ocellus.load_processor(tiny)
    free = answer_attention(model, proc, photo, QUESTION, max_new_tokens=6)
    assert [proc.decode([i]) for i in free.answer_ids[3:5]] == ["W", "3"]
    short = answer_attention(model, proc, photo, QUESTION, max_new_tokens=3)   # what the stop should leave
    monkeypatch.setattr(proc, "stop_strings", ("W3",))
    cut = answer_attention(model, proc, photo, QUESTION, max_new_tokens=6)
    assert cut.answer_ids == free.answer_ids[:3] and cut.answer == short.answer and "W" not in cut.answer
    np.testing.assert_array_equal(cut.layer_head, short.layer_head)
    monkeypatch.setattr(ocellus, "load_processor", lambda path: proc)
    assert main(["explain", "--model", str(tiny), "--image", str(photo), "--out", str(tmp_path / "heat.png"),
                 "--max-new-tokens", "6", QUESTION]) == 0
    assert capsys.readouterr().out == short.answer + "\n"
    monkeypatch.setattr(proc, "stop_strings", (proc.decode(free.answer_ids[:1]),))   # the answer's first token
    empty = answer_attention(model, proc, photo, QUESTION, max_new_tokens=6)
    assert empty.answer == "" and empty.answer_ids == free.answer_ids[:1]     # the map: the row that chose to stop


def test_query_token_models_are_refused_naming_the_queries(tiny, photo):
    """MiniGPT-4 (BLIP-2's Q-Former) puts learned queries where the image goes, not patches: no grid to map onto,
    even when their number fits one (17 queries, as many as this processor's CLS + 4x4 placeholders: without the
    refusal a map comes out, meaningless)."""
    from torch import nn

    from ocellus.models.connectors.qformer import QFormer, QFormerConfig
    from ocellus.models.families.blip2.modeling import Blip2
    llava, proc = ocellus.load(tiny), ocellus.load_processor(tiny)
    qformer = QFormer(QFormerConfig(vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, num_query_tokens=GRID * GRID + 1, encoder_hidden_size=32))
    minigpt4 = Blip2(llava.vision_tower, qformer, nn.Linear(16, 48), llava.language_model, llava.image_token_id,
                     qformer_part="vision")
    with pytest.raises(ConfigError, match="QFormer turns the patches into learned queries") as e:
        answer_attention(minigpt4, proc, photo, QUESTION, max_new_tokens=2)
    assert "CLS" not in str(e.value)
