"""BLIP (ocellus/models/contrastive/blip.py): the encoder and decoder share every parameter but the
self-attention (the same tensors, in the model and after a checkpoint round trip), the decoder is
causal and the encoders bidirectional, ITC + ITM + LM each fall on shapes captions, and captions come
out of the generation engine (greedy = a hand-written argmax loop; beam and nucleus sampling)."""
import pytest
import torch

import ocellus
from ocellus.errors import InputError
from ocellus.models.contrastive.blip import build_blip

from test_albef import TEXT, losses_before_after, random_batch, shapes_tokenizer, tiny_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

BLIP_TEXT = {**TEXT, "num_hidden_layers": 2}


def blip_config(tok=None, **align):
    cfg = tiny_config(tok, **align)
    cfg["align_config"].pop("text_layers")
    return {**cfg, "text_config": BLIP_TEXT}


def tiny_blip(seed=0, tok=None):
    torch.manual_seed(seed)
    return build_blip(blip_config(tok)).eval()


def _ids(module):
    return {id(p) for p in module.parameters()}


def test_encoder_and_decoder_share_all_but_self_attention():
    model = tiny_blip()
    enc, dec = model.text_encoder, model.text_decoder
    assert dec.embeddings is enc.embeddings
    for le, ld in zip(enc.layers, dec.layers):
        assert ld.crossattention is le.crossattention and ld.ffn is le.ffn
        assert ld.attention is not le.attention and not (_ids(ld.attention) & _ids(le.attention))
    assert dec.mlm.decoder.weight is enc.embeddings.word_embeddings.weight
    # everything the decoder owns beyond the encoder: its self-attention layers and LM head transform
    own = _ids(dec) - _ids(enc)
    expected = set().union(*(_ids(ld.attention) for ld in dec.layers)) | _ids(dec.mlm) - _ids(enc)
    assert own == expected
    # a step on the LM loss alone moves the shared cross-attention the encoder uses
    px, ids, mask = random_batch()
    before = enc.layers[0].crossattention.query.weight.clone()
    model.train()
    model(px, ids, mask, objectives=("lm",)).loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(0.1 * p.grad)
    assert not torch.equal(enc.layers[0].crossattention.query.weight, before)
    assert enc.layers[0].attention.query.weight.grad is None     # the encoder's self-attention: not in LM


def test_decoder_is_causal_and_encoders_are_bidirectional():
    model = tiny_blip()
    px, ids, mask = random_batch()
    mask = torch.ones_like(mask)
    image = model.visual_encoder(px).last_hidden_state
    changed = ids.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 40 + 2
    dec_ids, dec_changed = ids.clone(), changed.clone()
    dec_ids[:, 0] = dec_changed[:, 0] = model.config.dec_token_id
    with torch.no_grad():
        a = model.decoder_logits(dec_ids, mask, image)
        b = model.decoder_logits(dec_changed, mask, image)
        torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=1e-6)      # the past does not see the future
        assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-4
        for states in (lambda x: model.text_states(x, mask), lambda x: model.grounded_states(x, mask, image)):
            assert (states(ids)[:, :4] - states(changed)[:, :4]).abs().max() > 1e-4   # bidirectional


def test_objectives_choose_the_losses():
    model = tiny_blip().train()
    px, ids, mask = random_batch()
    out = model(px, ids, mask, objectives=("lm",))
    assert out.loss_itc is None and out.loss_itm is None and out.loss_lm is not None
    assert int(model.queue.ptr) == 0                       # no ITC ran: the queue did not move
    out = model(px, ids, mask, objectives=("itc", "itm"))
    assert out.loss_lm is None
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itm)
    with pytest.raises(InputError, match="objectives"):
        model(px, ids, mask, objectives=("mlm",))


def test_save_load_keeps_the_sharing_and_writes_shared_tensors_once(tmp_path):
    from safetensors.torch import load_file
    model = tiny_blip()
    ocellus.save(model, tmp_path)
    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert "text_encoder.layers.0.ffn.intermediate.weight" in keys
    assert not any(k.startswith("text_decoder.embeddings") or ".ffn." in k and k.startswith("text_decoder")
                   for k in keys)
    assert "text_decoder.layers.0.attention.query.weight" in keys
    loaded = ocellus.load(tmp_path)
    assert loaded.text_decoder.layers[1].ffn is loaded.text_encoder.layers[1].ffn
    assert loaded.text_decoder.mlm.decoder.weight is loaded.text_encoder.embeddings.word_embeddings.weight
    px, ids, mask = random_batch()
    torch.testing.assert_close(loaded.itm_scores(px, ids, mask), model.itm_scores(px, ids, mask))
    assert torch.equal(loaded.generate(px[:2], max_new_tokens=6), model.generate(px[:2], max_new_tokens=6))


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_caption_equals_an_argmax_loop_and_beams_and_sampling_work(seed):
    model = tiny_blip(seed)
    px = random_batch(B=3, seed=seed)[0]
    out = model.generate(px, max_new_tokens=6, eos_token_id=-1)  # no early end: compare every step
    image = model.visual_encoder(px).last_hidden_state
    ids = torch.full((3, 1), model.config.dec_token_id)
    for _ in range(6):
        with torch.no_grad():
            nxt = model.decoder_logits(ids, None, image)[:, -1].argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], 1)
    assert torch.equal(out, ids)
    assert torch.equal(model.generate(px, max_new_tokens=6, eos_token_id=-1, num_beams=1), ids)
    beams = model.generate(px, max_new_tokens=6, num_beams=3)
    assert beams.shape[0] == 3 and bool((beams[:, 0] == model.config.dec_token_id).all())
    a = model.generate(px, max_new_tokens=6, do_sample=True, top_p=0.9, seed=5)
    assert torch.equal(a, model.generate(px, max_new_tokens=6, do_sample=True, top_p=0.9, seed=5))
    tiny_p = model.generate(px, max_new_tokens=6, do_sample=True, top_p=1e-6, seed=5, eos_token_id=-1)
    assert torch.equal(tiny_p, ids)                        # nucleus of one token = greedy


def test_three_losses_fall_on_shapes_captions():
    tok = shapes_tokenizer()
    torch.manual_seed(0)
    cfg = blip_config(tok)
    before, after = losses_before_after(build_blip(cfg), tok, cfg, keys=("loss_itc", "loss_itm", "loss_lm"))
    for k in before:
        assert after[k] < before[k], (k, before[k], after[k])


# ---- decoding strategies on captions (ocellus/eval/decoding.py) ------------------------------------
def test_diversity_metrics():
    from ocellus.eval.decoding import distinct_n, self_bleu
    assert distinct_n(["a red circle", "a red star"], 1) == 4 / 6
    assert distinct_n(["a red circle", "a red star"], 2) == 3 / 4
    assert self_bleu(["a red circle and a blue star"] * 3) == pytest.approx(1.0)
    assert self_bleu(["a red circle and a blue star", "two green crosses on the left side"]) < 0.01
    with pytest.raises(InputError):
        self_bleu(["one"])


def test_decoding_comparison_runs_on_a_checkpoint(tmp_path):
    from ocellus.eval.decoding import compare, table
    tok = shapes_tokenizer()
    model = tiny_blip(tok=tok)
    ocellus.save(model, tmp_path, tokenizer=tok)
    from ocellus.train.contrastive_run import write_preprocessor
    write_preprocessor(tmp_path, 16)
    results = compare(tmp_path, n=6, max_new_tokens=5)
    assert set(results) == {"greedy", "beam", "nucleus"}
    for r in results.values():
        assert 0 <= r["BLEU-4"] <= 1 and 0 < r["distinct-1"] <= 1
    assert table(results).count("\n") == 4


def test_blip_recipe_trains_exports_and_evaluates(tmp_path, capsys):
    from test_albef import run_tiny_recipe
    from ocellus.cli import main as cli_main
    model = run_tiny_recipe("blip_tiny_shapes/pretrain.yaml", tmp_path)
    assert type(model).__name__ == "BLIP" and model.text_decoder.layers[0].ffn is model.text_encoder.layers[0].ffn
    capsys.readouterr()
    model_dir = str(tmp_path / "run" / "model")
    assert cli_main(["eval", "--model", model_dir, "--task", "retrieval", "--n", "16"]) in (0, None)
    assert "t2i_R@1=" in capsys.readouterr().out
