"""One sampling step (infer/sampling.py) against the distribution written out by hand.

Sampling from logits l at temperature T draws from softmax(l / T) (Ackley et al. 1985; the division
happens before the softmax, so T < 1 sharpens). Top-k then keeps the k largest; nucleus sampling
(Holtzman et al. 2020) keeps the smallest set of most likely tokens whose mass reaches p, the token
that crosses p included, measured on the tempered, top-k-filtered distribution; survivors are
renormalised.
"""
import torch

from ocellus.infer.sampling import choose, process_logits


def nucleus(probs: list[float], p: float) -> set[int]:
    """Indices of the smallest most-likely-first prefix whose mass reaches p."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += probs[i]
        if mass >= p:
            break
    return kept


def test_temperature_divides_logits_before_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])                           # [1, V]
    for T in (0.5, 2.0):
        got = process_logits(logits, torch.zeros(1, 1, dtype=torch.long), do_sample=True, temperature=T).softmax(-1)
        e = [torch.exp(torch.tensor(x / T)).item() for x in logits[0].tolist()]
        torch.testing.assert_close(got[0], torch.tensor([x / sum(e) for x in e]))


def test_top_k_then_top_p_on_the_tempered_distribution():
    """logits at T=0.7, top_k=4, top_p=0.85: the kept set and the renormalised probabilities by hand."""
    logits = torch.tensor([[3.0, 2.6, 2.2, 1.0, 0.9, -2.0]])
    T, k, p = 0.7, 4, 0.85
    tempered = [x / T for x in logits[0].tolist()]
    top_k = sorted(range(6), key=lambda i: -tempered[i])[:k]                       # [0, 1, 2, 3]
    z = sum(torch.exp(torch.tensor(tempered[i])).item() for i in top_k)
    probs_k = [torch.exp(torch.tensor(tempered[i])).item() / z if i in top_k else 0.0 for i in range(6)]
    kept = nucleus(probs_k, p)
    assert kept == {0, 1, 2}                    # 0 and 1 hold 0.806 < 0.85; token 2 crosses it and stays
    mass = sum(probs_k[i] for i in kept)
    want = torch.tensor([probs_k[i] / mass if i in kept else 0.0 for i in range(6)])
    got = process_logits(logits, torch.zeros(1, 1, dtype=torch.long), do_sample=True, temperature=T, top_k=k,
                         top_p=p).softmax(-1)[0]
    torch.testing.assert_close(got, want)


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[0.3, 1.2, -0.4, 2.2, 0.9, 1.5]])
    got = process_logits(logits, torch.zeros(1, 1, dtype=torch.long), do_sample=True, top_k=3)
    assert torch.isfinite(got[0]).nonzero().flatten().tolist() == [1, 3, 5]


def test_greedy_is_argmax_and_a_draw_follows_the_processed_distribution():
    logits = torch.tensor([[0.0, 1.0, 3.0, 0.5]])
    assert choose(logits, do_sample=False).tolist() == [2]
    processed = process_logits(logits, torch.zeros(1, 1, dtype=torch.long), do_sample=True, temperature=2.0, top_k=2)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([choose(processed, True, g) for _ in range(4000)]).flatten()
    freq = torch.bincount(draws, minlength=4).float() / 4000
    e1, e2 = torch.exp(torch.tensor(1.0 / 2)), torch.exp(torch.tensor(3.0 / 2))
    torch.testing.assert_close(freq, torch.tensor([0.0, e1 / (e1 + e2), e2 / (e1 + e2), 0.0]), atol=0.03, rtol=0)
