"""Generation settings against transformers on the same random logits and on the same tiny Llama:
- no_repeat_ngram_size and min_new_tokens process the scores as transformers' NoRepeatNGramLogitsProcessor and
  MinNewTokensLengthLogitsProcessor do (exactly), and greedy / beam ids with them equal transformers' generate;
- a checkpoint's generation_config.json gives the defaults transformers' generate takes from it (an eos list,
  repetition penalty, n-grams, min length); the caller's keywords override them; a field Ocellus lacks is
  warned about by name, one at its "off" value is not; save writes the file back.
Before, generation_config.json was never read, and neither setting existed."""
import json
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import (  # noqa: E402
    LogitsProcessorList, MinNewTokensLengthLogitsProcessor, NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

import ocellus  # noqa: E402
from ocellus.errors import ConfigError  # noqa: E402
from ocellus.infer.sampling import process_logits  # noqa: E402
from _init import spread_init  # noqa: E402
from conftest import build_reference  # noqa: E402

EOS = 5


@pytest.mark.parametrize("seed", range(12))
def test_ngram_and_min_new_tokens_process_scores_like_transformers(seed):
    g = torch.Generator().manual_seed(seed)
    B, V, T, n, prompt, min_new = 3, 12, 9, 1 + seed % 3, 4, 2 + seed % 5
    scores = torch.randn(B, V, generator=g).round()                       # ties
    seen = torch.randint(0, 4, (B, T), generator=g)                      # small alphabet: n-grams repeat
    eos = [EOS, 7]
    ref = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.3), NoRepeatNGramLogitsProcessor(n),
                               MinNewTokensLengthLogitsProcessor(prompt, min_new, eos), TemperatureLogitsWarper(0.7),
                               TopKLogitsWarper(8), TopPLogitsWarper(0.9)])(seen, scores.clone())
    ours = process_logits(scores.clone(), seen, do_sample=True, temperature=0.7, top_k=8, top_p=0.9,
                          repetition_penalty_=1.3, no_repeat_ngram_size=n,
                          banned=torch.tensor(eos) if T - prompt < min_new else None)
    assert torch.equal(ours, ref)


@pytest.fixture(scope="module")
def ref():
    model = spread_init(build_reference("llama", eos_token_id=EOS))
    with torch.no_grad():
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.mul_(3)                          # peaked: no near-ties for a different matmul order to flip
        head.add_(emb * head.norm(dim=1, keepdim=True) / emb.norm(dim=1, keepdim=True))   # echoes: n-grams repeat
        head[EOS] = head[10] * 1.02           # eos wherever 10 would come: early, and again right after min length
    return model


@pytest.fixture(scope="module")
def pair(ref, tmp_path_factory):
    path = tmp_path_factory.mktemp("settings")
    ref.save_pretrained(path)
    return ref, ocellus.load(path)


def _prompt(b=2, t=6, seed=2):
    return torch.randint(6, 20, (b, t), generator=torch.Generator().manual_seed(seed))   # few ids: n-grams repeat


@pytest.mark.parametrize("kw", [
    dict(no_repeat_ngram_size=2, eos_token_id=7), dict(no_repeat_ngram_size=1, max_new_tokens=12),
    dict(min_new_tokens=6), dict(min_new_tokens=3),    # eos comes again right at the minimum
    dict(num_beams=3, no_repeat_ngram_size=2), dict(num_beams=3, min_new_tokens=5, length_penalty=0.5),
    dict(num_beams=2, min_new_tokens=3),
    dict(min_new_tokens=4, eos_token_id=[EOS, 7], repetition_penalty=1.4, no_repeat_ngram_size=3),
])
def test_generate_with_ngrams_and_min_length_like_transformers(pair, kw):
    ref, ours = pair
    ids, kw = _prompt(), {"max_new_tokens": 10, **kw}
    want = ref.generate(ids, do_sample=False, **kw)
    assert torch.equal(ours.generate(ids, **kw), want)
    plain = {k: v for k, v in kw.items() if k not in ("no_repeat_ngram_size", "min_new_tokens")}
    assert not torch.equal(ref.generate(ids, do_sample=False, **plain), want)   # the settings decided something


FILE = {"eos_token_id": [EOS, 7], "repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_new_tokens": 3,
        "bos_token_id": 1, "transformers_version": "5.0.0", "typical_p": 1.0, "num_return_sequences": 1,
        "temperature": None}   # null: Ocellus' default


@pytest.fixture(scope="module")
def with_file(ref, tmp_path_factory):
    path = tmp_path_factory.mktemp("genfile")
    ref.save_pretrained(path)
    (path / "generation_config.json").write_text(json.dumps(FILE))
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval(), ocellus.load(path), path


def test_generation_config_json_gives_the_defaults(with_file, caplog):
    hf, ours, _ = with_file
    ids = _prompt(seed=5)
    with caplog.at_level(logging.WARNING, logger="ocellus"):
        got = ours.generate(ids, max_new_tokens=10)
    assert torch.equal(got, hf.generate(ids, max_new_tokens=10))
    assert not caplog.records          # every field it sets is used, inert or at its off value
    plain = dict(repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0, eos_token_id=EOS)
    assert torch.equal(ours.generate(ids, max_new_tokens=10, **plain), hf.generate(ids, max_new_tokens=10, **plain))


def test_a_field_ocellus_lacks_is_warned_about_by_name(with_file, caplog):
    _, ours, _ = with_file
    ours.generation_defaults = {**FILE, "typical_p": 0.5, "epsilon_cutoff": 0.0003}
    try:
        with caplog.at_level(logging.WARNING, logger="ocellus"):
            ours.generate(_prompt(), max_new_tokens=2)
        assert "epsilon_cutoff=0.0003" in caplog.text and "typical_p=0.5" in caplog.text
        ours.generation_defaults = {**FILE, "top_p": 0.0}
        with pytest.raises(ConfigError, match="top_p"):   # a bad value in the file is refused like a keyword
            ours.generate(_prompt(), max_new_tokens=2)
    finally:
        ours.generation_defaults = dict(FILE)


def test_save_writes_the_generation_defaults_back(with_file, tmp_path):
    _, ours, _ = with_file
    ocellus.save(ours, tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text()) == FILE
    assert ocellus.load(tmp_path).generation_defaults == FILE


@pytest.mark.parametrize("beams", [1, 3])
def test_repetition_penalty_skips_left_padding_like_transformers(pair, beams):
    """transformers' generate does not count a row's left padding as seen tokens: padding written with the very
    token the row goes on to choose must not push it down."""
    ref, ours = pair
    ids = _prompt(2, 8, seed=3)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    kw = dict(max_new_tokens=6, repetition_penalty=3.0, num_beams=beams, eos_token_id=7)
    alone = ref.generate(ids[:1, 3:], do_sample=False, **kw)[0, 5:]                 # row 0 unpadded
    padded = ids.masked_fill(mask == 0, int(alone[0]))
    want = ref.generate(padded, attention_mask=mask, do_sample=False, **kw)
    assert torch.equal(want[0, 8:], alone)                                          # the padding counted nothing
    assert torch.equal(ours.generate(padded, attention_mask=mask, **kw), want)
