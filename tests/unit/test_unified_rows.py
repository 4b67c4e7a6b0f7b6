"""The unified runner's rows and checks: an interleaved row pairs each caption with ITS image's codes (caption,
image, caption, image: the second pair is another sample, caption and codes of that same sample); model.tasks must
name at least one direction."""
import pytest
import torch

import ocellus.train.unified as unified
from ocellus.errors import ConfigError


class _Model:
    """codes(x) -> each image's own number; interleaved / sequence -> the pairs they were given."""

    def codes(self, x):
        return x[:, 0, 0, 0].long()

    def interleaved(self, pairs):
        return (tuple((cap, int(c)) for cap, c in pairs), None)

    def sequence(self, cap, c, task, uncond=False):
        return ((cap, int(c), task), None)


def test_interleaved_rows_keep_each_caption_with_its_own_codes():
    n = 12
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 2, 2)
    captions = [f"caption {i}" for i in range(n)]
    rows = unified.token_rows(_Model(), x, captions, ["interleave"], 0.0, seed=3)
    assert len(rows) == n
    for i, (pairs, _, image) in enumerate(rows):
        assert image == i and pairs[0] == (f"caption {i}", i)
        cap, code = pairs[1]
        assert cap == f"caption {code}"
    assert any(pairs[1][1] != i for i, (pairs, _, _) in enumerate(rows))    # other samples are drawn


def test_empty_model_tasks_are_refused(monkeypatch):
    monkeypatch.setattr(unified, "load_generator", lambda path: type("Tok", (), {"spec": {"kind": "vqvae"}})())
    recipe = {"task": "unified", "name": "u", "model": {"tokenizer_from": "vq", "tasks": []}, "data": {"n": 4},
              "train": {"max_steps": 1}}
    with pytest.raises(ConfigError, match="model.tasks must be a non-empty subset"):
        unified.run_unified(recipe)
    recipe["model"]["tasks"] = ["t2i", "draw"]
    with pytest.raises(ConfigError, match="model.tasks must be a non-empty subset"):
        unified.run_unified(recipe)
