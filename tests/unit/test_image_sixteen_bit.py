"""16-bit grey images come out as x / 257 rounded to nearest, over the WHOLE 16-bit range (not just the
endpoints): the oracle here is integer arithmetic written out independently of data/image.py's float path."""
import numpy as np
from PIL import Image

from ocellus.data.image import load_image


def test_every_16_bit_value_is_scaled_to_the_nearest_8_bit_value():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    out = np.asarray(load_image(Image.fromarray(values)))          # I;16 -> RGB
    # round(x * 255 / 65535) = round(x / 257); x / 257 is never exactly k + 1/2, so no tie rule is needed
    expected = ((values.astype(np.int64) * 2 + 257) // 514).astype(np.uint8)
    assert out.shape == (256, 256, 3)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    # the values a truncating x >> 8 would get wrong: 200 is nearer 1 than 0, 65407 nearer 255 than 254
    assert out[0, 200, 0] == 1 and out.reshape(-1, 3)[65407, 0] == 255
