"""VQGAN losses: hinge values, the adaptive weight is the gradient-norm ratio at the last layer,
the GAN switch-on step, the patch discriminator's output map, the feature loss, a few loop steps."""
import pytest
import torch

from ocellus.eval.image_quality import Judge
from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.generative.vqgan import (FeatureLoss, PatchDiscriminator, adaptive_weight, gan_factor,
                                             hinge_d_loss, hinge_g_loss)
from ocellus.train.generative import train_vqgan


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2] -> 2.5/3 ; relu(1 + fake) = [0, 1, 2] -> 1
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (2.5 / 3 + 1.0)))
    torch.testing.assert_close(hinge_g_loss(fake), torch.tensor(2.0 / 3))


def test_adaptive_weight_is_gradient_norm_ratio():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    y = layer(x)
    rec, g = (y - 1).pow(2).mean(), -y[:, 0].mean() * 7
    w = adaptive_weight(rec, g, layer.weight, disc_weight=0.5)
    gr = torch.autograd.grad(rec, layer.weight, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, layer.weight, retain_graph=True)[0].norm()
    torch.testing.assert_close(w, 0.5 * gr / (gg + 1e-4))
    assert not w.requires_grad
    # scaling the GAN loss by k scales the weight by ~1/k: the balance is scale-free
    torch.testing.assert_close(adaptive_weight(rec, 10 * g, layer.weight), w / 0.5 / 10, rtol=1e-4, atol=0)


def test_gan_switches_on_at_disc_start():
    assert [gan_factor(s, 3) for s in range(5)] == [0.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("channels,size,n_layers,out", [(1, 16, 2, 2), (3, 32, 3, 2), (1, 32, 2, 6)])
def test_patch_discriminator_map(channels, size, n_layers, out):
    d = PatchDiscriminator(channels, 16, n_layers)
    assert d(torch.randn(2, channels, size, size)).shape == (2, 1, out, out)


def test_feature_loss():
    torch.manual_seed(0)
    f = FeatureLoss(Judge(1, 10, 16))
    x = torch.rand(2, 1, 16, 16)
    assert f(x, x).item() == 0.0 and f(x, torch.rand(2, 1, 16, 16)).item() > 0
    assert not any(p.requires_grad for p in f.parameters())


def test_loop_disc_off_then_on():
    torch.manual_seed(0)
    model = VQVAE(VQConfig(channels=8, num_codes=16))
    hist = train_vqgan(model, torch.rand(16, 1, 16, 16) * 2 - 1, steps=4, batch_size=4, disc_start=2,
                       feature_weight=0.1, judge=Judge(1, 10, 16))
    assert [h["adaptive_weight"] == 0 for h in hist] == [True, True, False, False]
    assert hist[0]["d_loss"] == 0 and hist[3]["d_loss"] > 0
