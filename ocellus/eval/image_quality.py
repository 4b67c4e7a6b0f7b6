"""Judging generated images without downloaded networks.

FID (Heusel et al. 2017) compares Inception features of real and generated images; no Inception
network exists offline, so a small classifier trained here on the same data (`Judge`) plays its
part: its penultimate features feed the same Fréchet distance

    FD = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)),

and its predictions give the class-conditional accuracy of samples generated for a given class.
Numbers are comparable only between models judged by the same Judge checkpoint. Reconstructions
are scored with PSNR and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
K2 = 0.03, the mean of the SSIM map, as in skimage's `structural_similarity(gaussian_weights=True)`).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import InputError


class Judge(nn.Module):
    """conv(32) -> pool -> conv(64) -> pool -> linear(feature_dim) = features -> linear(num_classes)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 16, feature_dim: int = 64):
        super().__init__()
        self.in_channels, self.num_classes, self.image_size = in_channels, num_classes, image_size
        self.convs = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(64 * (image_size // 4) ** 2, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise InputError(f"the judge takes [B, {self.in_channels}, {self.image_size}, {self.image_size}] images, "
                             f"got {tuple(x.shape)}")
        return F.relu(self.fc(self.convs(x).flatten(1)))                               # [B, F]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_judge(images: torch.Tensor, labels: torch.Tensor, steps: int = 600, batch_size: int = 64, lr: float = 2e-3,
                seed: int = 0) -> Judge:
    """A Judge fit on images [N, C, S, S] in [-1, 1] with labels [N] (Adam, light shift augmentation
    so it also reads slightly off-centre samples)."""
    torch.manual_seed(seed)
    judge = Judge(images.shape[1], int(labels.max()) + 1, images.shape[-1])
    opt = torch.optim.Adam(judge.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
        x = torch.roll(images[idx], shifts=(dy, dx), dims=(2, 3))
        loss = F.cross_entropy(judge(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return judge.eval()


@torch.no_grad()
def accuracy(judge: Judge, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (judge(images).argmax(-1) == labels).float().mean().item()


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fit to feature sets a [N, F] and b [M, F] (float64).

    Tr((S_a S_b)^(1/2)) = Tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)): the inner matrix is symmetric PSD, so
    both roots come from eigh (no complex sqrtm)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise InputError(f"features must be [N, F] and [M, F] with the same F, got {tuple(a.shape)}, {tuple(b.shape)}")
    if min(len(a), len(b)) < 2:
        raise InputError(f"need at least 2 samples per set for a covariance, got {len(a)} and {len(b)}")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return ((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross).item()


@torch.no_grad()
def judge_fd(judge: Judge, generated: torch.Tensor, real: torch.Tensor) -> float:
    return frechet_distance(judge.features(generated), judge.features(real))


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise InputError(f"need two image batches [B, C, H, W] of the same shape, got {tuple(a.shape)}, {tuple(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB, 10 log10(range^2 / MSE); range 2 for images in [-1, 1]."""
    _check_pair(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range ** 2 / mse)).float()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image mean SSIM over channels and the valid (unpadded) window positions."""
    _check_pair(a, b)
    if min(a.shape[-2:]) < window:
        raise InputError(f"SSIM needs images at least {window}x{window}, got {tuple(a.shape[-2:])}")
    a, b = a.double(), b.double()
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None]).expand(a.shape[1], 1, window, window)            # [C, 1, k, k]
    blur = lambda x: F.conv2d(x, kernel, groups=a.shape[1])
    mu_a, mu_b = blur(a), blur(b)
    # sample (N-1) covariances over the window, as skimage does with use_sample_covariance=True
    n = window * window
    cov_norm = n / (n - 1)
    var_a = cov_norm * (blur(a * a) - mu_a ** 2)
    var_b = cov_norm * (blur(b * b) - mu_b ** 2)
    cov = cov_norm * (blur(a * b) - mu_a * mu_b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).float()


def dominant_colour(images: torch.Tensor, palette: dict[str, tuple[int, int, int]],
                    background_min: float = 0.7) -> list[str | None]:
    """The palette name nearest (RGB distance) to the mean colour of each image's foreground, or None where an
    image has no foreground: images [B, 3, H, W] in [-1, 1] on a white background; a pixel is foreground when its
    darkest channel is below background_min (in [0, 1]: every palette colour has one channel <= 0.45, white 1.0).
    Does a text-to-image model draw the colour its prompt asks for? Compare this with the prompt's colour."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputError(f"dominant_colour takes RGB images [B, 3, H, W], got {tuple(images.shape)}")
    x = (images.float().clamp(-1, 1) + 1) / 2                                        # [B, 3, H, W] in [0, 1]
    fg = x.amin(dim=1) < background_min                                              # [B, H, W]
    names = list(palette)
    rgb = torch.tensor([palette[n] for n in names], dtype=torch.float32) / 255       # [K, 3]
    out = []
    for img, mask in zip(x, fg):
        if not mask.any():
            out.append(None)
            continue
        mean = img[:, mask].mean(dim=1)                                              # [3]
        out.append(names[int((rgb - mean).norm(dim=1).argmin())])
    return out
