"""What a recipe's data section becomes, for every task that reads one: samples made on access
(EncodedDataset), the shapes world of data.* (shapes_config) and the image preprocessing at a size
(image_config, mean / std 0.5: data/image.py's, named here for the tasks)."""
from __future__ import annotations

from ocellus.data.image import IMAGE_MEAN, IMAGE_STD, image_config  # noqa: F401  (the tasks' names)
from ocellus.data.shapes import ShapesConfig
from ocellus.errors import ConfigError


class EncodedDataset:
    """Samples made and encoded on access (deterministic by index), so nothing large is held.
    bad_samples: a file dataset's BadSampleReport (data/bad_samples.py), shown before step 1."""

    def __init__(self, n: int, make, bad_samples=None):
        self.n, self.make, self.bad_samples = n, make, bad_samples

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.make(i)


def shapes_config(data: dict, seed_key: str = "seed"):
    """data section -> ShapesConfig. kind_weights / qa_weights are mappings in YAML
    ({qa: 6, caption: 1}); kinds or types left out get weight 0."""
    kw = {k: data[k] for k in ("image_size", "max_objects", "min_objects", "answer_prompt", "hard_negatives",
                               "phrasing") if k in data}
    for key in ("conversation_turns", "qa_turns"):
        if key in data:
            turns = data[key]
            if not (isinstance(turns, (list, tuple)) and len(turns) == 2 and all(isinstance(t, int) for t in turns)):
                raise ConfigError(f"data.{key} must be [min, max] integers, got {turns!r}")
            kw[key] = tuple(turns)
    for key in ("kind_weights", "qa_weights"):
        if key in data:
            weights = data[key]
            if not isinstance(weights, dict) or not all(isinstance(v, (int, float)) for v in weights.values()):
                raise ConfigError(f"data.{key} must be a mapping of name -> weight (YAML: {{qa: 4, caption: 1}}, "
                                  f"a space after each colon), got {weights!r}")
            kw[key] = tuple((str(k), float(v)) for k, v in weights.items())
    return ShapesConfig(seed=int(data.get(seed_key, data.get("seed", 0))), **kw)
