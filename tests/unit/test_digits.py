"""scikit-learn's bundled digits as normal-form VQA samples: split sizes, a deterministic disjoint
split, answers equal to the labels, and RGB images of the requested size."""
import builtins

import numpy as np
import pytest
from sklearn.datasets import load_digits

from ocellus.data.digits import digits_samples
from ocellus.errors import ConfigError


@pytest.fixture(scope="module")
def splits():
    return digits_samples("train", seed=0), digits_samples("test", seed=0)


def test_split_sizes_are_disjoint_and_cover_everything(splits):
    train, test = splits
    assert (len(train), len(test)) == (1797 - 359, 359)  # round(1797 * 0.2) = 359
    train_ids, test_ids = {s["index"] for s in train}, {s["index"] for s in test}
    assert not train_ids & test_ids and train_ids | test_ids == set(range(1797))
    assert len(digits_samples("test", seed=0, test_fraction=0.5)) == round(1797 * 0.5)
    assert len({s["label"] for s in test}) == 10  # a random 20% holds every class


def test_deterministic_by_seed(splits):
    again = digits_samples("test", seed=0)
    assert [s["index"] for s in again] == [s["index"] for s in splits[1]]
    assert all(a["images"][0].tobytes() == b["images"][0].tobytes() for a, b in zip(again, splits[1]))
    assert [s["index"] for s in digits_samples("test", seed=1)] != [s["index"] for s in splits[1]]


def test_labels_answers_and_images_agree_with_sklearn(splits):
    digits = load_digits()
    for s in splits[1]:
        user, assistant = s["messages"]
        assert user["content"][0] == {"type": "image"} and user["content"][1]["text"] == "What digit is this?"
        assert assistant["content"] == [{"type": "text", "text": s["answer"]}]
        assert s["answer"] == str(s["label"]) == str(digits.target[s["index"]]) and s["type"] == "digit"
        image = s["images"][0]
        assert image.mode == "RGB" and image.size == (32, 32)
        # nearest upsampling: every 4x4 block is one source pixel, ink dark on white, R = G = B
        pixels = np.asarray(image).astype(int)
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
        expected = np.clip(255 - np.rint(digits.images[s["index"]] * 255 / 16), 0, 255)
        assert (pixels[::4, ::4, 0] == expected).all()


def test_other_sizes_and_bilinear():
    s = digits_samples("test", image_size=64, resample="bilinear")[0]
    assert s["images"][0].size == (64, 64) and s["images"][0].mode == "RGB"
    with pytest.raises(ConfigError, match="split"):
        digits_samples("validation")
    with pytest.raises(ConfigError, match="resample"):
        digits_samples("test", resample="lanczos9")


def test_missing_scikit_learn_is_a_config_error(monkeypatch):
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ConfigError, match="pip install scikit-learn"):
        digits_samples("test")
