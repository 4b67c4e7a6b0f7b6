"""ALBEF / BLIP read (image, caption) pairs from a LLaVA-JSON file: a corrupt image is found before step 1 (an
InputError naming the file and record), or with skip_bad_samples left out and counted, never a crash mid-training."""
import pytest

from ocellus.data.bad_samples import BadSampleReport
from ocellus.data.shapes import caption, render
from ocellus.errors import InputError
from ocellus.train.albef_blip_run import pair_source
from ocellus.train.capfilt import scenes, write_pairs


def _pairs(tmp_path):
    sc = scenes({"image_size": 32}, 4, 3)
    rows = [{"id": f"x-{i}", "image": render(s), "image_file": f"x-{i}.png", "caption": caption(s), "truth": caption(s),
             "source": "clean"} for i, s in enumerate(sc)]
    path = write_pairs(tmp_path, rows)
    (tmp_path / "images" / "x-1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")   # corrupt
    return path, rows


def test_corrupt_image_is_named_before_training(tmp_path):
    path, _ = _pairs(tmp_path)
    with pytest.raises(InputError, match=r"data\.json, record 'x-1'.*skip_bad_samples"):
        pair_source({"source": "llava_json", "path": str(path)}, 10)


def test_skip_bad_samples_leaves_it_out_and_counts_it(tmp_path):
    path, rows = _pairs(tmp_path)
    report = BadSampleReport(str(path))
    n, pair = pair_source({"source": "llava_json", "path": str(path), "skip_bad_samples": True}, 10, report)
    assert n == 2 and [pair(i)[1] for i in range(n)] == [rows[0]["caption"], rows[2]["caption"]]
    assert [s["where"] for s in report.skipped] == ["record 'x-1'"]
