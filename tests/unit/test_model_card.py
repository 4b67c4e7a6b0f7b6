"""Model cards (issue 22): a recipe's export writes README.md (what the model is, its data and schedule, the
prompt format, limits) and `ocellus eval --card` records the measured table in it, replacing the same
evaluation when re-run and naming the types the model answers poorly."""
from pathlib import Path

import pytest

from ocellus.errors import ConfigError
from ocellus.eval.harness import evaluate
from ocellus.hub.model_card import EVAL_BEGIN, EVAL_END, record_eval
from ocellus.train.tasks import load_recipe, run_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tiny_vlm_parts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("card")
    text = tiny_vlm_parts / "text" / "model"
    return run_recipe(load_recipe(ROOT / "recipes" / "llava_tiny_shapes" / "align.yaml", [
        "train.progress=false", "train.max_steps=1", "train.warmup_steps=1", "train.batch_size=2", "data.n=4",
        f"train.out_dir={out}", f"model.llm_from={text}", f"tokenizer.from={text}",
        f"model.vision_from={tiny_vlm_parts / 'vit' / 'model'}"]))


def test_export_writes_a_card_saying_what_the_model_is(exported):
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: ocellus\npipeline_tag: image-text-to-text\n")
    assert "# llava_tiny_shapes_align" in card and "Model type `llava` (LlavaForConditionalGeneration" in card
    assert "or transformers' Auto classes" in card and "AutoProcessor.from_pretrained(dir)" in card
    assert "1 steps of batch 2, AdamW at lr 0.002" in card and "synthetic shapes world" in card
    assert '"llm": "frozen"' in card                      # which parts trained
    assert "<|im_start|>user\n<image>What colour is the circle?<|im_end|>\n<|im_start|>assistant\n" in card
    assert "Not evaluated yet" in card and "## Limits" in card and "parameters" in card


def test_eval_card_records_replaces_and_names_weak_types(exported):
    evaluate(exported, "shapes-vqa", n=4, batch_size=4, card=True, printer=lambda *a: None)
    card = (exported / "README.md").read_text()
    assert "Not evaluated yet" not in card and "### shapes-vqa: n=4, phrasing canonical, turns 1, shots 0" in card
    assert "`ocellus eval --model DIR --task shapes-vqa --n 4 --shots 0 --phrasing canonical --turns 1`" in card

    fake = {"task": "shapes-vqa", "n": 4, "phrasing": "canonical", "turns": 1, "shots": 0, "metric": "accuracy",
            "table": {"colour": (2, 1.0), "spatial": (2, 0.5), "all": (4, 0.75)}}
    record_eval(exported, fake, "cmd A")
    record_eval(exported, {**fake, "phrasing": "plain"}, "cmd B")
    card = (exported / "README.md").read_text()
    section = card.split(EVAL_BEGIN)[1].split(EVAL_END)[0]
    assert section.count("### shapes-vqa: n=4, phrasing canonical") == 1 and "cmd A" in section   # replaced
    assert "phrasing plain" in section and "cmd B" in section                                       # added
    assert "| colour | 2 | 100.0 |" in section and "Weak (below 60%): spatial (50.0%)." in section
    assert card.rstrip().endswith("demonstrate the stack with, not a general assistant.\n- Question types it answers "
                                  "poorly are listed under Evaluation once it has been evaluated.")


def test_record_eval_needs_an_ocellus_card(tmp_path):
    with pytest.raises(ConfigError, match="no Ocellus model card"):
        record_eval(tmp_path, {"table": {}}, "x")
