"""task distill: teacher = model.from (or method.teacher), student = its vision side + connector + the decoder
layers method.student_layers (train/distill.py); trained on shapes QA conversations (assistant tokens, task
vlm's data) with the teacher's softened distribution; held-out VQA accuracy of teacher, student before,
student after.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ocellus.hub.checkpoint import load_model
from ocellus.data.processor import load_processor
from ocellus.train.distill import count_parameters, DistillConfig, Distiller, shrink_decoder
from ocellus.train.posttrain import export_policy as export, fit, heldout_qa, model_dir, report
from ocellus.train.recipe import check_recipe
from ocellus.train.run import run_method
from ocellus.train.tasks import vlm

log = logging.getLogger(__name__)


def validate(recipe: dict, where: str = "recipe") -> None:
    check_recipe(recipe, where, method=True)


def train(recipe: dict, cfg, out: Path) -> Path:
    method = dict(recipe.get("method") or {})
    if "student_layers" in method:
        method["student_layers"] = tuple(method["student_layers"])
    dcfg = DistillConfig(**method)
    source = model_dir({"from": dcfg.teacher} if dcfg.teacher else recipe["model"])
    teacher, processor = load_model(source), load_processor(source)
    student = shrink_decoder(teacher, dcfg.student_layers)
    n_eval = int((recipe.get("eval") or {}).get("n", 500))
    teacher_table = heldout_qa(teacher, processor, n_eval)
    before = heldout_qa(student, processor, n_eval)
    dataset, collate = vlm.build_dataset({**recipe, "data": {"kind": "qa", **recipe["data"]}}, processor.tokenizer,
                                         student)
    objective = Distiller(student, teacher, dcfg)
    history = fit(objective, dataset, collate, recipe, cfg, out, ["soft", "hard"])
    after = heldout_qa(student, processor, n_eval)
    path = export(recipe, student, processor.tokenizer, out / "model")
    fraction = after["all"][1] / max(teacher_table["all"][1], 1e-9)
    report(out, recipe.get("name", "distill"), before, after, {
        "teacher": {k: [int(v[0]), float(v[1])] for k, v in teacher_table.items()},
        "teacher_parameters": count_parameters(teacher), "student_parameters": count_parameters(student),
        "fraction_of_teacher": fraction, "final": history[-1] if history else {}})
    log.info(f"[{recipe.get('name')}] student ({count_parameters(student):,} params) reaches {100 * fraction:.1f}% of "
             f"the teacher's accuracy ({count_parameters(teacher):,} params)")
    return path


def run(recipe: dict) -> Path:
    return run_method(recipe, train)


__all__ = ["validate", "train", "export", "run"]
