"""ResNet basic blocks written out (He et al. 2016, fig. 2, with GroupNorm for BatchNorm):

    y = ReLU(GN1(conv3x3_s(x)));  y = GN2(conv3x3(y));  out = ReLU(y + shortcut(x))
    shortcut = x, or GN(conv1x1_s(x)) when the stride or the width changes (option B, normalised).

The norms' affine parameters are shifted off 1 / 0 so a dropped norm or activation shows.
"""
import torch
import torch.nn.functional as F

from ocellus.models.vision.resnet import BasicBlock, ResNetConfig, ResNetEncoder


def gn(x, norm):
    return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)


def reference_block(block, x, stride):
    y = F.relu(gn(F.conv2d(x, block.conv1.weight, stride=stride, padding=1), block.norm1))
    y = gn(F.conv2d(y, block.conv2.weight, padding=1), block.norm2)
    if stride == 1 and block.conv1.in_channels == block.conv1.out_channels:
        short = x
    else:
        conv, norm = block.shortcut
        short = gn(F.conv2d(x, conv.weight, stride=stride), norm)
    return F.relu(y + short)


def shifted(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    return module


def test_blocks_equal_the_written_out_formula():
    cfg = ResNetConfig(image_size=16, stem_width=8, widths=(8, 16), depths=(1, 1), hidden_size=16, norm_groups=4)
    torch.manual_seed(0)
    x = torch.randn(2, 8, 8, 8)
    for c_in, c_out, stride in ((8, 8, 1), (8, 16, 2), (8, 16, 1)):
        block = shifted(BasicBlock(cfg, c_in, c_out, stride))
        torch.testing.assert_close(block(x), reference_block(block, x, stride), atol=1e-5, rtol=1e-5)


def test_encoder_is_stem_then_stages_then_projection_plus_positions():
    cfg = ResNetConfig(image_size=16, stem_width=8, widths=(8, 16), depths=(1, 1), hidden_size=12, norm_groups=4)
    torch.manual_seed(0)
    enc = shifted(ResNetEncoder(cfg).eval())
    x = torch.randn(2, 3, 16, 16)
    conv, norm, _ = enc.stem
    h = F.relu(gn(F.conv2d(x, conv.weight, stride=2, padding=1), norm))
    h = reference_block(enc.stages[0][0], h, 1)
    h = reference_block(enc.stages[1][0], h, 2)                              # [2, 16, 4, 4]
    tokens = h.flatten(2).transpose(1, 2)
    want = tokens @ enc.proj.weight.T + enc.proj.bias + enc.position_embedding
    torch.testing.assert_close(enc(x), want, atol=1e-5, rtol=1e-5)
