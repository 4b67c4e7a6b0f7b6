"""Judge-based quality numbers: Fréchet distance vs scipy's sqrtm formula, PSNR/SSIM values, the
judge learns digits, bad input."""
import math

import numpy as np
import pytest
import torch

from ocellus.errors import InputError
from ocellus.eval.image_quality import Judge, accuracy, frechet_distance, psnr, ssim, train_judge
from ocellus.train.generative import image_data

scipy_linalg = pytest.importorskip("scipy.linalg")
ndimage = pytest.importorskip("scipy.ndimage")


def _fd_scipy(a, b):
    """The pytorch-fid / TTUR formula: sqrtm of the (non-symmetric) product."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim,shift", [(4, 0.0), (8, 0.5), (16, 2.0)])
def test_frechet_distance_equals_scipy(dim, shift):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(200, dim)) @ rng.normal(size=(dim, dim))
    b = rng.normal(size=(300, dim)) * 1.3 + shift
    ours = frechet_distance(torch.tensor(a), torch.tensor(b))
    assert math.isclose(ours, _fd_scipy(a, b), rel_tol=1e-6, abs_tol=1e-8)


def test_frechet_distance_of_gaussians_in_closed_form():
    # N(0, I) vs N(m, 4 I) in d dims: |m|^2 + d (1 + 4 - 2 * 2) = |m|^2 + d
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200000, 3, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(200000, 3, generator=g, dtype=torch.float64) + 1.0
    assert abs(frechet_distance(a, b) - (3 + 3)) < 0.05
    assert frechet_distance(a, a) < 1e-8


def test_psnr_values():
    a = torch.zeros(2, 1, 8, 8)
    b = a.clone()
    b[0] += 0.1                                       # MSE 0.01 with range 2: 10 log10(4 / 0.01) = 26.02
    b[1, :, :4] += 0.2                                # MSE 0.02
    torch.testing.assert_close(psnr(a, b), torch.tensor([10 * math.log10(400), 10 * math.log10(200)]))


def _ssim_reference(a, b, data_range=2.0):
    """skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=True)'s
    algorithm for one channel, written with scipy.ndimage."""
    filt = lambda x: ndimage.gaussian_filter(x, sigma=1.5, truncate=3.5)
    n = 11 * 11
    cn = n / (n - 1)
    ux, uy = filt(a), filt(b)
    vx, vy, vxy = cn * (filt(a * a) - ux * ux), cn * (filt(b * b) - uy * uy), cn * (filt(a * b) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s[5:-5, 5:-5].mean()


def test_ssim_equals_the_skimage_algorithm():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, size=(24, 20))
    b = np.clip(a + rng.normal(scale=0.3, size=a.shape), -1, 1)
    ours = ssim(torch.tensor(a)[None, None], torch.tensor(b)[None, None]).item()
    assert math.isclose(ours, _ssim_reference(a, b), rel_tol=1e-5)
    # low contrast: variances near C2, where the sample (N-1) normalisation moves the score most
    a, b = a * 0.05, a * 0.05 + rng.normal(scale=0.05, size=a.shape)
    ours = ssim(torch.tensor(a)[None, None], torch.tensor(b)[None, None]).item()
    assert math.isclose(ours, _ssim_reference(a, b), rel_tol=1e-6)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))


def test_judge_learns_digits():
    x, y, _ = image_data("digits", "train", 16)
    tx, ty, _ = image_data("digits", "test", 16)
    judge = train_judge(x, y, steps=150)
    assert accuracy(judge, tx, ty) > 0.85
    assert accuracy(judge, tx, (ty + 1) % 10) < 0.1                # and it can fail


def test_bad_inputs():
    with pytest.raises(InputError, match="same F"):
        frechet_distance(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(InputError, match="at least 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(5, 3))
    with pytest.raises(InputError, match="same shape"):
        psnr(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(InputError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(InputError, match="judge takes"):
        Judge(1, 10, 16).features(torch.zeros(1, 1, 32, 32))
