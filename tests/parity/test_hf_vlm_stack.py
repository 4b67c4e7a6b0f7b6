"""The HF stack both ways for vision-language models: what Ocellus exports is prompted and run by
transformers' AutoProcessor + AutoModelForImageTextToText exactly as by Ocellus (same prompt ids, same
pixels, same logits, same greedy tokens), for the embedded default model and for the LLaVA / LLaVA-NeXT
export of a recipe."""
from pathlib import Path

import numpy as np
import pytest
import torch

import ocellus
from ocellus.data.shapes import ShapesConfig, make_scene, render
from ocellus.train.tasks import load_recipe, run_recipe

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ("What colour is the circle?", "How many shapes are there?", "Is there a red square?")


def _both_ways(path: Path, image_size: int, new_tokens: int = 6) -> None:
    ours_model, ours_proc = ocellus.load(path).eval(), ocellus.load_processor(path)
    hf_proc = transformers.AutoProcessor.from_pretrained(path)
    hf_model = transformers.AutoModelForImageTextToText.from_pretrained(path).eval()
    for i, question in enumerate(QUESTIONS):
        image = render(make_scene(np.random.default_rng(i), ShapesConfig(image_size=image_size)))
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        ours = ours_proc(messages=messages, images=[image])
        text = hf_proc.apply_chat_template(messages, add_generation_prompt=True)
        theirs = hf_proc(images=[image], text=text, return_tensors="pt")
        assert torch.equal(ours["input_ids"], theirs["input_ids"]), question
        torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"], rtol=0, atol=1e-6)
        inputs = {k: v for k, v in theirs.items() if k != "token_type_ids"}
        with torch.no_grad():
            torch.testing.assert_close(ours_model(**ours).logits, hf_model(**inputs).logits, rtol=1e-4, atol=1e-4)
            want = hf_model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
            got = ours_model.generate(**ours, max_new_tokens=new_tokens)
        prompt = ours["input_ids"].shape[1]                  # both return prompt + continuation, EOS-stopped
        assert got[0, prompt:].tolist() == want[0, prompt:].tolist(), question


def test_default_model_runs_in_transformers_as_in_ocellus():
    _both_ways(ocellus.default_model_dir(), image_size=48)


@pytest.mark.parametrize("recipe", ["llava_tiny_shapes/align", "llava_next_tiny_shapes/train"])
def test_recipe_export_runs_in_transformers_as_in_ocellus(recipe, tiny_vlm_parts, tmp_path):
    text = tiny_vlm_parts / "text" / "model"
    path = run_recipe(load_recipe(ROOT / "recipes" / f"{recipe}.yaml", [
        "train.progress=false", "train.max_steps=1", "train.warmup_steps=1", "train.batch_size=2", "data.n=4",
        f"train.out_dir={tmp_path}", f"model.llm_from={text}", f"tokenizer.from={text}",
        f"model.vision_from={tiny_vlm_parts / 'vit' / 'model'}"]))
    assert (path / "chat_template.jinja").is_file() and (path / "processor_config.json").is_file()
    _both_ways(path, image_size=48)
