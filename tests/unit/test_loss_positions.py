"""The training loss applies lm_head only where a label is trained (decoder.causal_lm_loss_from_hidden):
same loss and gradients as the full-logits loss, fewer lm_head rows, and .logits still full on request."""
import pytest
import torch

from ocellus.errors import InputError
from ocellus.models.text.decoder import DecoderConfig, DecoderLM, causal_lm_loss
from ocellus.nn.rope import RopeConfig


def _model(tied: bool, head_dim: int) -> DecoderLM:
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
                        rope=RopeConfig(head_dim=head_dim), tie_word_embeddings=tied)
    return DecoderLM(cfg)


def _batch(T: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (3, T), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100           # a prompt / image span that is never trained
    labels[1, 7:9] = -100          # a hole in the middle
    return ids, labels


@pytest.mark.parametrize("tied,head_dim", [(True, 8), (False, 16)])
def test_loss_and_grads_equal_full_logits_loss(tied, head_dim):
    model = _model(tied, head_dim)
    ids, labels = _batch()
    out = model(input_ids=ids, labels=labels)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    full = causal_lm_loss(model(input_ids=ids).logits, labels)
    ref_grads = torch.autograd.grad(full, list(model.parameters()))
    torch.testing.assert_close(out.loss, full, rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_lm_head_sees_only_trained_positions_and_logits_stay_available():
    model = _model(True, 8)
    ids, labels = _batch()
    rows = []
    model.lm_head.register_forward_hook(lambda m, i, o: rows.append(i[0].reshape(-1, i[0].shape[-1]).shape[0]))
    out = model(input_ids=ids, labels=labels)
    trained = int((labels[:, 1:] != -100).sum())
    assert rows == [trained] and trained < ids.numel()
    logits = out.logits                                                   # made on first access
    assert logits.shape == (3, 12, 97) and rows == [trained, ids.numel()]
    torch.testing.assert_close(logits, model(input_ids=ids).logits)
    assert out.logits is logits                                           # made once


def test_labels_shape_mismatch_is_an_input_error():
    model = _model(True, 8)
    ids, labels = _batch()
    with pytest.raises(InputError, match="labels shape"):
        model(input_ids=ids, labels=labels[:, :-1])
