"""MoCo v2 (He et al. 2020, Algorithm 1; Chen et al. 2020): ONE real training forward + backward of the
project's MoCo against the algorithm written out on the same tensors:

    theta_k <- m theta_k + (1 - m) theta_q            (the key encoder moves, the query encoder does not)
    q = f_q(x_q), k = f_k(x_k) (no gradient)          normalised [N, C]
    logits = [q.k+, q @ queue] / tau, label 0         the queue BEFORE this batch
    loss = CE; d loss / d theta_q with k a constant
    enqueue k over the oldest N slots (FIFO)
"""
import copy

import torch
import torch.nn.functional as F

from test_moco import tiny_moco, views

M, TAU, K, N = 0.9, 0.2, 12, 4


def test_one_step_equals_algorithm_1():
    model = tiny_moco(momentum=M, temperature=TAU, queue_size=K).train()
    with torch.no_grad():                                  # query encoder ahead of the key encoder
        for p in model.encoder_q.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x_q, x_k = views(N)
    f_q, f_k = copy.deepcopy(model.encoder_q), copy.deepcopy(model.encoder_k)
    queue = model.queue.clone()                                                     # [C, K]
    with torch.no_grad():
        for pk, pq in zip(f_k.parameters(), f_q.parameters()):
            pk.copy_(M * pk + (1 - M) * pq)                                          # Eq. 2
        k = f_k(x_k)                                                                 # [N, C]
    q = f_q(x_q)                                                                     # [N, C]
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1) / TAU      # [N, 1 + K]
    loss = -torch.log_softmax(logits, dim=1)[:, 0].mean()
    loss.backward()

    out = model(x_q, x_k)
    out.loss.backward()
    torch.testing.assert_close(out.k, k)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.loss, loss)
    for (name, p), p_hand in zip(model.encoder_q.named_parameters(), f_q.parameters()):
        torch.testing.assert_close(p, p_hand, msg=name)                             # theta_q not moved by EMA
        torch.testing.assert_close(p.grad, p_hand.grad, msg=name)
    for p, p_hand in zip(model.encoder_k.parameters(), f_k.parameters()):
        torch.testing.assert_close(p, p_hand)
        assert p.grad is None
    torch.testing.assert_close(model.queue[:, :N], k.t())                          # new keys in the oldest slots
    torch.testing.assert_close(model.queue[:, N:], queue[:, N:])
    assert int(model.queue_ptr) == N


def test_queue_through_training_steps_is_fifo():
    """Four forwards with K = 3N: after the wrap, the 4th batch's keys replace the 1st's, the rest stay."""
    model = tiny_moco(queue_size=K).train()
    keys = []
    for s in range(4):
        with torch.no_grad():
            keys.append(model(*views(N, seed=s)).k.clone())
    torch.testing.assert_close(model.queue, torch.cat([keys[3], keys[1], keys[2]]).t())
    assert int(model.queue_ptr) == N
