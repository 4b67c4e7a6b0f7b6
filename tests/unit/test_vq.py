"""VQ-VAE: nearest-neighbour lookup, straight-through gradient, which term beta multiplies, EMA
updates, dead-code restarts, usage/perplexity, shape errors, and a few steps of learning."""
import pytest
import torch

from ocellus.errors import InputError
from ocellus.models.generative.vq import VectorQuantizer, VQConfig, VQVAE
from ocellus.train.generative import image_data


def test_lookup_is_nearest_neighbour():
    q = VectorQuantizer(8, 3)
    z = torch.randn(2, 3, 4, 4)
    out = q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    brute = torch.cdist(flat, q.embedding.weight).argmin(1)
    assert torch.equal(out.indices.flatten(), brute)
    torch.testing.assert_close(out.z_q, q.embedding.weight[brute].view(2, 4, 4, 3).permute(0, 3, 1, 2))


def test_straight_through_gradient_and_beta_on_commitment():
    q = VectorQuantizer(8, 3, beta=0.25)
    z = torch.randn(1, 3, 2, 2, requires_grad=True)
    out = q(z)
    out.z_q.sum().backward(retain_graph=True)
    torch.testing.assert_close(z.grad, torch.ones_like(z))           # identity through the lookup
    z.grad = None
    out.loss.backward()
    e = q.embedding.weight[out.indices.flatten()].view(1, 2, 2, 3).permute(0, 3, 1, 2).detach()
    # d/dz of beta * mean((z - e)^2) only: the codebook term carries no gradient to the encoder
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z - e).detach() / z.numel())
    # and the codebook gets the unweighted codebook term
    assert q.embedding.weight.grad is not None
    torch.testing.assert_close(out.loss, out.codebook_loss + 0.25 * out.commitment_loss)


def test_usage_and_perplexity():
    q = VectorQuantizer(4, 2)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0., 0.], [10., 0.], [0., 10.], [10., 10.]]))
    z = torch.tensor([[0., 0.], [10., 0.], [0., 10.], [10., 10.]]).T.reshape(1, 2, 2, 2)
    out = q.eval()(z)
    assert out.usage.item() == 1.0 and abs(out.perplexity.item() - 4.0) < 1e-4
    out = q(torch.zeros(1, 2, 2, 2))
    assert out.usage.item() == 0.25 and abs(out.perplexity.item() - 1.0) < 1e-4


def test_ema_moves_codes_to_cluster_means():
    q = VectorQuantizer(2, 2, ema=True, decay=0.5)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0., 0.], [5., 5.]]))
        q.embed_sum.copy_(q.embedding.weight)
    z = torch.tensor([[1., 1.], [1., 1.], [4., 6.], [6., 4.]]).T.reshape(1, 2, 2, 2)
    for _ in range(30):
        q.train()(z)
    torch.testing.assert_close(q.embedding.weight, torch.tensor([[1., 1.], [5., 5.]]), atol=1e-3, rtol=0)
    assert not q.embedding.weight.requires_grad and q(z).codebook_loss.item() == 0.0


def test_dead_codes_restart_onto_encoder_outputs():
    q = VectorQuantizer(4, 2, restart_threshold=0.5, decay=0.5)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0., 0.], [100., 100.], [200., 200.], [300., 300.]]))
    z = torch.randn(1, 2, 4, 4) * 0.1                                 # all near code 0
    for _ in range(3):
        q.train()(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    for k in (1, 2, 3):   # the far codes were never used: they now sit on encoder outputs
        assert torch.isclose(q.embedding.weight[k][None], flat).all(1).any()


@pytest.mark.parametrize("cfg", [VQConfig(), VQConfig(in_channels=3, channel_mults=(1, 1, 2), embed_dim=8, num_codes=32)])
def test_shapes_and_roundtrip_of_ids(cfg):
    m = VQVAE(cfg).eval()
    x = torch.rand(2, cfg.in_channels, 16, 16) * 2 - 1
    out = m(x)
    f = cfg.downsample_factor
    assert out.recon.shape == x.shape and out.quant.indices.shape == (2, 16 // f, 16 // f)
    ids = m.encode_to_ids(x)
    torch.testing.assert_close(m.decode_ids(ids), out.recon)


def test_bad_inputs():
    m = VQVAE(VQConfig())
    with pytest.raises(InputError, match="VQ tokenizer input size .* not divisible by its downsampling factor 4"):
        m(torch.zeros(1, 1, 18, 18))
    with pytest.raises(InputError, match=r"\[B, 1, H, W\]"):
        m(torch.zeros(1, 3, 16, 16))
    with pytest.raises(InputError, match="code ids"):
        m.decode_ids(torch.full((1, 4, 4), 64))


def test_learns_a_few_steps():
    torch.manual_seed(0)
    m = VQVAE(VQConfig(channels=16, ema=True, restart_threshold=0.01))
    x = image_data("digits", "train", 16, n=32)[0]
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = m(x).recon_loss.item()
    for _ in range(30):
        loss = m(x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m(x).recon_loss.item() < 0.7 * first
