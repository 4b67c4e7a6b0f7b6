"""One real step of the VQ-VAE quantizer and of VQGAN's two-player loop, recomputed by hand from the papers.

VQ-VAE (van den Oord et al. 2017, eq. 3): z_q = nearest code, gradients straight through
(dL/dz_e = dL/dz_q), L_vq = ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2; EMA codebook (appendix A.1):
N <- d N + (1-d) n, m <- d m + (1-d) sum z_e, e = m / N_laplace.
VQGAN (Esser et al. 2021, eq. 7 + hinge): L_D = 1/2 (E relu(1 - D(x)) + E relu(1 + D(sg x_hat))),
L_G = -E D(x_hat), lambda = ||grad_GL L_rec|| / (||grad_GL L_G|| + 1e-4) at the decoder's last layer.
"""
import copy

import torch
import torch.nn.functional as F

import ocellus.models.generative.vqgan as vqgan_mod
from ocellus.models.generative.vq import VectorQuantizer, VQConfig, VQVAE
from ocellus.train.generative import train_vqgan
import ocellus.train.generative as generative_run


def _nearest(flat, codebook):
    """argmin_k ||z - e_k||^2, written with an explicit difference (not the expanded form)."""
    return (flat[:, None, :] - codebook[None]).pow(2).sum(-1).argmin(1)             # [N]


def test_quantizer_step_nearest_code_straight_through_and_beta_on_commitment():
    torch.manual_seed(0)
    K, D, beta = 8, 3, 0.25
    q = VectorQuantizer(K, D, beta=beta).double().train()
    with torch.no_grad():
        q.embedding.weight.copy_(torch.randn(K, D, dtype=torch.float64))
    z = torch.randn(2, D, 2, 3, dtype=torch.float64, requires_grad=True)              # [B, D, H, W]
    out = q(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, D)                              # [BHW, D]
    idx = _nearest(flat, q.embedding.weight.detach())
    assert torch.equal(out.indices.flatten(), idx)
    e = q.embedding.weight.detach()[idx]                                               # [BHW, D]
    torch.testing.assert_close(out.z_q.detach().permute(0, 2, 3, 1).reshape(-1, D), e)
    # gradients of a downstream loss <G, z_q> plus the VQ loss
    G = torch.randn_like(z)
    ((out.z_q * G).sum() + out.loss).backward()
    n = flat.numel()
    diff = (flat - e)                                                                   # z_e - e, [BHW, D]
    # encoder: G passes straight through, plus the commitment gradient beta * 2 (z_e - e) / n
    want_z = G.detach().permute(0, 2, 3, 1).reshape(-1, D) + beta * 2 * diff / n
    torch.testing.assert_close(z.grad.permute(0, 2, 3, 1).reshape(-1, D), want_z)
    # codebook: only the codebook term, 2 (e - z_e) / n summed over the positions that chose each code
    want_e = torch.zeros(K, D, dtype=torch.float64).index_add_(0, idx, -2 * diff / n)
    torch.testing.assert_close(q.embedding.weight.grad, want_e)


def test_ema_codebook_step_decay_and_laplace_smoothing():
    torch.manual_seed(1)
    K, D, d, eps = 6, 2, 0.9, 1e-5
    q = VectorQuantizer(K, D, ema=True, decay=d).double().train()
    with torch.no_grad():
        q.embedding.weight.copy_(torch.randn(K, D, dtype=torch.float64))
        q.embed_sum.copy_(q.embedding.weight * 2.0)
        q.cluster_size.copy_(torch.rand(K, dtype=torch.float64) + 0.5)
    N0, m0, e0 = q.cluster_size.clone(), q.embed_sum.clone(), q.embedding.weight.detach().clone()
    z = torch.randn(3, D, 2, 2, dtype=torch.float64)
    out = q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, D)
    idx = _nearest(flat, e0)                                                           # assignment with old codes
    counts = torch.bincount(idx, minlength=K).double()                                 # n_k
    sums = torch.zeros(K, D, dtype=torch.float64).index_add_(0, idx, flat)             # sum of z_e per code
    N1 = d * N0 + (1 - d) * counts
    m1 = d * m0 + (1 - d) * sums
    n = N1.sum()
    N_laplace = (N1 + eps) / (n + K * eps) * n
    torch.testing.assert_close(q.cluster_size, N1, rtol=1e-12, atol=0)
    torch.testing.assert_close(q.embed_sum, m1, rtol=1e-12, atol=0)
    torch.testing.assert_close(q.embedding.weight.detach(), m1 / N_laplace[:, None], rtol=1e-12, atol=0)
    # under EMA the loss is the commitment term only; as implemented, the lookup after the update reads
    # the codes this step just moved (Sonnet's VectorQuantizerEMA reads the old ones)
    torch.testing.assert_close(out.loss, 0.25 * F.mse_loss(flat, (m1 / N_laplace[:, None])[idx]))


class _Recorder:
    """Patches PatchDiscriminator so the test gets the loop's discriminator and a copy of its initial weights."""

    def __init__(self, monkeypatch):
        rec = self
        base = vqgan_mod.PatchDiscriminator

        class Spy(base):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                rec.disc, rec.initial = self, copy.deepcopy(self)
        monkeypatch.setattr(vqgan_mod, "PatchDiscriminator", Spy)
        monkeypatch.setattr(generative_run, "PatchDiscriminator", Spy)   # the loop's module binds it at import


def _adam_first_step(p, grad, lr):
    """Adam's first update: m_hat = g, v_hat = g^2 -> p - lr g / (|g| + eps)."""
    return p - lr * grad / (grad.abs() + 1e-8)


def _check_update(after, before, lr, sure=1e-6):
    """Each parameter moved by Adam's first step from its hand gradient (entries with |g| ~ 0 skipped)."""
    for (name, p1), p0 in zip(after.named_parameters(), before.parameters()):
        if p0.grad is None:                                                            # no gradient: untouched
            assert torch.equal(p1.detach(), p0.detach()), name
            continue
        ok = p0.grad.abs() > sure
        want = _adam_first_step(p0.detach(), p0.grad, lr)
        torch.testing.assert_close(p1.detach()[ok], want[ok], atol=lr * 1e-3, rtol=0, msg=name)


def test_vqgan_one_step_equals_hinge_gan_with_adaptive_weight(monkeypatch):
    """Real images on D's real side, detached reconstructions on its fake side; the autoencoder loss is
    rec + vq + lambda (-E D(x_hat)) with lambda from the gradient norms at decoder[-1]."""
    rec = _Recorder(monkeypatch)
    torch.manual_seed(0)
    model = VQVAE(VQConfig(channels=8, num_codes=16))
    before = copy.deepcopy(model)
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    lr, bs, dw = 1e-3, 4, 0.5
    hist = train_vqgan(model, x, steps=1, batch_size=bs, lr=lr, disc_start=0, disc_weight=dw, seed=3)
    xb = x[torch.randint(0, len(x), (bs,), generator=torch.Generator().manual_seed(3))]   # the loop's batch
    disc = rec.initial.train()
    before.train()
    out = before(xb)
    l_rec = (out.recon - xb).abs().mean() + F.mse_loss(out.recon, xb)                  # L1 + L2 reconstruction
    l_g = -disc(out.recon).mean()                                                      # generator hinge term
    last = before.decoder[-1].weight
    g_rec = torch.autograd.grad(l_rec, last, retain_graph=True)[0]
    g_gan = torch.autograd.grad(l_g, last, retain_graph=True)[0]
    lam = dw * g_rec.norm() / (g_gan.norm() + 1e-4)
    loss = l_rec + out.quant.loss + lam.detach() * l_g
    l_d = 0.5 * (F.relu(1 - disc(xb)).mean() + F.relu(1 + disc(out.recon.detach())).mean())
    assert abs(hist[0]["adaptive_weight"] - lam.item()) < 1e-5 * lam.item()
    assert abs(hist[0]["loss"] - loss.item()) < 1e-5
    assert abs(hist[0]["d_loss"] - l_d.item()) < 1e-6
    # the parameter updates: autoencoder from `loss`, discriminator from `l_d` only
    loss.backward()
    _check_update(model, before, lr)
    disc.zero_grad()
    l_d.backward()
    _check_update(rec.disc, disc, lr)


def test_vqgan_feature_loss_enters_at_its_weight():
    """rec = L1 + L2 + feature_weight * FeatureLoss(judge): with the GAN off, one step's rec and loss recomputed at a
    weight other than 1 (a weight dropped or doubled changes both)."""
    from ocellus.eval.image_quality import Judge
    from ocellus.models.generative.vqgan import FeatureLoss
    torch.manual_seed(0)
    judge = Judge(1, 10, 16)
    model = VQVAE(VQConfig(channels=8, num_codes=16))
    before = copy.deepcopy(model).train()
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    fw, bs = 0.3, 4
    hist = train_vqgan(model, x, steps=1, batch_size=bs, disc_start=5, feature_weight=fw, judge=judge, seed=2)
    xb = x[torch.randint(0, len(x), (bs,), generator=torch.Generator().manual_seed(2))]
    out = before(xb)
    feature = FeatureLoss(judge)(out.recon, xb)
    assert feature.item() > 1e-3                      # the term is there to be weighed
    rec = (out.recon - xb).abs().mean() + F.mse_loss(out.recon, xb) + fw * feature
    assert abs(hist[0]["rec"] - rec.item()) < 1e-5
    assert abs(hist[0]["loss"] - (rec + out.quant.loss).item()) < 1e-5
