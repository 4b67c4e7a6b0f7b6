"""A packed batch gives every sample the loss it has alone (text and multimodal)."""
import pytest
import torch
import torch.nn.functional as F

from ocellus.errors import InputError
from ocellus.data.packing import collate_packed, pack
from test_trainer import V, tiny_decoder, tiny_llava


def _token_losses(logits, labels):
    """Per-position next-token loss (0 where not trained): [B, T-1]."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")


def _samples(n, with_images):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        text = torch.randint(0, V - 1, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        ids = ([V - 1] * 4 if with_images else []) + text
        labels = [-100] * (4 if with_images else 0) + text
        s = {"input_ids": ids, "labels": labels}
        if with_images:
            s["pixel_values"] = torch.randn(1, 3, 16, 16, generator=g)
        out.append(s)
    return out


@pytest.mark.parametrize("with_images", [False, True])
def test_packed_equals_unpacked_per_sample(with_images):
    model = (tiny_llava() if with_images else tiny_decoder()).eval()
    samples = _samples(7, with_images)
    rows = pack(samples, max_len=32)
    assert len(rows) < len(samples)
    batch = collate_packed(rows, 32)
    with torch.no_grad():
        packed = _token_losses(model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"])
        # regroup the packed per-token losses by document and compare with each sample alone
        for b, row in enumerate(rows):
            docs = torch.tensor(row.document_ids)
            for d in range(row.num_docs):
                span = (docs == d).nonzero().flatten()
                ids = torch.tensor(row.input_ids)[span]
                match = [s for s in samples if s["input_ids"] == ids.tolist()][0]
                kw = {"pixel_values": match["pixel_values"]} if with_images else {}
                alone = _token_losses(model(input_ids=ids[None], **kw).logits, torch.tensor([match["labels"]]))
                torch.testing.assert_close(packed[b, span[:-1]], alone[0], atol=1e-5, rtol=1e-5)
                if span[0] > 0:  # the previous document's last token predicts nothing here
                    assert packed[b, span[0] - 1] == 0


def test_too_long_sample_is_named():
    with pytest.raises(InputError, match="sample 1 has 40 tokens, more than the packing length 32"):
        pack([{"input_ids": [1] * 5, "labels": [1] * 5}, {"input_ids": [1] * 40, "labels": [1] * 40}], 32)
