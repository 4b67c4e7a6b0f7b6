"""Post-training rows from a Hugging Face dataset (`data: {source: hf, ...}`, data/hf_dataset.py), in TRL's
formats, for the readers train/posttrain.py already has:

    preference  {"prompt", "chosen", "rejected", "images"}  -> PreferencePair   (task rm, dpo: pair_dataset)
    prompt      {"prompt", "images", **columns}             -> PromptRow        (task grpo, ppo: prompt_loader);
                                                               the columns reach the reward functions by name

Every row is checked once before training (train/preference.py's checks + its images decoded): a bad row is
an InputError naming the dataset and the row, or with data.skip_bad_samples is left out and counted.
"""
from __future__ import annotations

import logging

from ocellus.data.bad_samples import BadSample, BadSampleReport
from ocellus.train.recipe_data import EncodedDataset

log = logging.getLogger(__name__)


def _loaded(images: list, row) -> list:
    from ocellus.data.image import load_image
    from ocellus.errors import InputError
    try:
        return [load_image(im, name=f"row {row}, image {j}") for j, im in enumerate(images)]
    except InputError as e:
        raise BadSample("bad_image", str(e)) from e


def _read(recipe: dict, fmt: str, convert):
    from ocellus.data.hf_dataset import read_rows, source_name
    data = recipe["data"]
    report = BadSampleReport(source_name(data))
    rows = read_rows(data, (fmt,), recipe["task"], skip_bad_samples=bool(data.get("skip_bad_samples", False)),
                     report=report, convert=convert)
    if report.skipped:
        log.info(f"[{recipe.get('name', recipe['task'])}] {report.summary()}")
    return rows


def preference_dataset(recipe: dict):
    """The recipe's preference rows as PreferencePairs (images decoded), made on access; `make_row(i)` gives
    row i as a checked TRL row (dpo's method.rejected: model rewrites its rejected answer)."""
    from dataclasses import replace

    from ocellus.data.hf_dataset import trl_row
    from ocellus.train.preference import preference_pair

    def convert(rows, i):
        pair = preference_pair(trl_row(rows, i), i)
        return replace(pair, images=_loaded(pair.images, i))
    rows = _read(recipe, "preference", convert)
    dataset = EncodedDataset(len(rows), rows.__getitem__)
    dataset.make_row = lambda i: (lambda p: {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                                             "images": p.images, **p.extra})(rows[i])
    return dataset


def prompt_dataset(recipe: dict):
    """The recipe's prompt-only rows as PromptRows (images decoded), made on access."""
    from dataclasses import replace

    from ocellus.data.hf_dataset import trl_row
    from ocellus.train.preference import prompt_row

    def convert(rows, i):
        row = prompt_row(trl_row(rows, i), i)
        return replace(row, images=_loaded(row.images, i))
    rows = _read(recipe, "prompt", convert)
    return EncodedDataset(len(rows), rows.__getitem__)
