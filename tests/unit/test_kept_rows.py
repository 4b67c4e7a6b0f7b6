"""KeptRows (nn/kept_rows.py): ragged kept positions packed per sample, and back."""
import torch

from ocellus.nn.kept_rows import KeptRows
from ocellus.nn.masks import build_attention_mask


def _keep():
    keep = torch.zeros(3, 7, dtype=torch.bool)
    keep[0, [1, 4, 5]] = True
    keep[1, [6]] = True
    keep[2, [0, 2, 3, 6]] = True
    return keep


def test_take_then_unpack_equals_select_in_row_major_order():
    keep = _keep()
    rows = KeptRows.from_mask(keep)
    x = torch.randn(3, 7, 5)
    assert rows.pos.shape == (3, 4)
    assert rows.pos[0, :3].tolist() == [1, 4, 5] and rows.pos[2].tolist() == [0, 2, 3, 6]
    torch.testing.assert_close(rows.select(x), x[keep])
    torch.testing.assert_close(rows.unpack(rows.take(x)), x[keep])
    torch.testing.assert_close(rows.take(x[:1]), x[:1].expand(3, 7, 5).gather(1, rows.pos[..., None].expand(-1, -1, 5)))


def test_query_mask_is_the_kept_rows_of_the_full_mask():
    keep = _keep()
    rows = KeptRows.from_mask(keep)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    got = rows.query_mask(None, 7)                                        # [3, 1, 4, 7]
    for b in range(3):
        torch.testing.assert_close(got[b, 0], causal[rows.pos[b]])
    pad = torch.ones(3, 7, dtype=torch.long)
    pad[1, :2] = 0
    full = build_attention_mask(7, 7, attention_mask=pad)                 # [3, 1, 7, 7]
    got = rows.query_mask(full, 7)
    for b in range(3):
        torch.testing.assert_close(got[b, 0], full[b, 0, rows.pos[b]])


def test_nothing_kept_gives_empty_rows():
    rows = KeptRows.from_mask(torch.zeros(2, 5, dtype=torch.bool))
    assert rows.flat.numel() == 0 and rows.pos.shape == (2, 0) and rows.packed.numel() == 0
