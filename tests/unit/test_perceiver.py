"""Perceiver Resampler (Flamingo section 2.1): properties the paper states, and fixed-seed values."""
import pytest
import torch

from ocellus.errors import ConfigError, InputError
from ocellus.models.connectors.perceiver import PerceiverConfig, PerceiverResampler

CONFIGS = [dict(dim=32, depth=2, num_latents=5, heads=4, head_dim=8),
           dict(dim=24, depth=1, num_latents=3, heads=2, head_dim=16, ff_mult=2, max_num_frames=4)]


def _perceiver(**kw) -> PerceiverResampler:
    torch.manual_seed(0)
    return PerceiverResampler(PerceiverConfig(**kw)).eval()


@pytest.mark.parametrize("kw", CONFIGS)
def test_output_count_is_fixed_whatever_the_input_count(kw):
    p = _perceiver(**kw)
    for num_features in (1, 7, 50):
        out = p(torch.randn(3, num_features, kw["dim"]))
        assert out.shape == (3, kw["num_latents"], kw["dim"])


@pytest.mark.parametrize("kw", CONFIGS)
def test_permuting_the_spatial_features_of_a_frame_changes_nothing(kw):
    p = _perceiver(**kw)
    x = torch.randn(2, 12, kw["dim"])
    perm = torch.randperm(12)
    torch.testing.assert_close(p(x[:, perm]), p(x), atol=1e-5, rtol=1e-5)
    # ... but the content does matter
    assert not torch.allclose(p(x), p(x.flip(0)), atol=1e-3)


def test_images_are_resampled_independently():
    p = _perceiver(**CONFIGS[0])
    x = torch.randn(3, 9, 32)
    y = x.clone()
    y[1] = torch.randn(9, 32)
    a, b = p(x), p(y)
    torch.testing.assert_close(a[[0, 2]], b[[0, 2]], atol=1e-6, rtol=0)
    assert not torch.allclose(a[1], b[1], atol=1e-3)


def test_keys_and_values_include_the_latents():
    """Each layer's keys/values are [media ; latents] (the paper's Fig. 5), not the media alone."""
    p = _perceiver(**CONFIGS[0])
    layer = p.layers[0].attn
    latents = p.latents[None]
    media = torch.randn(1, 4, 32)
    seen = {}
    layer.to_kv.register_forward_hook(lambda m, inp, out: seen.update(kv_tokens=inp[0].shape[1]))
    layer(media, latents)
    assert seen["kv_tokens"] == 4 + p.num_latents


def test_video_frames_get_time_embeddings():
    kw = CONFIGS[1]
    p = _perceiver(**kw)
    frames = torch.randn(2, 3, 6, kw["dim"])                          # [N, F, P, D]
    out = p(frames)
    assert out.shape == (2, kw["num_latents"], kw["dim"])
    # order of the frames matters (time embeddings), order of the features within a frame does not
    assert not torch.allclose(out, p(frames[:, [2, 1, 0]]), atol=1e-4)
    torch.testing.assert_close(out, p(frames[:, :, torch.randperm(6)]), atol=1e-5, rtol=1e-5)
    # flattening frames without time embeddings would make them a bag: check the embedding is what differs
    with torch.no_grad():
        p.frame_embs.zero_()
    torch.testing.assert_close(p(frames), p(frames[:, [2, 1, 0]]), atol=1e-5, rtol=1e-5)


def _open_flamingo_reference(p: PerceiverResampler, x: torch.Tensor) -> torch.Tensor:
    """open_flamingo's PerceiverResampler.forward written out with einsum (images: F = 1, no time
    embeddings), on our module's weights."""
    import torch.nn.functional as F
    latents = p.latents[None].expand(x.shape[0], -1, -1)
    for layer in p.layers:
        a = layer.attn
        h, dh = a.heads, a.head_dim
        xm, lat = a.norm_media(x), a.norm_latents(latents)
        q = a.to_q(lat)
        k, v = a.to_kv(torch.cat((xm, lat), dim=-2)).chunk(2, dim=-1)
        q, k, v = (t.reshape(t.shape[0], t.shape[1], h, dh).permute(0, 2, 1, 3) for t in (q, k, v))
        sim = torch.einsum("bhid,bhjd->bhij", q * dh ** -0.5, k)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        out = torch.einsum("bhij,bhjd->bhid", sim.softmax(dim=-1), v)
        latents = a.to_out(out.permute(0, 2, 1, 3).reshape(out.shape[0], -1, h * dh)) + latents
        ff = layer.ff
        latents = ff.mlp.fc2(F.gelu(ff.mlp.fc1(ff.norm(latents)))) + latents
    return p.norm(latents)


@pytest.mark.parametrize("kw", CONFIGS)
def test_matches_open_flamingo_math(kw):
    p = _perceiver(**kw)
    x = torch.randn(2, 10, kw["dim"])
    torch.testing.assert_close(p(x), _open_flamingo_reference(p, x), atol=1e-5, rtol=1e-5)


def test_fixed_seed_values():
    p = _perceiver(dim=8, depth=1, num_latents=2, heads=2, head_dim=4)
    torch.manual_seed(1)
    out = p(torch.randn(1, 3, 8))
    # the final LayerNorm: every latent has zero mean and unit variance over channels
    torch.testing.assert_close(out.mean(-1), torch.zeros(1, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(1, 2), atol=1e-3, rtol=0)
    expected = torch.tensor([0.3752, -0.1270, 0.6949, 0.5284, 1.2571, 0.2852, -2.1694, -0.8444])
    torch.testing.assert_close(out[0, 0], expected, atol=1e-4, rtol=0)


def test_bad_inputs_and_configs():
    p = _perceiver(**CONFIGS[0])
    with pytest.raises(InputError, match=r"\[N, P, 32\]"):
        p(torch.randn(2, 5, 16))
    with pytest.raises(InputError, match="built for images"):
        p(torch.randn(2, 3, 5, 32))
    video = _perceiver(**CONFIGS[1])
    with pytest.raises(InputError, match="max_num_frames=4"):
        video(torch.randn(1, 5, 2, 24))
    with pytest.raises(ConfigError, match="num_latents"):
        PerceiverConfig(dim=8, num_latents=0)
    with pytest.raises(ConfigError, match="unknown fields"):
        PerceiverConfig.from_dict({"dim": 8, "latents": 3})


def test_patch_positions_are_added_to_every_frame_and_break_the_permutation_symmetry():
    """max_num_patches (not the paper's): a learned embedding per patch position added to each frame's features,
    so the resampler equals the plain one run on x + patch_embs[:P] (the same weights otherwise), sees where a
    feature is (a permutation now changes the output), and refuses more patches than its table holds."""
    torch.manual_seed(0)
    cfg = PerceiverConfig(dim=16, depth=2, num_latents=3, heads=2, head_dim=8, max_num_frames=2, max_num_patches=5)
    placed = PerceiverResampler(cfg).eval()
    plain = PerceiverResampler(PerceiverConfig(**{**cfg.to_dict(), "max_num_patches": None})).eval()
    plain.load_state_dict({k: v for k, v in placed.state_dict().items() if k != "patch_embs"})
    with torch.no_grad():
        placed.patch_embs.normal_()                                     # large enough to matter
        x, video = torch.randn(2, 4, 16), torch.randn(2, 2, 4, 16)
        torch.testing.assert_close(placed(x), plain(x + placed.patch_embs[:4]))
        torch.testing.assert_close(placed(video), plain(video + placed.patch_embs[None, :4]))
        assert not torch.allclose(placed(x[:, [1, 0, 2, 3]]), placed(x), atol=1e-3)
    with pytest.raises(InputError, match="6 patches per frame exceed the perceiver's max_num_patches=5"):
        placed(torch.randn(1, 6, 16))
    with pytest.raises(ConfigError, match="max_num_patches"):
        PerceiverConfig(dim=16, max_num_patches=0)
