"""Qwen-VL's position-aware adapter (no transformers reference): the properties the paper states --
a fixed number of output tokens whatever the patch count, 2D sin-cos positions on queries and keys,
features matter through their content and their position only -- and fixed-seed values."""
import math

import pytest
import torch

from ocellus.errors import ConfigError, InputError
from ocellus.models.connectors.resampler import Resampler, sincos_2d
from ocellus.nn.positional import resize_grid


def _resampler(**kw):
    torch.manual_seed(0)
    return Resampler(12, 16, **{"num_queries": 4, "num_heads": 2, **kw}).eval()


@pytest.mark.parametrize("patches", [9, 16, 64])
def test_output_count_is_num_queries_for_any_grid(patches):
    r = _resampler(num_queries=9)
    with torch.no_grad():
        assert r(torch.randn(3, patches, 12)).shape == (3, 9, 16)


def test_sincos_2d_is_the_mae_formula():
    dim, grid = 8, 3
    table = sincos_2d(dim, grid)
    omega = [1.0, 1.0 / 100]   # 10000^(-2k/(dim/2)) for k < dim/4
    for row in range(grid):
        for col in range(grid):
            want = ([math.sin(col * w) for w in omega] + [math.cos(col * w) for w in omega]
                    + [math.sin(row * w) for w in omega] + [math.cos(row * w) for w in omega])
            torch.testing.assert_close(table[row * grid + col], torch.tensor(want), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="divisible by 4"):
        sincos_2d(6, 2)


def test_key_positions_are_the_query_table_resized():
    r = _resampler(num_queries=16)
    assert torch.equal(r.key_positions(16), r.pos_embed)        # same grid: the table itself
    big = r.key_positions(64)                                    # 4x4 table -> 8x8 grid, bicubic
    assert big.shape == (64, 16)
    back = resize_grid(big, (4, 4))
    assert (back - r.pos_embed).abs().max() < 0.25               # a smooth resize, not a new table
    with pytest.raises(InputError, match="square patch grid, got 10"):
        r.key_positions(10)


def test_permuting_features_changes_the_output_only_through_positions():
    r = _resampler()
    x = torch.randn(2, 16, 12)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    pos = r.key_positions(16)
    with torch.no_grad():
        out = r(x)
        same = r(x[:, perm], positions=pos[perm])                # features moved with their positions
        moved = r(x[:, perm])                                    # features moved, positions not
        no_pos = r(x, positions=torch.zeros_like(pos))
        no_pos_perm = r(x[:, perm], positions=torch.zeros_like(pos))
    torch.testing.assert_close(same, out, atol=1e-6, rtol=1e-5)
    assert (moved - out).abs().max() > 1e-3
    torch.testing.assert_close(no_pos_perm, no_pos, atol=1e-6, rtol=1e-5)   # attention is a set operation


def test_fixed_seed_values_and_gradients():
    r = _resampler()
    x = torch.randn(2, 9, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = r(x)
    torch.testing.assert_close(out[0, 0, :4], torch.tensor([1.500852, -0.698606, -0.783796, 1.258904]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, 3, -3:], torch.tensor([-0.149441, 0.408641, -0.166209]), atol=1e-5, rtol=0)
    r.train()
    r(x).square().sum().backward()
    for name in ("query", "kv_proj.weight", "proj", "attn.in_proj_weight"):
        assert r.get_parameter(name).grad.abs().sum() > 0, name
    assert "pos_embed" not in r.state_dict()                     # fixed by the formula, never saved


def test_bad_configs_and_inputs():
    with pytest.raises(ConfigError, match="must be a square"):
        Resampler(12, 16, num_queries=10)
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        Resampler(12, 18, num_queries=4, num_heads=4)
    with pytest.raises(InputError, match=r"\[N, P, D\]"):
        _resampler()(torch.randn(9, 12))


def test_pos_scale_multiplies_the_table_on_queries_and_keys():
    """pos_scale s is the same resampler with the sin-cos table times s, on the queries and on the keys
    (not on the values); 1 is the paper; it survives a save/load through the family's config."""
    x = torch.randn(2, 16, 12, generator=torch.Generator().manual_seed(4))
    scaled, plain = _resampler(num_queries=16, pos_scale=3.0), _resampler(num_queries=16)
    plain.pos_embed.mul_(3.0)
    with torch.no_grad():
        want = plain(x, positions=3.0 * scaled.key_positions(16))
        got = scaled(x)
        unscaled = _resampler(num_queries=16)(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert (got - unscaled).abs().max() > 1e-2
    for bad in (0, -1.0, float("nan"), "2"):
        with pytest.raises(ConfigError, match="pos_scale"):
            _resampler(pos_scale=bad)
