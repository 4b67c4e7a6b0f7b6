"""Generation's boundaries against transformers' generate on the same weights: a model whose config has no
pad_token_id pads finished rows with the first of several eos ids; a prompt plus max_new_tokens exactly filling
the context is generated, one token more is refused; top_p = 1 (the closed end of (0, 1]) and max_new_tokens = 0
are valid settings."""
import pytest
import torch

import ocellus
from ocellus.errors import InputError
from ocellus.infer.generate import GenerationConfig
from tests.conftest import build_reference

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def no_pad_pair(tmp_path_factory):
    ref = build_reference("llama", pad_token_id=None, eos_token_id=None, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("nopad")
    ref.save_pretrained(path)
    return ref, ocellus.load(path)


def _prompt(b, t, seed):
    return torch.randint(6, 97, (b, t), generator=torch.Generator().manual_seed(seed))


def test_finished_rows_are_padded_with_the_first_eos(no_pad_pair):
    ref, ours = no_pad_pair
    assert ours.config.pad_token_id is None
    ids = _prompt(2, 7, seed=11)
    free = ours.generate(ids, max_new_tokens=12, eos_token_id=[])
    new0, new1 = free[0, 7:].tolist(), free[1, 7:].tolist()
    first = next(t for k, t in enumerate(new0[:6]) if t not in new1 and t not in new0[:k])   # row 0 ends here
    other = next(t for t in range(97) if t not in new0 and t not in new1)                    # never generated
    eos = [first, other]
    out = ours.generate(ids, max_new_tokens=12, eos_token_id=eos)
    stop = 7 + new0.index(first)
    assert (out[0, stop + 1:] == first).all() and out.shape[1] == 19   # row 1 runs on; row 0 padded with eos[0]
    expected = ref.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=None)
    assert torch.equal(out, expected)


def test_prompt_and_new_tokens_exactly_filling_the_context(no_pad_pair):
    ref, ours = no_pad_pair
    ids = _prompt(1, 58, seed=12)
    out = ours.generate(ids, max_new_tokens=6, eos_token_id=[])       # 58 + 6 == 64 == the context
    assert out.shape == (1, 64)
    assert torch.equal(out, ref.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None))
    with pytest.raises(InputError, match="exceeds the model's context of 64"):
        ours.generate(ids, max_new_tokens=7)


def test_top_p_one_and_zero_new_tokens_are_valid(no_pad_pair):
    _, ours = no_pad_pair
    GenerationConfig(top_p=1.0)
    ids = _prompt(1, 5, seed=13)
    kw = dict(max_new_tokens=6, do_sample=True, temperature=1.0, seed=5, eos_token_id=[])
    assert torch.equal(ours.generate(ids, top_p=1.0, **kw), ours.generate(ids, **kw))   # keeps every token
    assert torch.equal(ours.generate(ids, max_new_tokens=0), ids)


def test_a_row_of_only_padding_and_a_batch_to_stream_are_refused(no_pad_pair):
    from ocellus.infer.generate import stream
    _, ours = no_pad_pair
    ids = _prompt(2, 5, seed=14)
    mask = torch.ones_like(ids)
    mask[1] = 0
    with pytest.raises(InputError, match=r"rows \[1\] of attention_mask are all padding"):
        ours.generate(ids, attention_mask=mask, max_new_tokens=2)
    with pytest.raises(InputError, match="stream\\(\\) takes one prompt, got a batch of 2"):
        next(stream(ours, None, ids, max_new_tokens=2))
