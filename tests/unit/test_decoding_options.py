"""The caption decoding comparison (ocellus/eval/decoding.py) passes each strategy's options and the CLI's flags to
the captioner, and scores each diversity column with its own n."""

import ocellus
from ocellus.eval import decoding
from ocellus.models.contrastive.blip import BLIP
from test_blip import shapes_tokenizer, tiny_blip


def test_score_columns_use_their_own_n():
    """distinct-1 counts unigrams and distinct-2 bigrams (4 unique of 6 words; 3 unique of 4 bigrams)."""
    scores = decoding.score(["a red circle", "a red star"], ["a red circle", "a blue star"])
    assert scores["distinct-1"] == 4 / 6 and scores["distinct-2"] == 3 / 4 and scores["exact"] == 0.5


def test_each_strategy_reaches_the_captioner_with_its_options(tmp_path, monkeypatch):
    """compare() captions with each strategy's own keyword arguments (sampling ones with a seed), and reports the
    captions the captioner wrote."""
    tok = shapes_tokenizer()
    ocellus.save(tiny_blip(tok=tok), tmp_path, tokenizer=tok)
    from ocellus.train.contrastive_run import write_preprocessor
    write_preprocessor(tmp_path, 16)
    calls, caption = [], BLIP.caption

    def spy(self, pixels, tok, **kw):
        calls.append((kw, caption(self, pixels, tok, **kw)))
        return calls[-1][1]
    monkeypatch.setattr(BLIP, "caption", spy)
    strategies = {"greedy": {}, "beam": {"num_beams": 2}, "nucleus": {"do_sample": True, "top_p": 0.8}}
    results = decoding.compare(tmp_path, n=4, strategies=strategies, max_new_tokens=4, seed=7)
    assert [kw for kw, _ in calls] == [{"max_new_tokens": 4}, {"max_new_tokens": 4, "num_beams": 2},
                                       {"max_new_tokens": 4, "seed": 7, "do_sample": True, "top_p": 0.8}]
    assert [results[name]["example"] for name in strategies] == [caps[0] for _, caps in calls]


def test_cli_flags_reach_the_strategies(monkeypatch, capsys):
    """--beams, --top-p and --seed set the beam width, the nucleus p and the sampling seed."""
    seen = {}

    def compare(model, n, strategies, seed):
        seen.update(model=model, n=n, strategies=strategies, seed=seed)
        return {name: {c: 0.0 for c in ("BLEU-4", "CIDEr-D", "exact", "distinct-1", "distinct-2", "self-BLEU-4")}
                | {"example": "x"} for name in strategies}
    monkeypatch.setattr(decoding, "compare", compare)
    assert decoding.main(["--model", "m", "--n", "10", "--beams", "5", "--top-p", "0.5", "--seed", "4"]) == 0
    assert seen == {"model": "m", "n": 10, "seed": 4, "strategies": {
        "greedy": {}, "beam (k=5)": {"num_beams": 5}, "nucleus (p=0.5)": {"do_sample": True, "top_p": 0.5}}}
    assert "beam (k=5)" in capsys.readouterr().out
