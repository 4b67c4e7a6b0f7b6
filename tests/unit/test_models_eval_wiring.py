"""Blind spots the mutation record (scripts/mutations/models_eval.toml) found in model and eval modules: each
test checks one property only the right wiring has (MoCo's per-row normalisation, ALBEF's temperature clamp,
BLIP's hard-negative similarities, InternVL's config defaults, the linear probe's train statistics, the box
parser, VQA punctuation, table widths, CapFilt's length check and noise rate, rollout positions)."""
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.usefixtures("one_thread")


def test_moco_embeddings_are_unit_rows():
    """MoCo's q and k are normalised per sample (dim 1), not over the batch: every row has norm 1."""
    from test_moco import tiny_moco, views
    model = tiny_moco().eval()
    x, x_k = views(n=5)
    with torch.no_grad():
        out = model(x, x_k)
        head = model.encoder_q.head(model.encoder_q.backbone(x).pooler_output)
    torch.testing.assert_close(out.q.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(out.k.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(out.q, head / head.norm(dim=1, keepdim=True))


def test_albef_forward_clamps_the_temperature_into_its_range():
    """ALBEF clamps its learned ITC temperature to [0.001, 0.5] before each forward (as the paper's code)."""
    from test_albef import random_batch, tiny_config
    from ocellus.models.contrastive.albef import build_albef
    torch.manual_seed(0)
    model = build_albef(tiny_config()).eval()
    px, ids, mask = random_batch(B=4)
    for start, expect in ((3.0, 0.5), (1e-5, 0.001)):
        with torch.no_grad():
            model.temp.fill_(start)
            model(px, ids, mask, generator=torch.Generator().manual_seed(0))
        assert model.temp.item() == pytest.approx(expect)


def test_blip_hard_negatives_read_i2t_then_t2i(monkeypatch):
    """BLIP's ITM draws hard negatives from sim_i2t (negative texts per image) and sim_t2i (negative images
    per text), in that order: the spy sees the batch columns of exactly what momentum ITC returned."""
    import ocellus.models.contrastive.blip as blip_mod
    from test_albef import random_batch
    from test_blip import tiny_blip
    model = tiny_blip()
    px, ids, mask = random_batch(B=4)
    got, seen = {}, {}
    real_itc, real_neg = model.momentum_itc, blip_mod.hard_negatives

    def itc(*a, **k):
        got["out"] = real_itc(*a, **k)
        return got["out"]

    def neg(sim_i2t, sim_t2i, ids=None, generator=None):
        seen["args"] = (sim_i2t, sim_t2i)
        return real_neg(sim_i2t, sim_t2i, ids, generator)
    monkeypatch.setattr(model, "momentum_itc", itc)
    monkeypatch.setattr(blip_mod, "hard_negatives", neg)
    with torch.no_grad():
        model(px, ids, mask, objectives=("itc", "itm"), generator=torch.Generator().manual_seed(0))
    _, sim_i2t, sim_t2i, _, _ = got["out"]
    assert not torch.allclose(sim_i2t[:, :4], sim_t2i[:, :4])
    torch.testing.assert_close(seen["args"][0], sim_i2t[:, :4])
    torch.testing.assert_close(seen["args"][1], sim_t2i[:, :4])


def test_internvl_config_without_feature_keys_takes_transformers_defaults():
    """A config.json that leaves out vision_feature_layer / vision_feature_select_strategy gets transformers'
    InternVLConfig defaults (-1, "default"), not LLaVA's -2."""
    import transformers as tf
    from ocellus.models.families.internvl.modeling import build_internvl
    vc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
              patch_size=7)
    tc = dict(model_type="qwen2", vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
              num_attention_heads=4, num_key_value_heads=2)
    cfg = tf.InternVLConfig(vision_config=vc, text_config=tc, image_token_id=120).to_dict()
    ref = tf.InternVLConfig()
    for key in ("vision_feature_layer", "vision_feature_select_strategy"):
        cfg.pop(key)
    model = build_internvl(cfg)
    assert (model.feature_layer, model.feature_select) == (ref.vision_feature_layer,
                                                           ref.vision_feature_select_strategy)


def test_linear_probe_standardises_test_features_with_train_statistics():
    """Test features are standardised with the TRAIN mean/std: a test set of one class only stays on its
    side of the boundary (its own statistics would centre it on the boundary, ~50% right)."""
    from ocellus.eval.retrieval import linear_probe
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = (2.0 * y - 1)[:, None] + 0.3 * torch.randn(200, 1, generator=g)          # class 0 at -1, class 1 at +1
    test_x = 1.0 + 0.3 * torch.randn(100, 1, generator=g)                         # class 1 only
    assert linear_probe(x, y, test_x, torch.ones(100, dtype=torch.long)) > 0.95


def test_box_with_inverted_y_range_is_malformed():
    """(x1, y1), (x2, y2) with y2 < y1 is not top-left / bottom-right: the box is None with a reason."""
    from ocellus.eval.grounding import parse_boxes
    (p,) = parse_boxes("<box>(10,300),(20,200)</box>")
    assert p.box is None and "top-left" in p.reason


def test_vqa_punctuation_decision_reads_the_original_answer():
    """vqaEval's processPunctuation decides delete-or-space from the ORIGINAL answer: ")" becoming a space
    must not turn the later "-" into a deletion ("t-shirt)-like" -> "t shirt like")."""
    from ocellus.eval.vqa import normalize_vqa_answer
    assert normalize_vqa_answer("t-shirt)-like") == "t shirt like"


def test_format_table_widths_include_the_all_row():
    """The 'all' row can be the widest (its n sums the others): every line still has one width."""
    from ocellus.eval.metrics import format_table
    table = format_table({"a": (7, 0.5), "b": (8, 1.0), "all": (15, 0.75)}, score_name="s")
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert len({line.index("|") for line in lines if "|" in line}) == 1


def test_capfilt_filter_rejects_a_caption_one_token_too_long_without_raising():
    """[CLS] + caption + [SEP] must fit the text positions: a caption of exactly max_position_embeddings - 1
    tokens does not, and itm_filter gives it None (it would otherwise reach encode_captions and raise)."""
    from ocellus.data.shapes import render
    from ocellus.train.capfilt import itm_filter, scenes
    from test_albef import shapes_tokenizer
    from test_blip import tiny_blip
    tok = shapes_tokenizer()
    model = tiny_blip(tok=tok)
    limit = model.text_encoder.config.max_position_embeddings
    words, text = "a red circle above a blue square".split(), ""
    i = 0
    while len(tok.encode(text, add_special_tokens=False)) < limit - 1:
        text = (text + " " + words[i % len(words)]).strip()
        i += 1
    n = len(tok.encode(text, add_special_tokens=False))
    assert n in (limit - 1, limit)
    images = [render(s) for s in scenes({"image_size": 32}, 0, 2)]
    scores = itm_filter(model, tok, images, ["A red circle.", text], batch_size=2)
    assert 0.0 < scores[0] < 1.0 and scores[1] is None


def test_rollout_positions_are_the_generation_engines():
    """join's position_ids are the generation engine's (cumsum(mask) - 1, pads at 1), so a completion is
    scored at the positions it was sampled at. Under plain RoPE a shift by one changes no score, but Qwen2-VL
    accepts a [B, T] position_ids only when it is exactly these plain positions."""
    from ocellus.infer.generate import left_padded_positions
    from ocellus.train.rollout import join
    prompt = {"input_ids": torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]]),
              "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])}
    batch = join(prompt, [[8, 9], [8, 9, 10]], pad_id=0)
    assert batch["position_ids"][0, 2:7].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(batch["position_ids"], left_padded_positions(batch["attention_mask"]))
