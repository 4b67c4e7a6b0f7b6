"""ALBEF (ocellus/models/contrastive/albef.py) and the momentum machinery it shares with BLIP
(momentum.py): the EMA formula, the FIFO queue, hard negatives never positive, momentum distillation
equal to its formula (alpha = 0: the plain loss), MLM only on masked positions, checkpoints, and a
few steps on shapes captions making each loss fall. No reference implementation is importable
(ALBEF is not in transformers), so these test the math the paper states."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ocellus
from ocellus.errors import ConfigError, InputError
from ocellus.models.contrastive.albef import AlignConfig, build_albef, distilled_mlm_loss, encode_captions, mask_for_mlm
from ocellus.models.contrastive.losses import hard_negatives, queue_itc
from ocellus.models.contrastive.momentum import NO_ID, FeatureQueue, distill_alpha, momentum_copy, momentum_update

pytestmark = pytest.mark.usefixtures("one_thread")

VISION = dict(image_size=16, patch_size=4, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4)
TEXT = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
            max_position_embeddings=24)


def shapes_tokenizer():
    from ocellus.data.bpe import train_bpe
    from ocellus.train.contrastive_run import shapes_pairs
    pair = shapes_pairs({"image_size": 32}, 5, 200)
    return train_bpe([pair(i)[1] for i in range(200)], 300, eos_token="<|endoftext|>")


def tiny_config(tok=None, **align) -> dict:
    size, eos, pad = (len(tok), tok.eos_token_id, tok.eos_token_id) if tok is not None else (40, 1, 0)
    return {"vision_config": VISION, "text_config": TEXT,
            "align_config": dict(tokenizer_size=size, eos_token_id=eos, pad_token_id=pad, embed_dim=16, queue_size=64,
                                 text_layers=2, alpha_warmup_steps=4, **align)}


def random_batch(B=8, T=7, vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (B, T), generator=g)
    ids[:, 0], ids[:, -1] = vocab, 1                       # [CLS] ... [SEP]
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0                                       # one padded row
    return torch.randn(B, 3, 16, 16, generator=g), ids, mask


# ---- momentum encoders and queues --------------------------------------------------------------
def test_momentum_update_is_the_ema_formula():
    torch.manual_seed(0)
    online = nn.Linear(4, 3)
    twin = momentum_copy(online)
    assert all(not p.requires_grad for p in twin.parameters())
    assert all(torch.equal(a, b) for a, b in zip(online.parameters(), twin.parameters()))
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in twin.parameters()]
    momentum_update([(online, twin)], 0.9)
    for pm, pm0, p in zip(twin.parameters(), before, online.parameters()):
        torch.testing.assert_close(pm, 0.9 * pm0 + 0.1 * p, rtol=0, atol=1e-7)
    momentum_update([(online, twin)], 0.0)                  # m = 0: a copy
    assert all(torch.equal(a, b) for a, b in zip(online.parameters(), twin.parameters()))
    with pytest.raises(ConfigError, match="momentum"):
        momentum_update([(online, twin)], 1.5)


def test_queue_is_fifo_with_ids_and_only_written_slots_count():
    q = FeatureQueue(dim=2, size=6)
    assert [t.shape[-1] for t in q.entries()] == [0, 0, 0]
    batches = [torch.full((2, 2), float(k)) for k in range(1, 5)]
    for k, feats in enumerate(batches, start=1):
        q.enqueue(feats, -feats, torch.tensor([10 * k, 10 * k + 1]))
        assert int(q.filled) == min(6, 2 * k)
    # 4 batches of 2 into 6 slots: batch 4 overwrote batch 1 (slots 0-1), batches 2-3 remain
    image, text, ids = q.entries()
    assert image[0].tolist() == [4, 4, 2, 2, 3, 3] and text[0].tolist() == [-4, -4, -2, -2, -3, -3]
    assert ids.tolist() == [40, 41, 20, 21, 30, 31]
    assert int(q.ptr) == 2
    with pytest.raises(ConfigError, match="multiple of the global batch"):
        q.enqueue(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))


def test_alpha_ramps_up_linearly():
    assert [distill_alpha(0.4, s, 4) for s in (0, 2, 4, 9)] == [0.0, 0.2, 0.4, 0.4]
    assert distill_alpha(0.4, 0, 0) == 0.4


# ---- ITC with queues and distillation -------------------------------------------------------------
def _feats(n, e, seed):
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(n, e, generator=g), dim=-1) for _ in range(4)]


def test_queue_itc_alpha_zero_is_plain_infonce_over_batch_and_queue():
    img, txt, img_m, txt_m = _feats(4, 8, 0)
    q = FeatureQueue(8, 6)
    temp = torch.tensor(0.1)
    target = torch.arange(4)
    loss, _, _ = queue_itc(img, txt, img_m, txt_m, q, temp, alpha=0.0)         # empty queue: in-batch ITC
    torch.testing.assert_close(loss, (F.cross_entropy(img @ txt_m.t() / temp, target) +
                                      F.cross_entropy(txt @ img_m.t() / temp, target)) / 2)
    extra = _feats(2, 8, 5)
    q.enqueue(extra[0], extra[1], torch.tensor([NO_ID, NO_ID]))
    loss, sim_i2t, sim_t2i = queue_itc(img, txt, img_m, txt_m, q, temp, alpha=0.0)
    logits_i2t = img @ torch.cat([txt_m, extra[1]]).t() / temp                  # [4, 4 + 2]
    logits_t2i = txt @ torch.cat([img_m, extra[0]]).t() / temp
    expected = (F.cross_entropy(logits_i2t, target) + F.cross_entropy(logits_t2i, target)) / 2
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(sim_i2t, logits_i2t)
    with pytest.raises(InputError, match="at least one negative"):
        queue_itc(img[:1], txt[:1], img_m[:1], txt_m[:1], FeatureQueue(8, 4), temp, 0.0)


def test_queue_itc_distillation_equals_its_formula_and_ids_make_duplicates_positive():
    img, txt, img_m, txt_m = _feats(4, 8, 1)
    q = FeatureQueue(8, 4)
    q.enqueue(txt_m.flip(0), img_m.flip(0), torch.tensor([7, 8, 9, 3]))        # queue slot 3 holds id 3
    temp, alpha = torch.tensor(0.2), 0.4
    ids = torch.tensor([3, 5, 3, 6])                                           # pairs 0 and 2 share a caption
    loss, _, _ = queue_itc(img, txt, img_m, txt_m, q, temp, alpha, ids)
    _, _, queue_ids = q.entries()
    ids_all = torch.cat([ids, queue_ids])
    truth = (ids[:, None] == ids_all[None]).float()
    truth = truth / truth.sum(1, keepdim=True)
    torch.testing.assert_close(truth[0], torch.tensor([1, 0, 1, 0, 0, 0, 0, 1]) / 3)
    image_q, text_q, _ = q.entries()
    text_all, image_all = torch.cat([txt_m, text_q.t()]), torch.cat([img_m, image_q.t()])

    def term(a, a_m, bank):
        soft = alpha * F.softmax(a_m @ bank.t() / temp, 1) + (1 - alpha) * truth
        return -(F.log_softmax(a @ bank.t() / temp, 1) * soft).sum(1).mean()
    torch.testing.assert_close(loss, (term(img, img_m, text_all) + term(txt, txt_m, image_all)) / 2)


# ---- ITM hard negatives -----------------------------------------------------------------------------
def test_hard_negatives_are_never_positives_and_follow_similarity():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 1, 0, 2, 3, 1])                                     # duplicates: (0, 2), (1, 5)
    for _ in range(200):
        sim = torch.randn(6, 6, generator=g) * 5
        neg_text, neg_image = hard_negatives(sim, sim.t(), ids, g)
        assert bool((ids[neg_text] != ids).all()) and bool((ids[neg_image] != ids).all())
        neg_text, _ = hard_negatives(sim, sim.t(), None, g)
        assert bool((neg_text != torch.arange(6)).all())
    sim = torch.zeros(4, 4)
    sim[0, 3] = 20.0                                                           # text 3 looks like image 0's
    picks = [int(hard_negatives(sim, sim.t(), None, g)[0][0]) for _ in range(50)]
    assert picks.count(3) >= 48


def test_hard_negatives_need_a_negative():
    with pytest.raises(InputError, match="no negative"):
        hard_negatives(torch.zeros(1, 1), torch.zeros(1, 1))
    with pytest.raises(InputError, match="no negative"):
        hard_negatives(torch.zeros(3, 3), torch.zeros(3, 3), torch.tensor([4, 4, 4]))


# ---- MLM -------------------------------------------------------------------------------------------
def test_mlm_masking_skips_cls_and_padding_and_is_80_10_10():
    cfg = AlignConfig(tokenizer_size=40, eos_token_id=1, pad_token_id=0)
    ids = torch.randint(2, 40, (400, 30))
    ids[:, 0] = cfg.cls_token_id
    mask = torch.ones_like(ids)
    mask[:, 25:] = 0
    corrupted, labels = mask_for_mlm(ids, mask, cfg, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not bool(chosen[:, 0].any()) and not bool(chosen[:, 25:].any())
    assert abs(chosen[:, 1:25].float().mean().item() - 0.15) < 0.01
    torch.testing.assert_close(labels[chosen], ids[chosen])
    assert torch.equal(corrupted[~chosen], ids[~chosen])
    as_mask = (corrupted[chosen] == cfg.mask_token_id).float().mean().item()
    kept = (corrupted[chosen] == ids[chosen]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.03 and 0.07 < kept < 0.14                  # kept: 10% + random hits on itself
    assert int(corrupted.max()) <= cfg.mask_token_id and not bool((corrupted[chosen] == cfg.cls_token_id).any())


def test_mlm_masking_always_masks_something():
    cfg = AlignConfig(tokenizer_size=40, eos_token_id=1, pad_token_id=0)
    ids = torch.tensor([[cfg.cls_token_id, 5, 1]])
    for seed in range(20):
        _, labels = mask_for_mlm(ids, torch.ones_like(ids), cfg, torch.Generator().manual_seed(seed))
        assert int((labels != -100).sum()) >= 1 and labels[0, 0] == -100


def test_distilled_mlm_loss_is_its_formula_and_reads_masked_positions_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3], labels[1, 4] = 4, 7, 2
    soft = F.softmax(torch.randn(2, 5, 11), -1)
    plain = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(distilled_mlm_loss(logits, labels, soft, 0.0), plain)
    loss = distilled_mlm_loss(logits, labels, soft, 0.3)
    chosen = labels != -100
    distill = -(F.log_softmax(logits[chosen], -1) * soft[chosen]).sum(-1).mean()
    torch.testing.assert_close(loss, 0.7 * plain + 0.3 * distill)
    loss.backward()
    assert bool((logits.grad[~chosen] == 0).all()) and bool((logits.grad[chosen] != 0).any())
    with pytest.raises(InputError, match="no masked position"):
        distilled_mlm_loss(logits, torch.full((2, 5), -100), soft, 0.3)


# ---- the model -------------------------------------------------------------------------------------
def test_training_forward_moves_momentum_queue_and_alpha_eval_does_not():
    torch.manual_seed(0)
    model = build_albef(tiny_config())
    px, ids, mask = random_batch()
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(px, ids, mask, ids=torch.arange(8), generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert out.alpha == 0.0
    model.train()
    with torch.no_grad():                         # move the online model so the EMA has something to do
        model.vision_proj.weight.add_(1.0)
        model.text_proj.weight.add_(1.0)
    model(px, ids, mask, ids=torch.arange(8), generator=torch.Generator().manual_seed(0))
    assert int(model.step) == 1 and int(model.queue.ptr) == 8 and int(model.queue.filled) == 8
    assert model.queue.idx_queue[:8].tolist() == list(range(8))
    for proj in ("vision_proj", "text_proj"):    # every momentum pair follows its online module
        torch.testing.assert_close(getattr(model, f"{proj}_m").weight, 0.995 * state[f"{proj}_m.weight"] +
                                   0.005 * getattr(model, proj).weight)


def test_queue_starts_after_queue_start_step():
    model = build_albef(tiny_config(queue_start_step=2)).train()
    px, ids, mask = random_batch()
    for step in (1, 2, 3):
        model(px, ids, mask)
        assert int(model.queue.filled) == (8 if step == 3 else 0)


def test_forward_rejects_bad_input():
    model = build_albef(tiny_config())
    px, ids, mask = random_batch()
    with pytest.raises(InputError, match="same B pairs"):
        model(px[:3], ids, mask)
    with pytest.raises(InputError, match="at least one negative"):    # batch of one, empty queue: ITC
        model(px[:1], ids[:1], mask[:1])
    model.train()
    model(px, ids, mask)                                                # fills the queue
    with pytest.raises(InputError, match="no negative in the batch"):  # ITC has the queue; ITM has nothing
        model(px[:1], ids[:1], mask[:1])
    with pytest.raises(ConfigError, match="unknown text config keys \\['hidden_dim'\\]"):
        build_albef({**tiny_config(), "text_config": {**TEXT, "hidden_dim": 3}})
    with pytest.raises(ConfigError, match="cross-attention exactly in the fusion layers"):
        build_albef({**tiny_config(), "align_config": {**tiny_config()["align_config"], "text_layers": 4}})


def test_encode_captions_and_too_long_caption():
    tok = shapes_tokenizer()
    cfg = AlignConfig(tokenizer_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    batch = encode_captions(["A red circle.", "A blue square and a green star."], tok, cfg, 24)
    assert batch["input_ids"][:, 0].tolist() == [cfg.cls_token_id] * 2
    n0 = int(batch["attention_mask"][0].sum())
    assert batch["input_ids"][0, n0 - 1] == tok.eos_token_id
    with pytest.raises(InputError, match="caption 1"):
        encode_captions(["A red circle.", "A red circle. " * 20], tok, cfg, 24)


@pytest.mark.parametrize("text_layers", [1, 2])
def test_save_load_roundtrip(tmp_path, text_layers):
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg["align_config"]["text_layers"] = text_layers
    model = build_albef(cfg).train()
    px, ids, mask = random_batch()
    model(px, ids, mask)                                   # move the queue and the momentum state
    model.eval()
    ocellus.save(model, tmp_path)
    loaded = ocellus.load(tmp_path)
    assert loaded.text_encoder.mlm.decoder.weight is loaded.text_encoder.embeddings.word_embeddings.weight
    for a, b in ((model, loaded),):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    g = lambda: torch.Generator().manual_seed(3)   # noqa: E731
    torch.testing.assert_close(loaded(px, ids, mask, generator=g()).loss, model(px, ids, mask, generator=g()).loss)
    torch.testing.assert_close(loaded.itm_scores(px, ids, mask), model.itm_scores(px, ids, mask))


def fixed_batch(tok, cfg_dict, n=16, seed=3):
    from ocellus.data.image import preprocess
    from ocellus.train.contrastive_run import caption_id, image_cfg, shapes_pairs
    pair = shapes_pairs({"image_size": 32, "min_objects": 1, "max_objects": 1}, seed, n)
    rows = [pair(i) for i in range(n)]
    cfg = AlignConfig.from_dict(cfg_dict["align_config"])
    batch = encode_captions([r[1] for r in rows], tok, cfg, TEXT["max_position_embeddings"])
    return {**batch, "pixel_values": preprocess([r[0] for r in rows], image_cfg(16)),
            "ids": torch.tensor([caption_id(r[1]) for r in rows])}


def losses_before_after(model, tok, cfg_dict, steps=40, keys=("loss_itc", "loss_itm", "loss_mlm"), **forward):
    """Train on shapes captions; each loss on a held-out batch (eval mode, fixed masking and negatives)."""
    torch.manual_seed(0)
    held = fixed_batch(tok, cfg_dict, 16, seed=99)

    def measure():     # with an empty queue, so that ITC compares the same in-batch task before and after
        frozen = copy.deepcopy(model).eval()
        frozen.queue.filled.zero_()
        with torch.no_grad():
            out = frozen(**held, generator=torch.Generator().manual_seed(0), **forward)
        return {k: getattr(out, k).item() for k in keys}
    before = measure()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for step in range(steps):
        batch = fixed_batch(tok, cfg_dict, 16, seed=step)
        loss = model(**batch, **forward).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, measure()


def test_each_loss_falls_on_shapes_captions():
    tok = shapes_tokenizer()
    cfg = tiny_config(tok)
    torch.manual_seed(0)
    before, after = losses_before_after(build_albef(cfg), tok, cfg)
    for k in before:
        assert after[k] < before[k], (k, before[k], after[k])


# ---- the recipe (smoke: tiny sizes, a few steps) ---------------------------------------------------
TINY_RECIPE = ["model.vision={image_size: 16, patch_size: 4, hidden_size: 32, intermediate_size: 48, "
               "num_hidden_layers: 1, num_attention_heads: 2}",
               "model.text={hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 2, "
               "max_position_embeddings: 32}",
               "model.align.embed_dim=16", "model.align.queue_size=64", "model.align.queue_start_step=0",
               "tokenizer.train_bpe.corpus_n=200", "train.max_steps=36", "train.batch_size=16", "train.log_every=1",
               "train.warmup_steps=2", "train.progress=false", "data.n=512", "eval.n=24"]


def run_tiny_recipe(recipe: str, tmp_path, extra=()):
    import json
    from pathlib import Path
    from ocellus.train.tasks import load_recipe, run_recipe
    out = tmp_path / "run"
    r = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / recipe,
                    [f"train.out_dir={out}", *TINY_RECIPE, *extra])
    path = run_recipe(r)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = losses[4:]                  # from a full queue on (64 = 4 batches): ITC has the same columns
    k = len(losses) // 4
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k, losses
    result = json.loads((out / "eval.json").read_text())
    assert set(result["retrieval"]) >= {"t2i_R@1", "i2t_R@1", "t2i_R@10"}
    assert set(result["retrieval_itm_rerank"]) == set(result["retrieval"])
    model = ocellus.load(path)
    # re-ranking only the top 1 cannot change R@1; re-ranking the top 24 of 24 leaves R@24 at 1
    from ocellus.data.tokenizer import Tokenizer
    from ocellus.train.albef_blip_run import itm_rerank_retrieval
    tok = Tokenizer.from_dir(path)
    top1 = itm_rerank_retrieval(model, tok, n=24, k=1)
    assert top1["t2i_R@1"] == pytest.approx(result["retrieval"]["t2i_R@1"])
    assert top1["i2t_R@1"] == pytest.approx(result["retrieval"]["i2t_R@1"])
    return model


def test_albef_recipe_trains_exports_and_evaluates(tmp_path):
    model = run_tiny_recipe("albef_tiny_shapes/pretrain.yaml", tmp_path, ["model.align.text_layers=1"])
    assert type(model).__name__ == "ALBEF" and int(model.queue.filled) == 64
