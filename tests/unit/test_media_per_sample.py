"""A batch's images and videos split over its samples by their placeholder counts (data/media_per_sample.py):
in order, nested or flat, and every mismatch -- too few, too many, a wrong per-sample list, frames passed as
videos -- an InputError naming it."""
import pytest
from PIL import Image

from ocellus.data.media_per_sample import images_per_sample, videos_per_sample
from ocellus.errors import InputError


def test_flat_and_nested_images_split_by_the_counts():
    assert images_per_sample(["a", "b", "c"], [1, 0, 2]) == [["a"], [], ["b", "c"]]
    assert images_per_sample([["a"], [], ["b", "c"]], [1, 0, 2]) == [["a"], [], ["b", "c"]]
    assert images_per_sample(None, [0, 0]) == [[], []]
    with pytest.raises(InputError, match="sample 1: 2 image placeholders but only 1 of the 2 images"):
        images_per_sample(["a", "b"], [1, 2])
    with pytest.raises(InputError, match="3 images given but the samples have 2 image placeholders"):
        images_per_sample(["a", "b", "c"], [1, 1])
    with pytest.raises(InputError, match="sample 0: 1 image placeholders but 2 images given"):
        images_per_sample([["a", "b"], ["c"]], [1, 1])


def test_videos_split_in_order_and_every_mismatch_is_named():
    clip = [Image.new("RGB", (4, 4))] * 2          # one video = a list of frames
    assert videos_per_sample([clip, "v.mp4"], [1, 1]) == [[clip], ["v.mp4"]]
    assert videos_per_sample("v.mp4", [0, 1]) == [[], ["v.mp4"]]
    with pytest.raises(InputError, match="sample 1: 1 video placeholders but only 0 of the 1 videos"):
        videos_per_sample(["v.mp4"], [1, 1])
    with pytest.raises(InputError, match="2 videos given but the samples have 1 video placeholders"):
        videos_per_sample(["v.mp4", "w.mp4"], [1, 0])
    with pytest.raises(InputError, match="wrap one video's frames in a list"):
        videos_per_sample(clip, [1])
