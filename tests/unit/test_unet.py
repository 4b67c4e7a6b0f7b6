"""The diffusion UNet: shapes over configs, the condition matters (cross-attention), time matters,
the zero-initialised output, bad sizes/labels."""
import pytest
import torch

from ocellus.errors import ConfigError, InputError
from ocellus.models.generative.unet import Conditioner, UNet, UNetConfig

CONFIGS = [UNetConfig(channels=16, channel_mults=(1, 2), attention_levels=(1,), context_dim=32),
           UNetConfig(in_channels=3, channels=16, channel_mults=(1, 1, 2), num_res_blocks=2, attention_levels=(1, 2),
                      num_heads=2, context_dim=24)]


def _randomize(unet):
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)   # the zero init would hide every dependence


@pytest.mark.parametrize("cfg", CONFIGS)
def test_shapes_and_dependencies(cfg):
    torch.manual_seed(0)
    unet, cond = UNet(cfg).eval(), Conditioner(10, cfg.context_dim)
    x, t = torch.randn(2, cfg.in_channels, 16, 16), torch.tensor([3, 700])
    assert (unet(x, t, cond(torch.tensor([1, 2]))) == 0).all()       # zero-initialised output layer
    _randomize(unet)
    y = unet(x, t, cond(torch.tensor([1, 2])))
    assert y.shape == x.shape
    assert not torch.allclose(y, unet(x, t, cond(torch.tensor([5, 10]))))     # the class reaches the output
    assert not torch.allclose(y, unet(x, torch.tensor([500, 20]), cond(torch.tensor([1, 2]))))  # so does time
    # rows are independent: the batch does not mix
    torch.testing.assert_close(unet(x[:1], t[:1], cond(torch.tensor([1])))[0], y[0], atol=1e-5, rtol=1e-5)


def test_unconditional_config():
    unet = UNet(UNetConfig(channels=16, channel_mults=(1, 2), attention_levels=(1,), context_dim=None))
    assert unet(torch.randn(1, 1, 8, 8), torch.tensor([1])).shape == (1, 1, 8, 8)


def test_bad_inputs():
    unet, cond = UNet(CONFIGS[1]), Conditioner(10, 24)
    with pytest.raises(InputError, match="not divisible by its downsampling factor 4"):
        unet(torch.randn(1, 3, 18, 18), torch.tensor([1]), cond(torch.tensor([1])))
    with pytest.raises(InputError, match="conditional"):
        unet(torch.randn(1, 3, 16, 16), torch.tensor([1]))
    with pytest.raises(InputError, match="class label 11 is out of range"):
        cond(torch.tensor([11]))
    with pytest.raises(ConfigError, match="groups"):
        UNetConfig(channels=12)
    with pytest.raises(ConfigError, match="attention_levels"):
        UNetConfig(attention_levels=(5,))


def _res_block(b, x, temb):
    """DDPM's residual block from the formula, on the block's weights."""
    F = torch.nn.functional
    h = b.conv1(F.silu(F.group_norm(x, b.norm1.num_groups, b.norm1.weight, b.norm1.bias, b.norm1.eps)))
    h = h + (F.silu(temb) @ b.time_proj.weight.T + b.time_proj.bias)[:, :, None, None]
    h = b.conv2(F.silu(F.group_norm(h, b.norm2.num_groups, b.norm2.weight, b.norm2.bias, b.norm2.eps)))
    return (x if isinstance(b.skip, torch.nn.Identity) else b.skip(x)) + h


def _mha(q, k, v, heads, mask=None):
    """softmax(Q K^T / sqrt(d) + mask) V per head: [B, N, D] x [B, S, D] -> [B, N, D]."""
    B, N, D = q.shape
    split = lambda x: x.reshape(B, x.shape[1], heads, D // heads).permute(0, 2, 1, 3)     # noqa: E731
    s = split(q) @ split(k).transpose(-1, -2) / (D // heads) ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :].bool(), float("-inf"))
    return (s.softmax(-1) @ split(v)).permute(0, 2, 1, 3).reshape(B, N, D)


def _attention_block(a, x, context, context_mask=None):
    B, C, H, W = x.shape
    h = torch.nn.functional.group_norm(x, a.norm.num_groups, a.norm.weight, a.norm.bias, a.norm.eps)
    q, k, v = a.qkv(h.flatten(2).transpose(1, 2)).chunk(3, dim=-1)
    tokens = x.flatten(2).transpose(1, 2) + a.proj(_mha(q, k, v, a.num_heads))
    n = a.norm_cross(tokens)
    kc, vc = a.to_kv(context).chunk(2, dim=-1)
    tokens = tokens + a.cross(_mha(a.to_q(n), kc, vc, a.num_heads, context_mask))
    return tokens.transpose(1, 2).reshape(B, C, H, W)


def _unet(u, x, t, context, context_mask=None):
    """The UNet's wiring written out: down levels keep every output as a skip, the middle is res-attn-res, each
    up block first concatenates the latest skip (its own output first, then the skip) on the channel axis."""
    from ocellus.nn.positional import sinusoidal_encoding
    temb = u.time_mlp(sinusoidal_encoding(t, u.cfg.channels))
    block = lambda b, h: (_attention_block(b[1], _res_block(b[0], h, temb), context, context_mask)   # noqa: E731
                          if len(b) > 1 else _res_block(b[0], h, temb)) if isinstance(b, torch.nn.ModuleList) else b(h)
    h = u.conv_in(x)
    skips = [h]
    for b in u.down:
        h = block(b, h)
        skips.append(h)
    h = _res_block(u.mid[2], _attention_block(u.mid[1], _res_block(u.mid[0], h, temb), context, context_mask), temb)
    for b in u.up:
        h = block(b, torch.cat([h, skips.pop()], 1) if isinstance(b, torch.nn.ModuleList) else h)
    return u.conv_out(torch.nn.functional.silu(u.norm_out(h)))


@pytest.mark.parametrize("cfg", CONFIGS)
def test_forward_equals_the_wiring_written_out(cfg):
    torch.manual_seed(0)
    unet, cond = UNet(cfg).eval(), Conditioner(10, cfg.context_dim)
    _randomize(unet)
    for m in unet.modules():                                 # GroupNorm/LayerNorm defaults hide a dropped norm
        if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            torch.nn.init.normal_(m.weight, 1.0, 0.3)
            torch.nn.init.normal_(m.bias, 0.0, 0.3)
    x, t = torch.randn(2, cfg.in_channels, 16, 16), torch.tensor([3, 700])
    context = torch.cat([cond(torch.tensor([1, 2])), cond(torch.tensor([4, 10]))], 1)      # [2, 2, D]
    mask = torch.tensor([[1, 1], [1, 0]])
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, context, mask), _unet(unet, x, t, context, mask), atol=1e-5, rtol=1e-4)
