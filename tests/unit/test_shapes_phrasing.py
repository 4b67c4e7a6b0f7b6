"""Shapes QA wording (data/shapes_phrasing.py) and multi-turn QA samples: existing configs make the
samples they always made, varied wording changes only the words, several turns label every reply."""
import hashlib
import json
from pathlib import Path

import pytest

import ocellus
from ocellus.data.encode import encode_messages
from ocellus.data.shapes import ShapesConfig, sample_at, samples
from ocellus.data.shapes_phrasing import FORMS, form_of, word_question
from ocellus.errors import ConfigError
from ocellus.train.recipe_data import shapes_config as _shapes_config
from ocellus.train.tasks import load_recipe
from test_shapes import expected_answer

SUFFIX = ShapesConfig().answer_prompt
SFT_QA = ShapesConfig(seed=4, image_size=48, hard_negatives=0.7, qa_weights=(
    ("colour", 1.0), ("shape", 1.0), ("existence", 1.5), ("count", 1.5), ("spatial", 0.5)))
# sha256 of the first 50 samples' messages, answers and objects, computed before phrasing / qa_turns existed:
# a new option must draw nothing from a sample's rng unless it is switched on.
PINNED = [(SFT_QA, "qa", "b18879b9ff75c7c2"), (ShapesConfig(seed=7), "mixed", "c404d81b6dcf98f6"),
          (ShapesConfig(seed=1), "grounding", "ccdffb7f40648d8f"),
          (ShapesConfig(seed=3, conversation_turns=(1, 4)), "conversation", "c34c5510c6af4492"),
          (ShapesConfig(image_size=48, seed=10_007), "qa", "36c19bffc228b6b9")]  # the eval set (min_size 0.18)


def _text(message) -> str:
    return " ".join(p["text"] for p in message["content"] if p["type"] == "text")


def _users(sample):
    return [_text(m) for m in sample["messages"] if m["role"] == "user"]


@pytest.mark.parametrize("cfg,kind,digest", PINNED, ids=[k for _, k, _ in PINNED])
def test_existing_configs_make_the_pinned_samples(cfg, kind, digest):
    h = hashlib.sha256()
    for i in range(50):
        s = sample_at(cfg, i, kind)
        h.update(json.dumps([s["messages"], s["answer"], s["objects"]]).encode())
    assert h.hexdigest()[:16] == digest


def test_varied_wording_keeps_scene_question_and_answer_and_uses_every_paraphrase():
    weights = (("colour", 1.0), ("shape", 1.0), ("count", 1.0), ("existence", 1.0), ("spatial", 3.0),  # 3 forms
               ("position", 1.0))
    canonical = ShapesConfig(seed=2, qa_weights=weights)
    varied = ShapesConfig(seed=2, qa_weights=weights, phrasing="varied")
    used, spellings, suffixes = set(), set(), set()
    for i in range(200):
        c, v = sample_at(canonical, i, "qa"), sample_at(varied, i, "qa")
        assert (v["objects"], v["type"], v["answer"], v["messages"][1]) == (c["objects"], c["type"], c["answer"],
                                                                            c["messages"][1])
        assert v["images"][0].tobytes() == c["images"][0].tobytes()
        text = _users(v)[0]
        suffixes.add(text.endswith("\n" + SUFFIX))
        if "colo" in text:
            spellings.add("color" in text)
        asked = text.removesuffix("\n" + SUFFIX).replace("color", "colour")
        form, slots = form_of(_users(c)[0].removesuffix("\n" + SUFFIX))  # the same object, the same relation
        k = [t.format(**slots) for t in FORMS[form][1]].index(asked)
        used.add((form, k))
    assert used == {(form, k) for form, (_, templates) in FORMS.items() for k in range(len(templates))}
    assert spellings == {True, False} and suffixes == {True, False}


def test_varied_conversations_keep_their_answers():
    for i in range(20):
        c = sample_at(ShapesConfig(seed=3), i, "conversation")
        v = sample_at(ShapesConfig(seed=3, phrasing="varied"), i, "conversation")
        assert (v["answer"], v["turn_types"], v["objects"]) == (c["answer"], c["turn_types"], c["objects"])


def test_us_phrasing_spells_the_canonical_question_the_us_way():
    texts = ["\n".join(_users(s)) for s in samples(ShapesConfig(seed=2, phrasing="us", answer_prompt=None), 60, "qa")]
    assert any("What color is the" in t for t in texts)
    assert not any("colour" in t or SUFFIX in t for t in texts)
    assert word_question("What colour is the star?", "us", SUFFIX) == f"What color is the star?\n{SUFFIX}"


def test_multi_turn_qa_labels_every_reply_and_puts_the_image_once():
    processor = ocellus.load_processor(ocellus.default_model_dir())
    cfg = ShapesConfig(seed=5, image_size=48, qa_turns=(1, 3))
    lengths = set()
    for i in range(40):
        s, single = sample_at(cfg, i, "qa"), sample_at(ShapesConfig(seed=5, image_size=48), i, "qa")
        messages = s["messages"]
        turns = len(messages) // 2
        lengths.add(turns)
        assert [m["role"] for m in messages] == ["user", "assistant"] * turns and len(s["images"]) == 1
        assert [p["type"] for m in messages for p in m["content"]].count("image") == 1
        assert messages[0]["content"][0]["type"] == "image" and messages[:2] == single["messages"]
        replies = [_text(m) for m in messages[1::2]]
        assert (s["answer"], s.get("turn_answers", replies)) == (replies[-1], replies)
        checked = [expected_answer(q, s["objects"]) for q in _users(s)]  # (type, answer) from the objects alone
        assert checked == list(zip(s.get("turn_types", [s["type"]]), replies)) and s["type"] == checked[-1][0]
        counts = processor.image_inputs(s["images"])[1]
        enc = encode_messages(messages, processor.tokenizer, "chatml", images_tokens=counts)
        trained = processor.decode([t for t in enc.labels if t != -100])
        assert trained == "".join(f"{a}<|im_end|>" for a in replies)  # every reply + its end, nothing else
    assert lengths == {1, 2, 3}


def test_config_and_recipe_wiring():
    sft = Path(__file__).parents[2] / "recipes/llava_tiny_shapes/sft.yaml"
    cfg = _shapes_config(load_recipe(sft, ["data.phrasing=varied", "data.qa_turns=[1, 2]"])["data"])
    assert (cfg.phrasing, cfg.qa_turns, cfg.seed, cfg.hard_negatives) == ("varied", (1, 2), 4, 0.7)
    for override in ("data.phrasing=british", "data.qa_turns=2", "data.phrasings=varied"):
        with pytest.raises(ConfigError, match="phrasing|qa_turns"):
            _shapes_config(load_recipe(sft, [override])["data"])
    for bad in ({"phrasing": "british"}, {"qa_turns": (0, 2)}, {"qa_turns": (3, 2)}):
        with pytest.raises(ConfigError):
            ShapesConfig(**bad)
    with pytest.raises(ConfigError, match="qa_turns"):
        _shapes_config({"qa_turns": 2})
    with pytest.raises(ConfigError, match="no paraphrases"):
        word_question("Why is the sky blue?", "varied", None, None)
