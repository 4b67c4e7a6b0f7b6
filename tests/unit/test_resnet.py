"""The ResNet feature extractor: shapes, that it learns (digits), that its position embedding makes
the resampled output position-aware, and that Flamingo builds on it from config (test_flamingo.py)."""
import pytest
import torch
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError
from ocellus.models.connectors.perceiver import PerceiverConfig, PerceiverResampler
from ocellus.models.vision.resnet import ResNetConfig, ResNetEncoder

CONFIGS = [ResNetConfig(image_size=32, stem_width=8, widths=(8, 16), depths=(1, 1), hidden_size=24, norm_groups=4),
           ResNetConfig(image_size=48, stem_width=16, stem_stride=1, widths=(16, 16, 32), depths=(2, 1, 1),
                        hidden_size=40, norm_groups=8)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["2stages", "3stages"])
def test_output_is_one_token_per_feature_map_location(cfg):
    torch.manual_seed(0)
    enc = ResNetEncoder(cfg)
    out = enc(torch.randn(3, 3, cfg.image_size, cfg.image_size))
    grid = cfg.image_size // (cfg.stem_stride * 2 ** (len(cfg.widths) - 1))
    assert out.shape == (3, grid * grid, cfg.hidden_size) and enc.num_tokens() == grid * grid
    # images are independent: GroupNorm has no batch statistics, in train mode too
    enc.train()
    x = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    torch.testing.assert_close(enc(x)[:1], enc(x[:1]), atol=1e-5, rtol=1e-5)


def test_config_round_trip_and_errors():
    cfg = CONFIGS[1]
    assert ResNetConfig.from_hf(cfg.to_hf()) == cfg
    with pytest.raises(ConfigError, match="not divisible by the total stride 16"):
        ResNetConfig(image_size=36, widths=(8, 8, 8, 8), depths=(1, 1, 1, 1))
    with pytest.raises(ConfigError, match="equal length"):
        ResNetConfig(widths=(8, 16), depths=(1,))
    with pytest.raises(ConfigError, match="norm_groups"):
        ResNetConfig(stem_width=12, widths=(12,), depths=(1,), image_size=32, norm_groups=8)
    enc = ResNetEncoder(CONFIGS[0])
    with pytest.raises(InputError, match=r"takes \[N, 3, 32, 32\]"):
        enc(torch.randn(1, 3, 48, 48))


def test_it_learns_digits_in_a_few_steps():
    """scikit-learn's digits (8x8, upsampled to 16 px), mean-pooled tokens -> linear head: 120 steps of
    AdamW on 512 images take the loss from chance (ln 10 = 2.3) to about 1."""
    from ocellus.data.digits import digits_samples
    from ocellus.data.image import preprocess
    from ocellus.train.recipe_data import image_config
    rows = digits_samples("train", seed=0, image_size=16)[:512]
    x = preprocess([r["images"][0] for r in rows], image_config(16))                   # [512, 3, 16, 16]
    y = torch.tensor([r["label"] for r in rows])
    cfg = ResNetConfig(image_size=16, stem_width=8, stem_stride=1, widths=(8, 16), depths=(1, 1), hidden_size=24,
                       norm_groups=4)
    torch.manual_seed(0)
    enc = ResNetEncoder(cfg)
    head = torch.nn.Linear(cfg.hidden_size, 10)
    opt = torch.optim.AdamW([*enc.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for step in range(120):
        idx = torch.arange(step * 32, step * 32 + 32) % 512
        loss = F.cross_entropy(head(enc(x[idx]).mean(1)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10, losses


def test_position_embedding_makes_the_resampled_output_position_aware():
    """An object moved by a multiple of the stride (well inside the image): the conv features move with
    it (translation equivariance) and the resampler is permutation-invariant, so without position
    embeddings the two images resample to the same tokens; with them, they do not."""
    cfg = ResNetConfig(image_size=64, stem_width=8, widths=(8, 16), depths=(1, 1), hidden_size=16, norm_groups=4)
    torch.manual_seed(0)
    enc = ResNetEncoder(cfg).eval()
    perceiver = PerceiverResampler(PerceiverConfig(dim=16, depth=1, num_latents=4, heads=2, head_dim=8)).eval()
    pattern = torch.randn(3, 8, 8)
    a = torch.full((1, 3, 64, 64), -1.0)
    b = a.clone()
    a[0, :, 24:32, 24:32] = pattern                                     # the receptive field is 23 px: both
    b[0, :, 24:32, 32:40] = pattern                                     # objects' windows stay off the borders
    with torch.no_grad():
        fa, fb = enc(a), enc(b)                                         # [1, 256, 16], a 16x16 grid
        # the features move with the object: 8 px = 2 locations to the right (compared away from the
        # borders, where zero padding makes every map differ from its shift)
        pos = enc.position_embedding.reshape(16, 16, 16)
        grid_a, grid_b = fa.reshape(16, 16, 16) - pos, fb.reshape(16, 16, 16) - pos     # [h, w, D]
        torch.testing.assert_close(grid_b[3:13, 5:13], grid_a[3:13, 3:11], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(grid_b[3:13, 3:11], grid_a[3:13, 3:11], atol=1e-3)
        with_pos = perceiver(fa), perceiver(fb)
        enc.position_embedding.zero_()
        without = perceiver(enc(a)), perceiver(enc(b))
    torch.testing.assert_close(without[0], without[1], atol=1e-5, rtol=1e-5)
    # at init (std 0.02) the effect is small, but 50x the float noise above; training grows it
    assert (with_pos[0] - with_pos[1]).abs().max() > 1e-4


def test_basic_block_adds_its_shortcut():
    """With the residual branch silenced (conv2 = 0, so norm2 gives 0) a block is relu(shortcut(x)): the identity
    where the shape is kept, the 1x1 projection where it changes."""
    torch.manual_seed(0)
    cfg = ResNetConfig(image_size=16, stem_width=8, widths=(8, 16), depths=(1, 1), hidden_size=8, norm_groups=4)
    model = ResNetEncoder(cfg)
    x = torch.randn(2, 8, 8, 8)
    same, down = model.stages[0][0], model.stages[1][0]
    with torch.no_grad():
        for block in (same, down):
            block.conv2.weight.zero_()
        torch.testing.assert_close(same(x), torch.relu(x))
        torch.testing.assert_close(down(x), torch.relu(down.shortcut(x)))
