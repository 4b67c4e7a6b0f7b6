"""Beam search ends a hypothesis at a stop string (infer/beam.py with infer/stop_text.py), checked against a
reference written here from the rule alone: plain lists, one prompt, every continuation scored by a full forward
without a cache. A hypothesis whose text holds a stop string is finished with its ids cut before it, scored as
an eos-ended reply of its kept tokens: the running score (the stop string's tokens included) over
(kept + 1) ** length_penalty. A tiny random decoder with a peaked head (so hypotheses do not tie) writes byte-level
BPE text; the stop strings are pieces of its own stop-free answer."""
import pytest
import torch

from ocellus.errors import ConfigError
from ocellus.infer.beam import beam_search
from ocellus.infer.generate import GenerationConfig, prepare_prompt
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.nn.rope import RopeConfig

from _byte_bpe import byte_bpe_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

K, MAX_NEW = 3, 8
PROMPT = [7, 42, 99, 13]
ASCII = [chr(c) for c in range(33, 127)] + ["Ġ"]   # printable ASCII and byte-level's space: every token is text


@pytest.fixture(scope="module")
def tok():
    return byte_bpe_tokenizer(["<pad>", "</s>"], ASCII)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope=RopeConfig.from_hf({}, 8),
                        tie_word_embeddings=False, eos_token_id=None, pad_token_id=0)
    m = DecoderLM(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(6.0)      # peaked next-token distributions: clear winners, no near-ties
    return m


def reference_beam(model, tok, stops, length_penalty=1.0, kept_norm=lambda kept, generated: kept + 1):
    """(score, generated ids) of the best hypothesis. kept_norm(kept, generated) -> the length a stopped
    hypothesis is normalised over (the rule: kept + 1; other values show the test can tell)."""
    def logp(ids):
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=torch.tensor([PROMPT + ids])).logits[0, -1].float(), -1)

    running, finished = [([], 0.0)], []                         # (ids, running score), (normalised score, ids)
    for step in range(MAX_NEW):
        cands = sorted(((s + float(lp), ids + [v]) for ids, s in running for v, lp in enumerate(logp(ids))),
                       key=lambda c: -c[0])[:2 * K]
        running = []
        for rank, (s, ids) in enumerate(cands):
            text = tok.decode(ids, skip_special_tokens=True)
            starts = [text.find(stop) for stop in stops if stop in text]
            if starts:                          # ends before the stop string: the most whole tokens whose text fits
                before = text[:min(starts)]
                kept = max(n for n in range(len(ids)) if before.startswith(tok.decode(ids[:n])))
                if rank < K:
                    finished.append((s / kept_norm(kept, len(ids)) ** length_penalty, ids[:kept]))
            elif step == MAX_NEW - 1:           # the length limit
                if rank < K:
                    finished.append((s / len(ids) ** length_penalty, ids))
            elif len(running) < K:
                running.append((ids, s))
        finished = sorted(finished, key=lambda f: -f[0])[:K]
        # transformers' heuristic: done once K have finished and the best running beam, scored at its current
        # length, cannot beat the worst of them
        if not running or (len(finished) == K and running[0][1] / (step + 1) ** length_penalty <= finished[-1][0]):
            break
    return finished[0]


def _beam(model, tok, stops, length_penalty=1.0) -> list[int]:
    out = model.generate(torch.tensor([PROMPT]), tokenizer=tok, num_beams=K, max_new_tokens=MAX_NEW,
                         stop_strings=stops, length_penalty=length_penalty)
    return out[0, len(PROMPT):].tolist()


# (stop string, length penalty): "Z" ends the stop-free answer "Aucl I+#Z" at its last token; "#Z" / "+#Z" take
# two and three tokens; "l " begins inside the token "cl" (which is dropped whole); at penalty 0 "I" is beaten
# by a hypothesis that stops at once, and "#" by one that never meets it
CASES = [("Z", 1.0), ("#Z", 1.0), ("+#Z", 2.0), ("l ", 0.0), ("I", 0.0), ("#", 1.0), ("u", 1.0), ("uc", 1.0)]


def test_a_stop_string_ends_the_hypothesis_before_it(model, tok):
    free = _beam(model, tok, ())
    assert tok.decode(free) == "Aucl I+#Z"
    got = _beam(model, tok, ("Z",))
    assert got == free[:-1] and tok.decode(got) == "Aucl I+#"       # the same hypothesis, ended before "Z"
    assert _beam(model, tok, ("l ",), 0.0) == free[:2]                # "Au": "cl" holds the stop's start


@pytest.mark.parametrize("stop,length_penalty", CASES)
def test_beam_with_stop_strings_equals_the_reference(model, tok, stop, length_penalty):
    got = _beam(model, tok, (stop,), length_penalty)
    assert got == reference_beam(model, tok, (stop,), length_penalty)[1]
    assert stop not in tok.decode(got)


def test_the_reference_tells_the_normalising_length_apart(model, tok):
    """Counting only the kept tokens (an empty reply over 1), or all generated ones (the stop string's too), picks
    other answers in some CASES: the comparison above would see either mistake."""
    for wrong in (lambda kept, generated: max(kept, 1), lambda kept, generated: generated):
        assert any(reference_beam(model, tok, (s,), lp)[1] != reference_beam(model, tok, (s,), lp, wrong)[1]
                   for s, lp in CASES)


def test_a_batch_ends_each_row_at_its_own_stop(model, tok):
    other = [5, 61, 2, 80]
    rows = torch.tensor([PROMPT, other])
    out = model.generate(rows, tokenizer=tok, num_beams=K, max_new_tokens=MAX_NEW, stop_strings=("Z",))
    for row, prompt in zip(out, rows):
        alone = model.generate(prompt[None], tokenizer=tok, num_beams=K, max_new_tokens=MAX_NEW, stop_strings=("Z",))
        n = alone.shape[1]
        assert torch.equal(row[:n], alone[0]) and bool((row[n:] == 0).all())     # shorter rows: pad after
    assert out.shape[1] > len(PROMPT) + len(_beam(model, tok, ("Z",)))           # the other row is longer
    with pytest.raises(ConfigError, match="tokenizer"):
        model.generate(rows, num_beams=K, max_new_tokens=MAX_NEW, stop_strings=("Z",))
    no_pad = GenerationConfig(num_beams=K, max_new_tokens=MAX_NEW, stop_strings=("Z",), eos_token_id=())
    with pytest.raises(ConfigError, match="pad_token_id"):     # a model with neither pad nor eos: nothing to pad with
        beam_search(model, prepare_prompt(model, rows, None, MAX_NEW), no_pad, tokenizer=tok)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_stop_strings_without_a_tokenizer_are_a_typed_error(model, num_beams):
    """Greedy and beam search alike: stop strings are matched on text, which needs the tokenizer."""
    with pytest.raises(ConfigError, match="stop_strings need a tokenizer"):
        model.generate(torch.tensor([PROMPT]), max_new_tokens=2, num_beams=num_beams, stop_strings=["x"])
