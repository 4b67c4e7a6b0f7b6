"""Beam search's length penalty (infer/beam.py) where it decides something: hypotheses that end at
different lengths. A finished hypothesis scores sum(log p) / generated_len ** length_penalty (the
generated tokens only, not the prompt, as transformers' BeamSearchScorer). The reference's eos logit is
raised so beams end after a few tokens at varied lengths; ids must equal transformers' for penalties
that favour short (-1), neutral-ish (0.5) and long (3) answers, and the penalties must pick different
answers (otherwise the test could not see a wrong exponent or length)."""
import pytest
import torch

import ocellus
from _init import spread_init
from conftest import build_reference

EOS = 5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ref = spread_init(build_reference("llama", eos_token_id=EOS))
    with torch.no_grad():
        ref.lm_head.weight[EOS] *= 3       # eos likely in some contexts (p up to ~0.7), unlikely in others
    path = tmp_path_factory.mktemp("beam")
    ref.save_pretrained(path)
    return ref, ocellus.load(path)


def test_length_penalty_ranks_hypotheses_of_different_lengths_as_transformers(pair):
    ref, ours = pair
    ids = torch.randint(6, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    outs = {}
    for lp in (-1.0, 3.0):
        want = ref.generate(ids, max_new_tokens=12, num_beams=4, length_penalty=lp, do_sample=False,
                            early_stopping=False, pad_token_id=0)
        got = ours.generate(ids, max_new_tokens=12, num_beams=4, length_penalty=lp, pad_token_id=0)
        assert torch.equal(got, want), lp
        outs[lp] = want
    lengths = {lp: (o[:, 7:] != 0).sum(-1).tolist() for lp, o in outs.items()}
    assert len({tuple(v) for v in lengths.values()}) > 1, lengths    # the penalty changed the answers
