"""Image cells of Hugging Face rows (data/hf_dataset.py): an `Image` feature stored by path only
({"bytes": None, "path": name}, what `datasets` keeps for an image given as a file name) is read from that file
under the data root, and a row with no images (the column null: a text-only turn beside image rows) has none --
it is not a row with one missing image."""
from pathlib import Path

from ocellus.data.hf_dataset import HFRows, image_source


class _Rows(HFRows):
    def __init__(self, root):  # no datasets.Dataset needed for the image cells
        self.root = root


def test_an_image_feature_stored_by_path_reads_the_file_under_the_root(tmp_path):
    (tmp_path / "img.png").write_bytes(b"png bytes")
    assert Path(image_source({"bytes": None, "path": "img.png"}, tmp_path, 0)) == tmp_path / "img.png"
    assert image_source({"bytes": b"raw", "path": "img.png"}, tmp_path, 0) == b"raw"   # bytes, when stored, win


def test_a_row_without_images_has_none(tmp_path):
    rows = _Rows(tmp_path)
    assert rows.images(None, 3) == [] and rows.images([], 3) == []
    assert rows.images([{"bytes": b"a", "path": None}, b"b"], 3) == [b"a", b"b"]
