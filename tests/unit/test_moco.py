"""MoCo v2 against its paper: the momentum update formula, the FIFO queue, keys without gradient,
the InfoNCE logits layout, and eval mode leaving the state alone."""
import pytest
import torch
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError
from ocellus.models.contrastive.moco import MoCo, MoCoConfig
from ocellus.models.vision.vit import ViTConfig, VisionTransformer


def tiny_moco(**kw):
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig.clip(image_size=16, patch_size=4, hidden_size=32, intermediate_size=48,
                                           num_layers=2, num_heads=4))
    return MoCo(vit, 32, MoCoConfig(**{**dict(dim=8, queue_size=12, momentum=0.9, temperature=0.2), **kw}))


def views(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g)


def test_key_encoder_starts_equal_and_has_no_gradient():
    model = tiny_moco()
    for (nq, pq), (nk, pk) in zip(model.encoder_q.named_parameters(), model.encoder_k.named_parameters()):
        assert nq == nk and torch.equal(pq, pk) and not pk.requires_grad and pq.requires_grad
    model.train()
    out = model(*views())
    out.loss.backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert not out.k.requires_grad


def test_momentum_update_formula():
    model = tiny_moco(momentum=0.9)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    before_k = [p.clone() for p in model.encoder_k.parameters()]
    q = [p.clone() for p in model.encoder_q.parameters()]
    model.momentum_update()
    for k0, q0, k1 in zip(before_k, q, model.encoder_k.parameters()):
        torch.testing.assert_close(k1, 0.9 * k0 + 0.1 * q0)


def test_forward_updates_key_encoder_before_computing_keys():
    model = tiny_moco(momentum=0.5).train()
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(0.1)
    expected = [0.5 * pk + 0.5 * pq for pk, pq in zip(model.encoder_k.parameters(), model.encoder_q.parameters())]
    model(*views())
    for e, p in zip(expected, model.encoder_k.parameters()):
        torch.testing.assert_close(p, e)


def test_queue_is_fifo():
    model = tiny_moco(queue_size=12)
    keys = [F.normalize(torch.randn(4, 8), dim=1) for _ in range(4)]
    initial = model.queue.clone()
    model.enqueue(keys[0])
    assert int(model.queue_ptr) == 4
    torch.testing.assert_close(model.queue[:, :4], keys[0].t())
    torch.testing.assert_close(model.queue[:, 4:], initial[:, 4:])         # the rest untouched
    model.enqueue(keys[1])
    model.enqueue(keys[2])
    assert int(model.queue_ptr) == 0                                       # wrapped around
    model.enqueue(keys[3])                                                 # overwrites the oldest: keys[0]
    torch.testing.assert_close(model.queue[:, :4], keys[3].t())
    torch.testing.assert_close(model.queue[:, 4:8], keys[1].t())
    torch.testing.assert_close(model.queue[:, 8:], keys[2].t())


def test_queue_size_must_be_a_multiple_of_the_batch():
    model = tiny_moco(queue_size=10).train()
    with pytest.raises(ConfigError, match="not a multiple of the global batch 4"):
        model(*views(4))


def test_logits_are_positive_then_queue_over_temperature():
    model = tiny_moco().train()
    queue = model.queue.clone()
    out = model(*views())
    assert out.logits.shape == (4, 1 + 12)
    torch.testing.assert_close(out.logits[:, 0], (out.q * out.k).sum(1) / 0.2)
    torch.testing.assert_close(out.logits[:, 1:], out.q @ queue / 0.2)     # the queue *before* this batch
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, torch.zeros(4, dtype=torch.long)))
    torch.testing.assert_close(model.queue[:, :4], out.k.t())              # then this batch's keys go in


def test_eval_mode_changes_nothing():
    model = tiny_moco().eval()
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model(*views())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_bad_inputs():
    with pytest.raises(ConfigError, match="momentum"):
        MoCoConfig(momentum=1.0)
    with pytest.raises(InputError, match="equal shapes"):
        tiny_moco()(torch.randn(2, 3, 16, 16), torch.randn(3, 3, 16, 16))

