"""Post-training data formats (explicit / implicit prompts, prompt-only rows), the prompt + completion
layout every method scores, and the reward-function contract (errors, NaN, None)."""
import math

import pytest
import torch
import torch.nn.functional as F

import ocellus
from ocellus.data.shapes import ShapesConfig
from ocellus.errors import InputError
from ocellus.train import preference
from ocellus.train.preference import (collate_pairs, plausible_wrong, preference_pair, prompt_row,
                                      shapes_preference, shapes_prompt, with_model_rejections)
from ocellus.train.rewards import (count_format_reward, count_reward, exact_answer_reward, iou_reward,
                                   score_completions)
from ocellus.train.rollout import encode_completions, sample_completions, token_logprobs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    d = ocellus.default_model_dir()
    return ocellus.load(d).eval(), ocellus.load_processor(d)


USER = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]


def _reply(text):
    return [{"role": "assistant", "content": text}]


def test_explicit_and_implicit_prompts_agree():
    explicit = preference_pair({"prompt": USER, "chosen": "3", "rejected": _reply("2"), "images": ["a"]}, 0)
    implicit = preference_pair({"chosen": USER + _reply("3"), "rejected": USER + _reply("2"), "images": ["a"]}, 0)
    assert explicit == implicit
    assert (explicit.chosen, explicit.rejected, explicit.prompt[-1]["role"]) == ("3", "2", "user")
    text = preference_pair({"prompt": "Say hi", "chosen": "hi", "rejected": "bye", "kind": "x"})
    assert text.prompt == [{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}]
    assert text.extra == {"kind": "x"}


@pytest.mark.parametrize("row, message", [
    ({"prompt": USER, "chosen": "3", "rejected": " 3 ", "images": ["a"]}, "same completion"),
    ({"prompt": USER, "chosen": "", "rejected": "2", "images": ["a"]}, "chosen is empty"),
    ({"prompt": USER, "chosen": "3", "rejected": "   ", "images": ["a"]}, "rejected is empty"),
    ({"prompt": USER, "chosen": "3", "rejected": "2", "images": []}, "image"),
    ({"prompt": USER + _reply("x"), "chosen": "3", "rejected": "2", "images": ["a"]}, "end on a user turn"),
    ({"chosen": USER + _reply("3"), "rejected": USER + _reply("3"), "images": ["a"]}, "identical"),
    ({"chosen": _reply("3"), "rejected": USER + _reply("2")}, "share no leading message"),
    ({"chosen": USER + _reply("3") + USER + _reply("1"), "rejected": USER + _reply("2") + USER + _reply("1"),
      "images": ["a", "b"]}, "exactly one assistant reply"),
    ({"prompt": USER, "chosen": USER, "rejected": "2", "images": ["a"]}, "one assistant reply"),
    ({"prompt": USER, "chosen": "3"}, "needs 'chosen' and 'rejected'"),
])
def test_bad_preference_rows_are_input_errors(row, message):
    with pytest.raises(InputError, match=message):
        preference_pair(row, 7)


def test_prompt_rows_keep_their_columns_and_are_checked():
    row = prompt_row({"prompt": USER, "images": ["a"], "answer": "3", "type": "count"}, 0)
    assert row.columns == {"answer": "3", "type": "count"} and row.images == ["a"]
    with pytest.raises(InputError, match="needs 'prompt'"):
        prompt_row({"images": ["a"]}, 1)
    with pytest.raises(InputError, match="image"):
        prompt_row({"prompt": USER}, 2)


def test_shapes_preference_rows_are_gold_vs_plausible_wrong():
    cfg = ShapesConfig(image_size=48, seed=3)
    for i in range(40):
        row = shapes_preference(cfg, i)
        pair = preference_pair(row, i)
        assert pair.chosen != pair.rejected
        if row["type"] == "count":
            assert abs(int(pair.chosen) - int(pair.rejected)) == 1 and int(pair.rejected) >= 0
        elif row["type"] == "colour":
            assert pair.rejected in cfg.colours
        elif row["type"] == "shape":
            assert pair.rejected in cfg.shapes
        else:
            assert {pair.chosen, pair.rejected} in ({"yes", "no"}, {"left", "right"}, {"above", "below"})
    with pytest.raises(InputError, match="no plausible wrong answer"):
        plausible_wrong({"answer": "x", "type": "caption", "objects": []}, None)
    prompt = shapes_prompt(cfg, 0, "grounding")
    assert "<box>" in prompt["answer"] and prompt["prompt"][-1]["role"] == "user"


def test_pair_layout_and_token_logprobs_match_a_full_forward(tiny):
    model, proc = tiny
    cfg = ShapesConfig(image_size=48, seed=5)
    pairs = [preference_pair(shapes_preference(cfg, i), i) for i in range(3)]
    batch = collate_pairs(proc)(pairs)
    B2, C = batch["completion_mask"].shape
    assert B2 == 6 and torch.equal(batch["pixel_values"][:3], batch["pixel_values"][3:])
    eos = proc.eos_token_id
    for b, text in enumerate([p.chosen for p in pairs] + [p.rejected for p in pairs]):
        n = int(batch["completion_mask"][b].sum())
        ids = batch["input_ids"][b, -C:][:n].tolist()
        assert ids[-1] == eos and proc.decode(ids[:-1]) == text       # the reply, then its end token
    lp = token_logprobs(model, batch)
    full = F.log_softmax(model(**{k: v for k, v in batch.items() if k != "completion_mask"}).logits.float(), -1)
    T = batch["input_ids"].shape[1]
    for b in range(B2):
        for c in range(C):
            if batch["completion_mask"][b, c]:
                t = T - C + c
                assert lp[b, c].item() == pytest.approx(full[b, t - 1, batch["input_ids"][b, t]].item(), abs=1e-5)
            else:
                assert lp[b, c].item() == 0.0


def test_empty_completion_is_one_end_token(tiny):
    _, proc = tiny
    cfg = ShapesConfig(image_size=48, seed=5)
    row = shapes_prompt(cfg, 0)
    batch = encode_completions(proc, [row["prompt"]], [""], [row["images"]])
    assert batch["completion_mask"].tolist() == [[1]] and batch["input_ids"][0, -1].item() == proc.eos_token_id


def test_sampled_completions_are_grouped_and_scored_in_their_context(tiny):
    model, proc = tiny
    cfg = ShapesConfig(image_size=48, seed=6)
    rows = [shapes_prompt(cfg, i) for i in range(2)]
    r = sample_completions(model, proc, [x["prompt"] for x in rows], [x["images"] for x in rows], 3, 5, seed=0)
    assert len(r.completions) == 6 and r.batch["input_ids"].shape[0] == 6
    assert torch.equal(r.batch["pixel_values"][0], r.batch["pixel_values"][2])
    assert not torch.equal(r.batch["pixel_values"][0], r.batch["pixel_values"][3])
    again = encode_completions(proc, [rows[0]["prompt"]] * 3 + [rows[1]["prompt"]] * 3, r.completions,
                               [rows[0]["images"]] * 3 + [rows[1]["images"]] * 3)
    finished = ~r.truncated
    a, b = token_logprobs(model, r.batch).sum(-1), token_logprobs(model, again).sum(-1)
    assert torch.allclose(a[finished], b[finished], atol=1e-4)   # sampled ids re-encode to the same ids


def test_on_policy_rejections_replace_only_wrong_answers(monkeypatch):
    """The model's own answer becomes the rejected one only where it is wrong and not empty."""
    rows = [{"prompt": USER, "images": [], "chosen": c, "rejected": "green"} for c in ("red", "red", "red", "2")]
    answers = ["Red", "blue", " ", "3"]
    monkeypatch.setattr(preference, "predict", lambda model, proc, samples, shots, **kw: answers[:len(samples)])

    class Model:
        def eval(self):
            return self
    out, share = with_model_rejections(Model(), None, rows)
    assert [r["rejected"] for r in out] == ["green", "blue", "green", "3"]
    assert share == 0.5 and [r["chosen"] for r in out] == ["red", "red", "red", "2"]


# ---- rewards -------------------------------------------------------------------------------------------

def test_verifiable_rewards():
    assert count_reward(None, ["3", "three", "2", ""], ["3"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert exact_answer_reward(None, ["Red.", "blue", "2"], ["red", "red", "2"]) == [1.0, 0.0, 1.0]
    gold = "<ref>red circle</ref><box>(100,100),(300,300)</box>"
    half = "<ref>red circle</ref><box>(100,100),(300,200)</box>"
    assert iou_reward(None, [gold, half, "no box", "<box>(5,5),(1,1)</box>"], [gold] * 4) == [1.0, 0.5, 0.0, 0.0]
    assert iou_reward(None, [gold + half, half + gold], [gold] * 2) == [1.0, 0.5]     # the first box answers
    assert count_format_reward(None, ["3", " 12 ", "3 circles", "three", ""]) == [1.0, 1.0, 0.0, 0.0, 0.0]
    with pytest.raises(InputError, match="holds no box"):
        iou_reward(None, ["x"], ["no box"])


def test_score_completions_handles_bad_reward_functions_explicitly():
    cols = {"answer": ["1", "2"]}

    def boom(prompts, completions, **_):
        raise RuntimeError("parser crashed")

    def nan(prompts, completions, **_):
        return [1.0, math.nan]

    def partial(prompts, completions, **_):
        return [None, 2.0]

    def nothing(prompts, completions, **_):
        return [None, None]

    def short(prompts, completions, **_):
        return [1.0]

    def text(prompts, completions, **_):
        return ["1", 1.0]

    with pytest.raises(InputError, match="'boom' raised RuntimeError: parser crashed"):
        score_completions([boom], [0, 0], ["1", "2"], cols)
    with pytest.raises(InputError, match="'nan' returned nan for completion 1"):
        score_completions([nan], [0, 0], ["1", "2"], cols)
    with pytest.raises(InputError, match="returned 1 values for 2"):
        score_completions([short], [0, 0], ["1", "2"], cols)
    with pytest.raises(InputError, match="expected a number"):
        score_completions([text], [0, 0], ["1", "2"], cols)
    with pytest.raises(InputError, match=r"completions \[0, 1\] got None from every reward function"):
        score_completions([nothing], [0, 0], ["1", "2"], cols)
    with pytest.raises(InputError, match="column 'answer' has 2 values for 3"):
        score_completions([count_reward], [0] * 3, ["1", "2", "3"], cols)
    # None = not applicable: left out of that sample's weighted sum
    total, means = score_completions([count_reward, partial], [0, 0], ["1", "3"], cols, weights=[1.0, 0.5])
    assert total.tolist() == [1.0, 1.0] and means == {"count_reward": 0.5, "partial": 2.0}
