"""Classifier-free guidance: the two common forms agree, edge scales, the batched helper, bad input."""
import pytest
import torch

from ocellus.errors import ConfigError
from ocellus.models.generative.guidance import (MAX_GUIDANCE_SCALE, check_guidance_scale, drop_condition, guide_scale,
                                                guide_weight, guided)


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0, 7.5])
def test_two_forms_agree(w):
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    torch.testing.assert_close(guide_scale(cond, uncond, 1 + w), guide_weight(cond, uncond, w))
    # and they are not trivially equal for the wrong pairing s = w
    if w:
        assert not torch.allclose(guide_scale(cond, uncond, w), guide_weight(cond, uncond, w))


def test_edge_scales():
    cond, uncond = torch.tensor([2.0]), torch.tensor([-1.0])
    assert guide_scale(cond, uncond, 1.0) == cond and guide_scale(cond, uncond, 0.0) == uncond
    assert guide_scale(cond, uncond, 3.0) == torch.tensor([8.0])   # -1 + 3 * 3


def test_guided_batches_both_halves():
    calls = []
    def fn(x, t, c):
        calls.append(x.shape[0])
        return x * 0 + c.float().view(-1, 1) + t.float().view(-1, 1)
    x, t = torch.zeros(2, 3), torch.tensor([5, 5])
    out = guided(fn, x, torch.tensor([4, 4]), torch.tensor([10, 10]), 2.0, t)
    assert calls == [4]                                    # one forward over cond + uncond
    torch.testing.assert_close(out, torch.full((2, 3), 10 + 5 + 2 * (4 - 10.0)))
    calls.clear()
    guided(fn, x, torch.tensor([4, 4]), torch.tensor([10, 10]), 1.0, t)
    assert calls == [2]                                    # scale 1: conditional only


@pytest.mark.parametrize("scale", [-0.5, MAX_GUIDANCE_SCALE + 1, float("nan"), float("inf"), "3", True])
def test_bad_scale(scale):
    with pytest.raises(ConfigError, match="guidance scale"):
        check_guidance_scale(scale)


def test_drop_condition_rate():
    labels = torch.zeros(20000, dtype=torch.long)
    dropped = drop_condition(labels, 10, 0.1, torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 10} and abs((dropped == 10).float().mean() - 0.1) < 0.01
    with pytest.raises(ConfigError, match="dropout"):
        drop_condition(labels, 10, 1.0)
