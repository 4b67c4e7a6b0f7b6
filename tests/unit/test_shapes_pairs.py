"""data/shapes_pairs.py: the (image, caption) pairs that the image-text tasks train on and their evaluations hold
out. Training (contrastive_run, albef_blip_run, capfilt) and evaluation (eval/retrieval.py, eval/decoding.py) must
draw the same scene for the same (data, seed, index), equal captions must share an id in every process, and
captions compare as text."""
import numpy as np
import pytest

from ocellus.data.shapes import caption, make_scene, render, ShapesConfig
from ocellus.data.shapes_pairs import caption_id, pairs_config, same_caption, scenes, shapes_pairs

DATA = {"image_size": 32, "min_objects": 1, "max_objects": 2}


def test_scenes_and_pairs_draw_the_same_world_by_index():
    drawn = scenes(DATA, 7, 6)
    pair = shapes_pairs(DATA, 7, 6)
    for i, scene in enumerate(drawn):
        image, text = pair(i)
        assert text == caption(scene) and np.array_equal(np.asarray(image), np.asarray(render(scene)))
    # scene i is default_rng([seed, i]) under the data section's config, written out
    cfg = ShapesConfig(image_size=32, seed=7, min_size=max(0.18, 6.5 / 32), min_objects=1, max_objects=2)
    assert drawn[3] == make_scene(np.random.default_rng([7, 3]), cfg)
    assert pairs_config(DATA, 7) == cfg
    # start shifts the index: pair i of start=2 is scene 2 + i
    assert shapes_pairs(DATA, 7, 4, start=2)(1)[1] == caption(drawn[3])
    # another seed, another world
    assert [caption(s) for s in scenes(DATA, 8, 6)] != [caption(s) for s in drawn]


def test_equal_captions_share_an_id_and_different_ones_do_not():
    texts = [caption(s) for s in scenes({"image_size": 32, "max_objects": 3}, 0, 200)]
    ids = {t: caption_id(t) for t in texts}
    assert len(set(ids.values())) == len(ids) > 50                 # distinct captions, distinct ids
    assert caption_id(texts[0]) == caption_id(str(texts[0]))       # a function of the text alone
    assert caption_id("a red circle.") == int.from_bytes(__import__("hashlib").sha1(b"a red circle.").digest()[:7],
                                                          "big")   # stable across processes (no hash seed)


@pytest.mark.parametrize("a, b, same", [
    ("A red circle, a blue star.", "a red circle a blue star", True),
    ("  A red   circle. ", "a red circle", True),
    ("A red circle.", "A red square.", False),
    ("two red circles", "a red circle", False),
])
def test_captions_compare_as_text(a, b, same):
    assert same_caption(a, b) is same
