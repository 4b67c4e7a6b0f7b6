"""CLIP and SigLIP: ONE real step of the project's loop against the paper's formula on the same tensors.

  CLIP (Radford et al. 2021, Fig. 3)   logits = min(exp(t'), 100) * cos(I_i, T_j);
                                       loss = (CE over rows + CE over columns) / 2, target = the diagonal
                                       (with ids: uniform over the pairs that share the id)
  SigLIP (Zhai et al. 2023, Alg. 1)    loss = -1/N sum_ij log sigmoid(z_ij (t <x_i, y_j> + b)),
                                       z_ij = +1 on the diagonal (or equal ids), -1 elsewhere
  the contrastive run's optimizer step (Trainer: AdamW, constant lr here) equals AdamW written out on the
  gradient of the hand-written loss.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from contrastive_tiny import tiny_dual_encoder

N, T = 4, 8


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 40, (N, T), generator=g)
    ids[:, -1] = 1                                                     # eos (CLIP pools there)
    return torch.randn(N, 3, 16, 16, generator=g), ids


def _features(model, px, ids):
    """The towers' normalised embeddings [N, E] (the thing under test is what the loss does with them)."""
    return (F.normalize(model.get_image_features(px), dim=-1), F.normalize(model.get_text_features(ids), dim=-1))


def clip_loss_by_hand(img, txt, log_scale, pair_ids=None, cap=100.0):
    scale = torch.clamp(log_scale.exp(), max=cap)
    logits = scale * img @ txt.t()                                     # [N images, N texts]
    pos = torch.eye(N) if pair_ids is None else (pair_ids[:, None] == pair_ids[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    i2t = -(target * torch.log_softmax(logits, dim=1)).sum(1).mean()   # each image over all texts
    t2i = -(target.t() * torch.log_softmax(logits.t(), dim=1)).sum(1).mean()   # each text over all images
    return (i2t + t2i) / 2


def siglip_loss_by_hand(img, txt, log_scale, bias, pair_ids=None):
    t = log_scale.exp()
    total = 0.0
    for i in range(N):
        for j in range(N):
            same = i == j if pair_ids is None else bool(pair_ids[i] == pair_ids[j])
            z = 1.0 if same else -1.0
            total = total - F.logsigmoid(z * (t * (img[i] @ txt[j]) + bias))
    return total.sum() / N


@pytest.mark.parametrize("pair_ids", [None, torch.tensor([7, 3, 7, 5])])
def test_clip_loss_is_symmetric_infonce_of_scaled_cosines(pair_ids):
    model = tiny_dual_encoder("clip")
    px, ids = _batch()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(3.0))
    out = model(input_ids=ids, pixel_values=px, return_loss=True, ids=pair_ids)
    img, txt = _features(model, px, ids)
    torch.testing.assert_close(out.loss, clip_loss_by_hand(img, txt, model.logit_scale, pair_ids))
    torch.testing.assert_close(out.logits_per_image, 3.0 * img @ txt.t())
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())


def test_clip_logit_scale_is_clamped_at_100_and_the_clamp_stops_its_gradient():
    model = tiny_dual_encoder("clip")
    px, ids = _batch()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(250.0))
    out = model(input_ids=ids, pixel_values=px, return_loss=True)
    img, txt = _features(model, px, ids)
    torch.testing.assert_close(out.loss, clip_loss_by_hand(img, txt, model.logit_scale))
    torch.testing.assert_close(out.logits_per_image, 100.0 * img @ txt.t())
    out.loss.backward()
    assert model.logit_scale.grad.abs().max() == 0
    assert model.text_projection.weight.grad.abs().max() > 0


@pytest.mark.parametrize("pair_ids", [None, torch.tensor([7, 3, 7, 5])])
def test_siglip_loss_is_the_pairwise_sigmoid_sum_over_batch(pair_ids):
    model = tiny_dual_encoder("siglip")
    px, ids = _batch()
    with torch.no_grad():
        model.logit_bias.fill_(-2.0)                                   # not the init, so b's sign matters
    out = model(input_ids=ids, pixel_values=px, return_loss=True, ids=pair_ids)
    img, txt = _features(model, px, ids)
    torch.testing.assert_close(out.loss, siglip_loss_by_hand(img, txt, model.logit_scale, model.logit_bias, pair_ids))
    torch.testing.assert_close(out.logits_per_image, model.logit_scale.exp() * img @ txt.t() + model.logit_bias)


@pytest.mark.parametrize("kind", ["clip"])   # siglip: the same loop; its loss is checked above
def test_two_trainer_steps_equal_adamw_on_the_hand_loss_gradient(kind, tmp_path):
    """The contrastive run's loop (Trainer.train_step: model(**batch).loss, backward, AdamW) on a fixed
    batch, against AdamW written out (m, v, bias correction, decoupled decay) on the gradient of the hand
    loss. Two steps, so the update depends on gradient magnitudes, not only their signs."""
    from ocellus.train.loader import BatchLoader
    from ocellus.train.trainer import TrainConfig, Trainer
    model = tiny_dual_encoder(kind)
    ref = copy.deepcopy(model)
    px, ids = _batch()
    pair_ids = torch.tensor([7, 3, 7, 5])
    rows = [(px[i], ids[i], pair_ids[i]) for i in range(N)]

    def collate(rs):
        return {"pixel_values": torch.stack([r[0] for r in rs]), "input_ids": torch.stack([r[1] for r in rs]),
                "ids": torch.stack([r[2] for r in rs]), "return_loss": True}
    lr, wd, (b1, b2), eps = 1e-2, 0.1, (0.9, 0.999), 1e-8
    cfg = TrainConfig(max_steps=2, lr=lr, weight_decay=wd, clip_grad_norm=None, min_lr_ratio=1.0,
                      out_dir=str(tmp_path), progress=False)
    trainer = Trainer(model, BatchLoader(rows, N, collate, shuffle=False), cfg)
    losses = [trainer.train_step()[0] for _ in range(2)]

    params = dict(ref.named_parameters())
    state = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in params.items()}
    live_grad = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
    for step in (1, 2):
        img, txt = _features(ref, px, ids)
        loss = (clip_loss_by_hand(img, txt, ref.logit_scale, pair_ids) if kind == "clip" else
                siglip_loss_by_hand(img, txt, ref.logit_scale, ref.logit_bias, pair_ids))
        assert abs(loss.item() - losses[step - 1]) < 1e-5
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        with torch.no_grad():
            for (name, p), g in zip(params.items(), grads):
                g = torch.zeros_like(p) if g is None else g
                live_grad[name] |= g.abs() > 1e-5
                m, v = state[name]
                m.mul_(b1).add_((1 - b1) * g)
                v.mul_(b2).add_((1 - b2) * g * g)
                decay = wd if (p.dim() >= 2 and "norm" not in name) else 0.0
                p.mul_(1 - lr * decay)
                p.sub_(lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps))
    for name, p in model.named_parameters():
        # entries whose true gradient is 0 (attention key biases: softmax ignores a shift shared by all
        # keys) get Adam steps of +-lr from rounding noise alone: compare the rest
        live = live_grad[name]
        torch.testing.assert_close(p[live], params[name][live], atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    assert sum(int(v.sum()) for v in live_grad.values()) > 0.9 * sum(v.numel() for v in live_grad.values())
