"""MaskGIT: the cosine schedule, tokens revealed per decoding step, loss only on masked positions,
guidance on logits, bad input; and the autoregressive generator over VQ tokens (Taming)."""
import math

import pytest
import torch

from ocellus.errors import InputError
from ocellus.models.generative.ar_image import ARImage, ar_decoder_config
from ocellus.models.generative.maskgit import MaskGIT, TokenTransformerConfig, cosine_mask_ratio, masked_after_step
from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.text.decoder import DecoderLM


def _maskgit(grid=4, codes=32):
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(channels=8, num_codes=codes, channel_mults=(1, 2) if grid == 4 else (1,)))
    return MaskGIT(TokenTransformerConfig(codes, grid, num_classes=10, dim=32, num_layers=2), vq)


def test_cosine_schedule():
    assert cosine_mask_ratio(0.0) == 1.0 and abs(cosine_mask_ratio(1.0)) < 1e-12
    assert abs(cosine_mask_ratio(0.5) - math.cos(math.pi / 4)) < 1e-12


@pytest.mark.parametrize("grid,steps", [(4, 8), (8, 12), (8, 8), (4, 16)])
def test_tokens_revealed_per_step_follow_the_schedule(grid, steps):
    m = _maskgit(grid).eval()
    n = grid * grid
    trace = []
    ids = m.generate_tokens(torch.tensor([3, 7]), steps=steps, guidance_scale=2.0,
                            generator=torch.Generator().manual_seed(0), trace=trace)
    expected, before = [], n
    for s in range(steps):
        after = max(0, min(math.floor(math.cos(math.pi / 2 * (s + 1) / steps) * n), before - 1))
        expected.append(before - after)
        before = after
    assert trace == expected and sum(trace) == n
    assert (ids != m.mask_id).all() and ids.max() < 32
    assert masked_after_step(steps - 1, steps, n) == 0


def test_loss_only_on_masked_positions():
    """Changing the logits at unmasked positions cannot change the loss; at masked ones it does."""
    m = _maskgit().train()
    x, labels = torch.rand(4, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 3])
    seen = {}
    orig = m.logits

    def spy(ids, lab):
        out = orig(ids, lab)
        seen["masked"] = ids == m.mask_id
        return out
    m.logits = spy
    base = m(x, labels, generator=torch.Generator().manual_seed(1)).loss
    masked = seen["masked"]
    assert masked.any() and (~masked).any()
    m.logits = lambda ids, lab: spy(ids, lab) + 50.0 * (~masked)[..., None] * torch.randn(1, 1, 32)
    torch.testing.assert_close(m(x, labels, generator=torch.Generator().manual_seed(1)).loss, base)
    m.logits = lambda ids, lab: spy(ids, lab) + 50.0 * masked[..., None] * torch.randn(1, 1, 32)
    assert not torch.allclose(m(x, labels, generator=torch.Generator().manual_seed(1)).loss, base)


def test_mask_count_matches_cosine_of_r():
    m = _maskgit().train()
    captured = {}
    orig = m.logits
    m.logits = lambda ids, lab: (captured.__setitem__("ids", ids), orig(ids, lab))[1]
    # the condition-dropout draw comes first from the same generator: replay both to get r
    replay = torch.Generator().manual_seed(5)
    torch.rand(4, generator=replay)
    r = torch.rand(4, generator=replay)
    m(torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 3]), generator=torch.Generator().manual_seed(5))
    want = torch.ceil(torch.cos(r * math.pi / 2) * 16).clamp(1, 16)
    assert torch.equal((captured["ids"] == m.mask_id).sum(1).float(), want)


def test_bad_inputs():
    m = _maskgit().eval()
    with pytest.raises(InputError, match="steps"):
        m.generate_tokens(torch.tensor([1]), steps=0)
    with pytest.raises(InputError, match="steps"):
        m.generate_tokens(torch.tensor([1]), steps=17)
    with pytest.raises(InputError, match="class labels"):
        m.generate_tokens(torch.tensor([12]))
    with pytest.raises(InputError, match="tokenize to 256 tokens"):
        _maskgit(grid=8)(torch.rand(1, 1, 32, 32), torch.tensor([1]))


def _ar():
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(channels=8, num_codes=32)).eval()
    return ARImage(DecoderLM(ar_decoder_config(32, 10, 4, dim=32, num_layers=2, num_heads=2)), vq, 10, 4).eval()


def test_ar_cached_generation_equals_full_recompute():
    """Greedy decoding through the engine's KV cache equals argmax over a full forward of each prefix."""
    m = _ar()
    from ocellus.infer.generate import generate
    prompt = torch.tensor([[32 + 3], [32 + 8]])
    out = generate(m, prompt, max_new_tokens=16, do_sample=False, eos_token_id=(), pad_token_id=None)
    seq = prompt
    for _ in range(16):
        nxt = m(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq) and (out[:, 1:] < 32).all()     # never a class token after the prefix


def test_ar_top_k_and_loss():
    m = _ar()
    images = m.generate(torch.tensor([1, 2]), top_k=1, seed=0)
    again = m.generate(torch.tensor([1, 2]), top_k=1, seed=5)
    torch.testing.assert_close(images, again)                     # top-1 sampling is greedy
    assert images.shape == (2, 1, 16, 16)
    loss = m.train()(pixel_values=torch.rand(2, 1, 16, 16), labels=torch.tensor([0, 9])).loss
    assert abs(loss.item() - math.log(42)) < 1.5                   # near-uniform at init
    with pytest.raises(InputError, match="class labels"):
        m.generate(torch.tensor([10]))
