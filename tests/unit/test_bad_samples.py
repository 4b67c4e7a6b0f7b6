"""A dataset file is checked before step 1: one bad record of each kind stops `ocellus train` naming the file
and the record before any step, or with data.skip_bad_samples is left out, counted by reason (printed, and
written to out_dir/bad_samples.json) while training runs on the rest."""
import json
import logging
import os
from pathlib import Path

import pytest

from ocellus.data.bad_samples import BadSampleReport
from ocellus.data.llava_json import read_llava_json, write_llava_json
from ocellus.data.shapes import ShapesConfig
from ocellus.errors import InputError
from ocellus.train.run import build_tokenizer
from ocellus.train.tasks import build_dataset, build_model, load_recipe, run_recipe

ALIGN = Path(__file__).resolve().parents[2] / "recipes" / "llava_tiny_shapes" / "align.yaml"
# reason -> how one good record is turned into a bad one of that kind (root: the data root)
BREAK = {
    "no_assistant_turn": lambda r, root: r.update(conversations=r["conversations"][:1]),
    "absolute_image_path": lambda r, root: r.update(image=str((root / r["image"]).resolve())),
    "image_outside_root": lambda r, root: r.update(image="../outside.png"),
    "missing_image": lambda r, root: r.update(image="images/nope.png"),
    "bad_image": lambda r, root: (root / r["image"]).write_bytes((root / r["image"]).read_bytes()[:60]),
    "too_long": lambda r, root: r["conversations"][1].update(value="long " * 300),
    "invalid_record": lambda r, root: r["conversations"][0].update(**{"from": "robot"}),
}


def _dataset(root: Path, good: int = 16) -> tuple[Path, dict[str, str]]:
    """data.jsonl: `good` shapes records, then one bad record of each kind (+ a non-image file and a bad
    JSON line, both reason-counted too) -> (path, {reason: where})."""
    write_llava_json(root, ShapesConfig(seed=5), good + len(BREAK) + 1, kind="qa")
    records = json.loads((root / "data.json").read_text())
    (root.parent / "outside.png").write_bytes((root / records[0]["image"]).read_bytes())  # a real image, elsewhere
    where = {}
    for k, (reason, bad) in enumerate(BREAK.items()):
        bad(records[good + k], root)
        where[reason] = f"line {good + k + 1}"
    (root / records[-1]["image"]).write_text("not an image at all")     # a text file named .png
    where["bad_image (text)"] = f"line {len(records)}"
    lines = [json.dumps(r) for r in records] + ["{not json"]
    where["invalid_json"] = f"line {len(lines)}"
    path = root / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, where


def _recipe(parts, data: Path, out: Path, *extra):
    return load_recipe(ALIGN, [
        "train.progress=false", "train.max_steps=2", "train.batch_size=4", "train.log_every=1", "train.warmup_steps=0",
        f"train.out_dir={out}", f"model.vision_from={parts}/vit/model", f"model.llm_from={parts}/text/model",
        f"tokenizer.from={parts}/text/model", "data.source=llava_json", f"data.path={data}", "data.n=1000",
        "data.max_length=192", *extra])


MESSAGES = {"no_assistant_turn": "no assistant turn", "absolute_image_path": "is absolute",
            "image_outside_root": "outside the data root", "missing_image": "does not exist",
            "bad_image": "truncated or corrupt", "too_long": "over data.max_length=192", "invalid_record": "unknown speaker",
            "bad_image (text)": "not an image", "invalid_json": "invalid JSON"}


def test_each_bad_record_is_named_before_step_1(tiny_vlm_parts, tmp_path):
    path, where = _dataset(tmp_path / "data")
    lines = path.read_text().splitlines()
    recipe = _recipe(tiny_vlm_parts, path, tmp_path / "run")
    tok = build_tokenizer(recipe, tmp_path)
    model = build_model(recipe, tok)
    for reason, at in where.items():   # a file with this one bad record after the good ones
        one = path.parent / f"one_{reason.split()[0]}.jsonl"
        one.write_text("\n".join(lines[:16] + [lines[int(at.split()[1]) - 1]]) + "\n")
        recipe["data"]["path"] = str(one)
        with pytest.raises(InputError, match=rf"{one.name}, line 17\b.*{MESSAGES[reason]}"):
            build_dataset(recipe, tok, model)
    out = tmp_path / "run"
    with pytest.raises(InputError, match="data.jsonl, line 17"):     # the first bad one stops `ocellus train`
        run_recipe(_recipe(tiny_vlm_parts, path, out))
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_skip_bad_samples_counts_each_reason_and_trains_on_the_rest(tiny_vlm_parts, tmp_path, caplog):
    path, where = _dataset(tmp_path / "data")
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="ocellus")
    run_recipe(_recipe(tiny_vlm_parts, path, out, "data.skip_bad_samples=true"))
    report = json.loads((out / "bad_samples.json").read_text())
    expected = {r: 1 for r in BREAK} | {"bad_image": 2, "invalid_json": 1}
    assert report["by_reason"] == dict(sorted(expected.items()))
    assert report["total"] == 16 + len(where) and report["skipped"] == len(where)
    assert sorted(s["where"].split(" (")[0] for s in report["samples"]) == sorted(where.values())
    printed = caplog.text                                                  # logged by train/run.py
    assert f"skipped {len(where)} of {16 + len(where)} samples" in printed and "too_long 1" in printed
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2      # trained on the good ones


def test_trl_rows_and_path_checks_in_the_reader(tmp_path):
    root = tmp_path / "data"
    write_llava_json(root, ShapesConfig(seed=2), 2, kind="qa")
    image = json.loads((root / "data.json").read_text())[0]["image"]
    rows = [{"id": "ok", "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                                      {"role": "assistant", "content": "red"}], "images": [image]},
            {"id": "user-only", "messages": [{"role": "user", "content": "hi"}], "images": []}]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.png").write_bytes((root / image).read_bytes())
    os.symlink(tmp_path / "other", root / "escape")          # a link inside the root pointing out of it
    rows.append({**rows[0], "id": "via-link", "images": ["escape/x.png"]})
    path = root / "trl.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = BadSampleReport(str(path))
    loaded = read_llava_json(path, skip_bad_samples=True, report=report)
    assert [s["id"] for s in loaded.samples] == ["ok"] and loaded.samples[0]["images"] == [root / image]
    assert report.counts() == {"image_outside_root": 1, "no_assistant_turn": 1}
    with pytest.raises(InputError, match=r"trl\.jsonl, line 2: .*no assistant turn"):
        read_llava_json(path)
