"""With labels the decoder runs its last layer and lm_head only where a label is trained
(nn/kept_rows.py): same loss and gradients as the full-logits loss, fewer rows through the last
layer's queries/MLP and lm_head, and .logits / .hidden_states still full on request."""
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


@pytest.mark.parametrize("tied,head_dim,padded,checkpointing", [(True, 8, False, False), (False, 16, False, False),
                                                                (True, 8, True, False), (False, 8, True, True)])
def test_loss_and_grads_equal_full_logits_loss(tied, head_dim, padded, checkpointing):
    model = _model(tied, head_dim)
    model.gradient_checkpointing = checkpointing
    ids, labels = _batch()
    mask = torch.ones_like(ids)
    if padded:                     # left padding in row 0, right padding in row 2 (never labelled)
        mask[0, :3] = 0
        mask[2, -2:] = 0
        labels[2, -2:] = -100
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    full = causal_lm_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
    ref_grads = torch.autograd.grad(full, list(model.parameters()))
    torch.testing.assert_close(out.loss, full, rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def _count_rows(module, into: list):
    module.register_forward_hook(lambda m, i, o: into.append(i[0].reshape(-1, i[0].shape[-1]).shape[0]))


def test_last_layer_and_lm_head_see_only_trained_positions_and_outputs_stay_available():
    model = _model(True, 8)
    ids, labels = _batch()
    head, first_mlp, last_mlp, last_q, last_k = [], [], [], [], []
    _count_rows(model.lm_head, head)
    _count_rows(model.layers[0].mlp, first_mlp)
    _count_rows(model.layers[-1].mlp, last_mlp)
    _count_rows(model.layers[-1].self_attn.q_proj, last_q)
    _count_rows(model.layers[-1].self_attn.k_proj, last_k)
    out = model(input_ids=ids, labels=labels)
    trained = int((labels[:, 1:] != -100).sum())
    widest = int((labels[:, 1:] != -100).sum(1).max())                   # queries are padded per sample
    assert trained < ids.numel()
    assert head == [trained] and last_mlp == [trained] and last_q == [3 * widest]
    assert first_mlp == [ids.numel()] and last_k == [ids.numel()]        # keys/values: every position
    plain = model(input_ids=ids)
    hidden = out.hidden_states                                            # made on first access
    torch.testing.assert_close(hidden, plain.hidden_states)
    logits = out.logits
    assert logits.shape == (3, 12, 97) and head == [trained, ids.numel(), ids.numel()]
    torch.testing.assert_close(logits, plain.logits)
    assert out.logits is logits and out.hidden_states is hidden           # made once


def test_labels_shape_mismatch_is_an_input_error():
    model = _model(True, 8)
    ids, labels = _batch()
    with pytest.raises(InputError, match="labels shape"):
        model(input_ids=ids, labels=labels[:, :-1])
