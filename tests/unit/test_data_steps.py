"""The data path's small steps, each against numbers written out here: truncation never cuts an image,
role alternation, sequence packing (document ids, per-document positions, the masked first label,
exact fill), key tables in both directions past layer 9, strict loading of a transposed tensor, and
shards that keep under their size limit and read back whole."""
import json

import pytest
import torch
from torch import nn

from ocellus.data import messages as M
from ocellus.data.encode import IGNORE_INDEX, encode_messages
from ocellus.errors import CheckpointError, InputError
from ocellus.hub.checkpoint import load_state_strict
from ocellus.hub.keymap import KeyMap
from ocellus.hub.safetensors_io import INDEX, checkpoint_files, read_tensors, write_tensors
from ocellus.data.packing import IGNORE, collate_packed, pack
from test_encode import CONVERSATION, tok, tok_dir  # noqa: F401  (fixtures: the tiny BPE tokenizer)


# --- encode: truncation stops before the last image token, not after it -----------------------

def test_truncation_refuses_to_cut_the_last_image_token(tok):  # noqa: F811
    full = encode_messages(CONVERSATION, tok, "chatml", images_tokens=[3], train_on="all")
    image_id = tok.convert_tokens_to_ids("<image>")
    last = max(i for i, t in enumerate(full.input_ids) if t == image_id)
    kept = encode_messages(CONVERSATION, tok, "chatml", images_tokens=[3], max_length=last + 1, truncate=True,
                           train_on="all")
    assert kept.input_ids == full.input_ids[:last + 1] and kept.input_ids.count(image_id) == 3
    with pytest.raises(InputError, match="would cut through its images"):
        encode_messages(CONVERSATION, tok, "chatml", images_tokens=[3], max_length=last, truncate=True, train_on="all")


def test_alternation_allows_a_system_message_only_first():
    ok = M.normalize([{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                      {"role": "assistant", "content": "a"}])
    M.validate(ok, alternate=True)
    late = M.normalize([{"role": "user", "content": "u"}, {"role": "system", "content": "s"},
                        {"role": "assistant", "content": "a"}])
    with pytest.raises(InputError, match="expected role assistant, got system"):
        M.validate(late, alternate=True)


# --- packing ----------------------------------------------------------------------------------

def _sample(start, n):
    ids = list(range(start, start + n))
    return {"input_ids": ids, "labels": [i + 1000 for i in ids]}


def test_packing_ids_positions_and_labels_by_hand():
    samples = [_sample(10, 3), _sample(20, 5), _sample(30, 2)]   # FFD order: 5, 3, 2 -> one row of 10
    rows = pack(samples, max_len=10)
    assert len(rows) == 1                                        # 5 + 3 + 2 fills the row exactly
    r = rows[0]
    assert r.sources == [1, 0, 2]
    assert r.input_ids == [20, 21, 22, 23, 24, 10, 11, 12, 30, 31]
    assert r.position_ids == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1]
    assert r.document_ids == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert r.labels == [1020, 1021, 1022, 1023, 1024, IGNORE, 1011, 1012, IGNORE, 1031]
    batch = collate_packed(rows + pack([_sample(40, 2)], 10), max_len=10)
    assert batch["document_ids"][1].tolist() == [0, 0] + [-1] * 8
    assert batch["position_ids"][1].tolist() == [0, 1] + [0] * 8
    assert batch["labels"][1].tolist() == [1040, 1041] + [IGNORE] * 8


def test_packing_opens_a_new_row_only_when_the_sample_does_not_fit():
    rows = pack([_sample(0, 4), _sample(10, 4), _sample(20, 1)], max_len=8)
    assert [len(r.input_ids) for r in rows] == [8, 1]


# --- hub: key tables, strict load, shards ----------------------------------------------------

KEYS = KeyMap(rules=(("layers.{i}.attn.{rest}", "model.layers.{i}.self_attn.{rest}"),
                     ("embed.weight", "model.embed_tokens.weight")), drop=(r"rotary_emb\.inv_freq$",))


@pytest.mark.parametrize("layer", [0, 7, 12, 103])
def test_key_table_both_directions_any_layer_number(layer):
    ours, theirs = f"layers.{layer}.attn.q_proj.weight", f"model.layers.{layer}.self_attn.q_proj.weight"
    assert KEYS.to_ours(theirs) == ours
    assert KEYS.to_theirs(ours) == theirs
    assert KEYS.to_theirs("embed.weight") == "model.embed_tokens.weight"
    assert KEYS.to_ours("model.embed_tokens.weight") == "embed.weight"
    assert KEYS.to_theirs("model.embed_tokens.weight") is None and KEYS.to_ours("embed.weight") is None
    assert KEYS.dropped(f"model.layers.{layer}.self_attn.rotary_emb.inv_freq")


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 5)


IDENTITY = KeyMap(rules=(("{rest}", "{rest}"),))


def test_strict_load_refuses_a_transposed_weight_and_unexpected_keys():
    m = _Tiny()
    good = {"proj.weight": torch.randn(5, 3), "proj.bias": torch.randn(5)}
    load_state_strict(m, good, IDENTITY)
    assert torch.equal(m.proj.weight, good["proj.weight"])
    with pytest.raises(CheckpointError, match=r"shape mismatch \(1\): proj.weight: checkpoint \(3, 5\)"):
        load_state_strict(_Tiny(), {**good, "proj.weight": good["proj.weight"].t().contiguous()}, IDENTITY)
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): extra.weight"):
        load_state_strict(_Tiny(), {**good, "extra.weight": torch.zeros(2)}, IDENTITY)


def test_shards_stay_under_the_limit_and_read_back_whole(tmp_path):
    tensors = {f"t{i}": torch.full((10,), float(i)) for i in range(7)}      # 40 bytes each
    write_tensors(tensors, tmp_path, max_shard_bytes=100)                    # at most 2 per shard
    index = json.loads((tmp_path / INDEX).read_text())
    shards = {}
    for name, file in index["weight_map"].items():
        shards.setdefault(file, []).append(name)
    assert sorted(len(v) for v in shards.values()) == [1, 2, 2, 2]
    assert index["metadata"]["total_size"] == 7 * 40
    back = read_tensors(checkpoint_files(tmp_path))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)


# --- processor: image_wrap numbering and the CLIP token count ---------------------------------

def test_processor_wraps_each_image_with_its_one_based_number(tok):  # noqa: F811
    from PIL import Image

    from ocellus.data.image import ImageProcessorConfig
    from ocellus.data.processor import Processor
    proc = Processor(tok, ImageProcessorConfig(size_hw=(28, 28)), patch_size=14, image_wrap=("Picture {n}: ", "\n"))
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (30, 40), (10, 200, 10))]
    out = proc(text="<image>left<image>right", images=images, add_special_tokens=False)
    # (28/14)^2 patches + CLS - 1 ('default' drops the first token) = 4 tokens per image
    expected = "Picture 1: " + "<image>" * 4 + "\nleftPicture 2: " + "<image>" * 4 + "\nright"
    assert tok.decode(out["input_ids"][0].tolist()) == expected
    assert out["pixel_values"].shape == (2, 3, 28, 28)


# --- LLaVA-NeXT anyres views against transformers, on a grid where tile order and rounding show ---

def test_anyres_views_row_major_and_ceil_fit_match_transformers(tmp_path):
    import numpy as np
    from PIL import Image
    from transformers import LlavaNextImageProcessorPil

    from ocellus.data.image import ImageProcessorConfig
    from ocellus.data.image_tiling import anyres_fit_size, preprocess_anyres
    # a 30x41 image on the one 2x2 canvas of 28-px tiles: width binds, 30 * 56/41 = 40.98 -> 41 rows (ceil)
    assert anyres_fit_size((30, 41), (56, 56)) == (41, 56)
    assert anyres_fit_size((41, 30), (56, 56)) == (56, 41)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((30, 41), (41, 30))]
    ref = LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                     image_grid_pinpoints=[[56, 56]])
    ref.save_pretrained(tmp_path)
    ours, sizes = preprocess_anyres(images, ImageProcessorConfig.from_dir(tmp_path))
    theirs = ref(images, return_tensors="pt")
    assert ours.shape == theirs["pixel_values"].shape == (2, 5, 3, 28, 28)
    torch.testing.assert_close(ours, theirs["pixel_values"], rtol=0, atol=1e-6)
    assert sizes.tolist() == [[30, 41], [41, 30]]
