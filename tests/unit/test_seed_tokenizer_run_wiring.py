"""The SEED codec recipe feeds each phase the right pairs (Ge et al. 2023, sec. 3.1): the ViT classifies an
image as its own caption's class, and the tokenizer's InfoNCE pairs every image with ITS caption's sentence
embedding and its own frozen-ViT embedding as the reconstruction target. The trainer is stubbed: the test
reads the batches each phase would train on (one real collate of every row) and rebuilds them by hand."""
import torch

import ocellus.train.seed_tokenizer_run as run
from ocellus.data.shapes import SHAPES
from ocellus.train.unified import caption_data

COLOURS = ["red", "blue"]


def test_each_phase_trains_on_the_images_own_caption_and_embedding(monkeypatch, tmp_path):
    torch.manual_seed(0)
    table = torch.randn(len(COLOURS) * len(SHAPES), 6)                                 # one row per caption
    seen_captions, fits = [], {}
    monkeypatch.setattr(run, "caption_embeddings", lambda caps, enc: (seen_captions.extend(caps), table)[1])

    def fake_fit(model, rows, collate, section, stage, out, name, seed):
        fits[name] = (model, collate(list(range(rows))), stage)
        return []
    monkeypatch.setattr(run, "_fit", fake_fit)
    monkeypatch.setattr(run, "measure_tokenizer", lambda *a, **k: {})                 # (a linear probe: slow)
    recipe = {"task": "seed_tokenizer", "name": "t", "seed": 0,
              "data": {"image_size": 16, "n": 12, "colours": COLOURS},
              "model": {"text_encoder": "minilm", "num_codes": 8, "code_dim": 4,
                        "vit": {"image_size": 16, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                                "num_hidden_layers": 1, "num_attention_heads": 2},
                        "qformer": {"num_query_tokens": 2, "hidden_size": 16, "num_hidden_layers": 1,
                                    "num_attention_heads": 2, "intermediate_size": 32, "cross_attention_frequency": 1}},
              "train": {"out_dir": str(tmp_path)}, "eval": {"n_test": 6}}
    run.run_seed(recipe)
    x, caps, _, _ = caption_data(12, 16, "train", COLOURS, 0)                         # the same training images
    want_id = torch.tensor([seen_captions.index(c) for c in caps])                     # each image's caption row
    _, vit_batch, _ = fits["seed vit"]
    assert torch.equal(vit_batch["pixel_values"], x) and torch.equal(vit_batch["labels"], want_id)
    tok, b, stage = fits["seed tokenizer"]
    assert torch.equal(b["pixel_values"], x) and torch.equal(b["caption_ids"], want_id)
    torch.testing.assert_close(b["caption_embeds"], table[want_id])                   # its own caption's embedding
    with torch.no_grad():
        torch.testing.assert_close(b["image_embeds"], tok.vision(x).pooler_output)    # its own ViT embedding
    assert stage["vision"] == "frozen" and all(v == "full" for k, v in stage.items() if k != "vision")
