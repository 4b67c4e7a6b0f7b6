"""task albef: ITC (momentum queues + distillation) + ITM (hard negatives) + image-conditioned MLM;
task blip: ITC + ITM + LM of the multimodal mixture of encoder-decoder. Their hooks (validate, tokenizer,
model, data, export + retrieval evaluation) live in train/albef_blip_run.py, which BLIP's CapFilt
(train/capfilt.py) trains its stages through as well; this module is their place in the task table.
"""
from __future__ import annotations

from pathlib import Path

from ocellus.train import albef_blip_run
from ocellus.train.albef_blip_run import build_dataset, build_model, build_tokenizer, export, shard_data, validate
from ocellus.train.run import run_trainer


def run(recipe: dict) -> Path:
    return run_trainer(recipe, albef_blip_run)


__all__ = ["validate", "build_tokenizer", "build_model", "build_dataset", "shard_data", "export", "run"]
