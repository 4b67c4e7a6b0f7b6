"""`ocellus eval --task shapes-vqa --phrasing P --turns K`: the prompts the model is given, read back from
the token ids a stand-in model receives (the embedded model's processor and chat template)."""
from types import SimpleNamespace

import pytest
import torch

import ocellus
from ocellus.cli import build_parser
from ocellus.data.encode import encode_messages
from ocellus.data.shapes_phrasing import phrasing_rng, to_us, word_question
from ocellus.errors import ConfigError
from ocellus.eval.harness import EVAL_SEED, evaluate, task_samples

SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def processor():
    return ocellus.load_processor(ocellus.default_model_dir())


class Replier:
    """A stand-in model: keeps every prompt batch it is given and answers round r with replies[r]."""

    def __init__(self, processor, replies):
        self.processor, self.replies, self.batches = processor, replies, []
        self.vision_tower = SimpleNamespace(config=SimpleNamespace(image_size=48))

    def generate(self, input_ids, attention_mask, max_new_tokens, **images):
        self.batches.append([row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)])
        tok = self.processor.tokenizer
        reply = tok.encode(self.replies[len(self.batches) - 1], add_special_tokens=False) + [tok.eos_token_id]
        return torch.cat([input_ids, torch.tensor([reply] * len(input_ids))], 1)


def _run(processor, replies, **kw):
    model = Replier(processor, replies)
    result = evaluate(None, "shapes-vqa", n=3, model=model, processor=processor, printer=lambda *a: None, **kw)
    return model, result


def _prompt(question: str, image_tokens: int) -> str:
    return f"<|im_start|>user\n{'<image>' * image_tokens}{question}<|im_end|>\n<|im_start|>assistant\n"


def test_phrasing_words_the_question_it_names(processor):
    canonical = [s["messages"][0]["content"][1]["text"] for s in task_samples("shapes-vqa", 3, 48)]
    plain = [q.removesuffix(SUFFIX) for q in canonical]
    assert all(q != p for q, p in zip(canonical, plain))
    expected = {"canonical": canonical, "plain": plain, "us": [to_us(q) for q in plain],
                "varied": [word_question(q, "varied", SUFFIX[1:], phrasing_rng(EVAL_SEED, i))
                           for i, q in enumerate(plain)]}
    assert any("colour" in q for q in plain) and expected["us"] != plain and expected["varied"] != canonical
    n_image = processor.image_inputs(task_samples("shapes-vqa", 1, 48)[0]["images"])[1][0]
    for phrasing, questions in expected.items():
        model, result = _run(processor, ["blue"], phrasing=phrasing)
        assert [processor.decode(ids) for ids in model.batches[0]] == [_prompt(q, n_image) for q in questions]
        assert [e["pred"] for e in result["examples"]] == ["blue"] * 3 and result["phrasing"] == phrasing


def test_turns_ask_the_last_question_after_the_models_own_replies(processor):
    model, result = _run(processor, ["zebra", "blue"], turns=2, phrasing="us")
    samples = task_samples("shapes-vqa", 3, 48, phrasing="us", turns=2)
    assert len(model.batches) == 2 and [e["pred"] for e in result["examples"]] == ["blue"] * 3
    for s, first, second in zip(samples, *model.batches):
        user1, gold1, user2, _ = s["messages"]
        assert "zebra" not in gold1["content"][0]["text"]
        asked = [user1, {"role": "assistant", "content": [{"type": "text", "text": "zebra"}]}, user2]
        counts = processor.image_inputs(s["images"])[1]
        # the prompt is the training encoding of the same turns (one image, the model's reply as the assistant's)
        assert second == encode_messages(asked, processor.tokenizer, "chatml", images_tokens=counts,
                                         add_generation_prompt=True).input_ids
        text = processor.decode(second)
        assert text.startswith(processor.decode(first)) and text.count("<image>") == counts[0]
        assert text.endswith(f"zebra<|im_end|>\n{_prompt(user2['content'][0]['text'], 0)}")
        assert "colour" not in text and SUFFIX not in text
    assert [e["question"] for e in result["examples"]] == [s["messages"][2]["content"][0]["text"] for s in samples]


def test_cli_passes_phrasing_and_turns(monkeypatch):
    seen = {}
    monkeypatch.setattr("ocellus.eval.harness.evaluate", lambda *a, **kw: seen.update(kw))
    args = build_parser().parse_args(["eval", "--model", "m", "--task", "shapes-vqa", "--phrasing", "plain",
                                      "--turns", "3"])
    args.func(args)
    assert (seen["phrasing"], seen["turns"]) == ("plain", 3)
    with pytest.raises(ConfigError, match="shapes-vqa only"):
        task_samples("shapes-caption", 2, 48, phrasing="us")
    with pytest.raises(ConfigError, match="turns >= 1"):
        task_samples("shapes-vqa", 2, 48, turns=0)
