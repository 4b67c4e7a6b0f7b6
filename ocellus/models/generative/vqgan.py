"""VQGAN's training losses: a PatchGAN discriminator with hinge loss, the adaptive weight between
reconstruction and adversarial gradients, and a perceptual-style feature loss.

Esser et al. 2021, "Taming Transformers for High-Resolution Image Synthesis" (sec. 3.1, eq. 7),
reference CompVis/taming-transformers `VQLPIPSWithDiscriminator` and `NLayerDiscriminator`
(Isola et al. 2017's pix2pix PatchGAN: every output logit judges one receptive-field patch):

    L = L_rec + L_codebook + lambda * L_GAN,   lambda = ||grad_GL L_rec|| / (||grad_GL L_GAN|| + 1e-4)

with GL the decoder's last layer, lambda clamped to [0, 1e4], detached, times disc_weight, and
the GAN terms switched on only from `disc_start` (the autoencoder first learns to reconstruct).
Hinge losses: L_D = 1/2 (E relu(1 - D(x)) + E relu(1 + D(x_hat))), L_GAN = -E D(x_hat).

No pretrained perceptual network (LPIPS over VGG) exists offline. `FeatureLoss` replaces it with
the squared distance between channel-normalised activations of the convolutions of a classifier
trained here on the same data (eval/image_quality.Judge), LPIPS's recipe without the learned
per-channel weights: it penalises differences that change what the classifier sees (stroke
shape) more than per-pixel noise. With no judge given, only the pixel L1 + L2 reconstruction is used.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class PatchDiscriminator(nn.Module):
    """conv4/2 -> LeakyReLU, (n_layers - 1) x [conv4/2 -> BatchNorm -> LeakyReLU], conv4/1 -> BN -> LReLU,
    conv4/1 -> one logit per patch: [B, C, H, W] -> [B, 1, h, w]."""

    def __init__(self, in_channels: int = 1, channels: int = 32, n_layers: int = 2):
        super().__init__()
        layers = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, n_layers):
            layers += [nn.Conv2d(c, c * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c * 2), nn.LeakyReLU(0.2)]
            c *= 2
        layers += [nn.Conv2d(c, c * 2, 4, 1, 1, bias=False), nn.BatchNorm2d(c * 2), nn.LeakyReLU(0.2),
                   nn.Conv2d(c * 2, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # pix2pix's init, as in taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float = 1.0) -> torch.Tensor:
    """||dL_rec/dW|| / (||dL_GAN/dW|| + 1e-4) at the decoder's last weight W, clamped, detached."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return torch.clamp(w, 0.0, 1e4).detach() * disc_weight


def gan_factor(step: int, disc_start: int) -> float:
    """0 before disc_start, 1 from it on (taming's adopt_weight)."""
    return 0.0 if step < disc_start else 1.0


class FeatureLoss(nn.Module):
    """Mean squared distance of channel-unit-normalised conv activations of a frozen classifier."""

    def __init__(self, judge: nn.Module):
        super().__init__()
        self.judge = judge.eval().requires_grad_(False)

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for layer in self.judge.convs:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))       # unit norm over channels
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sum((a - b).pow(2).sum(1).mean() for a, b in zip(self._feats(x), self._feats(y)))
