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
