"""The reward model and PPO from Hugging Face rows in TRL's formats (train/hf_data.py): the RM on
`prompt` / `chosen` / `rejected` + `images` (each pair with its own image), PPO on prompt-only rows whose
`answer` column reaches the reward function; each trains a few steps from a small parquet file built here."""
import json

import pytest

datasets = pytest.importorskip("datasets")

from ocellus.train.tasks import load_recipe, run_recipe  # noqa: E402
from test_data_formats import POST, RECIPES, posttrain_rows  # noqa: E402,F401  (the TRL parquet fixture)


def _records(out, name="posttrain.jsonl"):
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def test_reward_model_trains_on_preference_rows_from_parquet(posttrain_rows, tmp_path):
    from ocellus.train.posttrain import pair_dataset
    root, pairs, _ = posttrain_rows
    recipe = load_recipe(RECIPES / "posttrain" / "rm.yaml", POST + [
        f"data.path={root / 'pairs.parquet'}", "train.batch_size=4", f"train.out_dir={tmp_path / 'rm'}"])
    read = pair_dataset(recipe)
    assert len(read) == len(pairs)
    for i, pair in enumerate(pairs):
        got = read[i]
        assert (got.chosen, got.rejected) == (pair["chosen"], pair["rejected"])
        assert got.images[0].tobytes() == pair["images"][0].convert("RGB").tobytes()   # its own image
    assert read[0].images[0].tobytes() != read[1].images[0].tobytes()
    path = run_recipe(recipe)
    records = _records(tmp_path / "rm")
    assert [r["step"] for r in records] == [1, 2] and all("accuracy" in r and "margin" in r for r in records)
    assert (path / "reward_head.safetensors").is_file()


def test_ppo_trains_on_prompt_rows_from_parquet_with_the_answer_column(posttrain_rows, tmp_path, monkeypatch):
    from ocellus.train import rewards
    root, _, prompts = posttrain_rows
    seen = []
    count = rewards.REWARDS["count"]

    def spy(prompts, completions, **columns):   # the reward function gets each row's own `answer`
        seen.extend(columns["answer"])
        return count(prompts, completions, **columns)
    monkeypatch.setitem(rewards.REWARDS, "count", spy)
    recipe = load_recipe(RECIPES / "posttrain" / "ppo.yaml", POST + [
        f"data.path={root / 'prompts.parquet'}", "train.batch_size=2", "method.ppo_epochs=1",
        f"train.out_dir={tmp_path / 'ppo'}"])
    run_recipe(recipe)
    records = _records(tmp_path / "ppo")
    assert [r["step"] for r in records] == [1, 2] and all(any(k.startswith("rewards/") for k in r) for r in records)
    answers = {p["answer"] for p in prompts}
    assert len(seen) == 4 and set(seen) <= answers
