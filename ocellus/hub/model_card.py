"""Model cards: the README.md of an exported model directory, as the Hugging Face Hub shows it.

A recipe's export writes one (what the model is, its parts, what it was trained on and how, the prompt
format it expects, known limits); `ocellus eval --card` records each evaluation in it, between markers,
so the card's table is the measured one and says which command produced it. Types scored below
WEAK_BELOW are listed as weaknesses: the card states what the model cannot do, not only what it can.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from safetensors import safe_open

from ocellus.errors import ConfigError

EVAL_BEGIN, EVAL_END = "<!-- ocellus:eval -->", "<!-- /ocellus:eval -->"
WEAK_BELOW = 0.6
# the post-training methods (train/tasks: dpo, grpo, ppo, distill) tune a VLM; rm's export is a VLM backbone + a head
IMAGE_TEXT_TASKS = ("vlm", "dpo", "grpo", "ppo", "distill", "rm")
PIPELINES = {**{task: "image-text-to-text" for task in IMAGE_TEXT_TASKS if task != "rm"}, "lm": "text-generation",
             "vit_classify": "image-classification"}
EXAMPLE_QUESTION = "What colour is the circle?"


def _params(path: Path) -> int | None:
    total, files = 0, sorted(path.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), "pt") as st:
            total += sum(math.prod(st.get_slice(key).get_shape()) for key in st.keys())
    return total if files else None


def _data_line(data: dict) -> str:
    if data.get("source") == "shapes":
        kinds = data.get("kind", "mixed")
        return (f"the synthetic shapes world (`ocellus.data.shapes`): {data.get('n', '?')} generated samples of kind "
                f"`{kinds}`, data seed {data.get('seed', 0)}, {data.get('image_size', '?')} px scenes of coloured shapes; "
                f"wording `{data.get('phrasing', 'canonical')}`")
    if data.get("source") == "shapes_text":
        return f"text about the synthetic shapes world: {data.get('n', '?')} generated documents"
    if data.get("source") == "digits":
        return "scikit-learn's 8x8 handwritten digits"
    return f"`{data.get('path', data.get('source', '?'))}` ({data.get('source', '?')})"


def _prompt_example(tok, task: str, path: Path) -> str:
    if tok is None or not getattr(tok, "chat_template", None):
        return "No chat template: the model continues plain text."
    vlm = task in IMAGE_TEXT_TASKS
    content = [{"type": "image"}, {"type": "text", "text": EXAMPLE_QUESTION}] if vlm else EXAMPLE_QUESTION
    rendered = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    hf = (", or transformers' `AutoProcessor.from_pretrained(dir)`, which reads the same files"
          if (path / "processor_config.json").is_file() else "")
    return ("The chat template renders a question as:\n\n```\n" + rendered + "\n```\n\n"
            + ("The image placeholder is expanded into the image's tokens by the processor (`ocellus.load_processor(dir)`"
               + hf + ")." if vlm else ""))


def write_model_card(path, recipe: dict, tok=None) -> Path:
    """README.md for the export of `recipe` in `path` (config.json already written)."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    model_type = str(config.get("model_type"))
    task, data, train = recipe.get("task", "?"), recipe.get("data") or {}, recipe.get("train") or {}
    params = _params(path)
    stage = train.get("stage")
    lines = [
        "---", "library_name: ocellus", f"pipeline_tag: {PIPELINES.get(task, 'other')}",
        "tags: [ocellus, synthetic-data]" if data.get("source", "").startswith("shapes") else "tags: [ocellus]", "---",
        f"# {recipe.get('name', path.name)}", "",
        f"Model type `{model_type}` ({', '.join(config.get('architectures', []))}"
        + (f", {params:,} parameters" if params else "") + f"), made by Ocellus' recipe `{recipe.get('name')}` "
        f"(task `{task}`). Open it with `ocellus.load(dir)`"
        + ("." if model_type.startswith("ocellus") else " or transformers' Auto classes (same config and weight names)."),
        "",
        "## Training", "",
        f"- Data: {_data_line(data)}.",
        f"- Schedule: {train.get('max_steps', '?')} steps of batch {train.get('batch_size', '?')}, AdamW at lr "
        f"{train.get('lr', '?')}, {train.get('warmup_steps', 0)} warm-up steps, cosine decay.",
    ]
    if stage:
        lines.append(f"- What trained: {json.dumps(stage)} (frozen parts kept their pretrained weights).")
    sources = {k: v for k, v in (recipe.get("model") or {}).items() if k in ("from", "vision_from", "llm_from")}
    if sources:
        lines.append(f"- Started from: {json.dumps(sources)}.")
    lines += ["", "## Prompt format", "", _prompt_example(tok, task, path), "",
              "## Evaluation", "", EVAL_BEGIN,
              "Not evaluated yet: `ocellus eval --model DIR --task shapes-vqa --card` writes the table here.", EVAL_END, "",
              "## Limits", ""]
    if str(data.get("source", "")).startswith("shapes"):
        lines.append("- It has seen only the synthetic shapes world: a few colours and shapes on a plain background. "
                     "It knows nothing about real photographs, open-vocabulary objects or other languages.")
    lines.append(f"- It is tiny{f' ({params:,} parameters)' if params else ''}: a model to learn from, test and "
                 "demonstrate the stack with, not a general assistant.")
    lines.append("- Question types it answers poorly are listed under Evaluation once it has been evaluated.")
    (path / "README.md").write_text("\n".join(lines) + "\n")
    return path / "README.md"


def record_eval(path, result: dict, command: str) -> None:
    """Put one evaluation (the harness' result dict) into path/README.md's evaluation section, replacing
    an earlier one of the same task / phrasing / turns / shots."""
    card = Path(path) / "README.md"
    if not card.is_file() or EVAL_BEGIN not in card.read_text():
        raise ConfigError(f"{card}: no Ocellus model card to record the evaluation in (a recipe's export writes one)")
    text = card.read_text()
    head, rest = text.split(EVAL_BEGIN, 1)
    body, tail = rest.split(EVAL_END, 1)
    key = (f"### {result.get('task')}: n={result.get('n')}, phrasing {result.get('phrasing', 'canonical')}, "
           f"turns {result.get('turns', 1)}, shots {result.get('shots', 0)}")
    metric = result.get("metric", "accuracy")
    table = result["table"]
    rows = [key, "", f"`{command}`", "", f"| type | n | {metric} |", "|---|---|---|"]
    rows += [f"| {t} | {n} | {100 * v:.1f} |" if metric == "accuracy" else f"| {t} | {n} | {v:.3f} |"
             for t, (n, v) in table.items()]
    weak = [f"{t} ({100 * v:.1f}%)" for t, (n, v) in table.items() if t != "all" and metric == "accuracy" and v < WEAK_BELOW]
    if weak:
        rows += ["", f"Weak (below {100 * WEAK_BELOW:.0f}%): {', '.join(weak)}."]
    sections = [s for s in body.strip().split("\n### ") if s and not s.startswith("Not evaluated yet")]
    sections = ["### " + s.removeprefix("### ") for s in sections]
    sections = [s for s in sections if not s.startswith(key)] + ["\n".join(rows)]
    card.write_text(head + EVAL_BEGIN + "\n" + "\n\n".join(sections) + "\n" + EVAL_END + tail)
