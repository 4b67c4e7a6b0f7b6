"""CapFilt's filter (BLIP, sec. 3.3, fig. 3) on constructed cases whose answer is known.

  - run_capfilt's wiring, with training, captioning and ITM scoring replaced by stand-ins whose answers
    we choose: a web text (original or synthetic) survives iff the FILTER model's P(match) > threshold
    (strictly); a filtered web caption is dropped; the captioner's synthetic captions go through the same
    filter; unencodable texts (score None) are dropped; clean pairs always stay; and the final pretraining
    reads exactly that dataset.
  - itm_filter: P(match) is the ITM head's class 1 (the class ITM trains as "match"), and each score
    lands on its own (image, caption) pair when some captions are skipped.
"""
import json
from pathlib import Path

import pytest
import torch

import ocellus.train.capfilt as capfilt
from ocellus.data.shapes import caption
from ocellus.data.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


RECIPES = Path(__file__).resolve().parents[2] / "recipes"
N_WEB, N_CLEAN, THRESHOLD = 12, 3, 0.5


def test_filter_keeps_exactly_the_pairs_itm_says_match(tmp_path, monkeypatch):
    truth = [caption(s) for s in capfilt.scenes({"image_size": 64, "min_objects": 1, "max_objects": 2}, 1, N_WEB)]
    wrong = "A purple cross and a purple cross and a purple cross."

    def synthetic(i):                      # the captioner: right, wrong, or an empty (unencodable) text
        return [truth[i], wrong, ""][i % 3]
    stages, calls = {}, []

    def fake_train_stage(base, out, data_path, train, model=None, tokenizer=None, evaluate_n=None, resume=False):
        stages[out.name] = data_path
        return out / "model"

    def fake_caption_images(model, tok, images, top_p, max_new_tokens, batch_size, seed):
        assert model == "loaded:captioner"
        return [synthetic(i) for i in range(len(images))]

    def fake_itm_filter(model, tok, images, captions, batch_size):
        """P(match): 0.9 for the true caption, 0.2 for a wrong one, None for an empty one; image 0 sits
        exactly at the threshold (kept only by a >= filter)."""
        assert model == "loaded:filter" and len(images) == len(captions) == N_WEB
        calls.append(list(captions))
        return [None if not c else THRESHOLD if i == 0 else 0.9 if c == truth[i] else 0.2
                for i, c in enumerate(captions)]
    monkeypatch.setattr(capfilt, "train_stage", fake_train_stage)
    monkeypatch.setattr(capfilt, "caption_images", fake_caption_images)
    monkeypatch.setattr(capfilt, "itm_filter", fake_itm_filter)
    monkeypatch.setattr(capfilt, "load_model", lambda path: f"loaded:{Path(path).parent.name}")
    monkeypatch.setattr(Tokenizer, "from_dir", classmethod(lambda cls, path: "tok"))
    monkeypatch.setattr(capfilt, "evaluate", lambda *a, **k: dict.fromkeys(("t2i_R@1", "i2t_R@1", "t2i_R@5"), 0.0))
    config = {"base": str(RECIPES / "blip_tiny_shapes/pretrain.yaml"), "out_dir": str(tmp_path / "cf"),
              "clean": {"n": N_CLEAN, "seed": 2}, "web": {"n": N_WEB, "seed": 1, "noise": 0.5},
              "filter": {"threshold": THRESHOLD}}
    result = capfilt.run_capfilt(config, printer=lambda s: None)

    out = tmp_path / "cf"
    web = {m["id"]: m["caption"] for m in map(json.loads, (out / "data_noisy/meta.jsonl").read_text().splitlines())
           if m["source"] == "web"}
    web_caps = [web[f"web-{i}"] for i in range(N_WEB)]
    assert calls == [web_caps, [synthetic(i) for i in range(N_WEB)]]     # web texts, then synthetic ones
    assert any(c != t for c, t in zip(web_caps, truth)) and any(c == t for c, t in zip(web_caps, truth))
    expect = {f"web-{i}": web_caps[i] for i in range(1, N_WEB) if web_caps[i] == truth[i]}
    expect |= {f"syn-{i}": truth[i] for i in range(1, N_WEB) if i % 3 == 0}
    expect |= {f"clean-{i}": None for i in range(N_CLEAN)}
    kept = [json.loads(line) for line in (out / "data_bootstrapped/meta.jsonl").read_text().splitlines()]
    assert {m["id"] for m in kept} == set(expect)
    assert all(m["caption"] == expect[m["id"]] for m in kept if expect[m["id"]] is not None)
    assert result["web_kept"] == sum(k.startswith("web") for k in expect)
    assert result["synthetic_kept"] == sum(k.startswith("syn") for k in expect)
    assert result["rejected_unencodable"] == {"web": 0, "synthetic": 4}
    assert result["noise_web_after_filter"] == 0.0 and result["noise_synthetic_after_filter"] == 0.0
    assert stages["pretrain_bootstrapped"] == out / "data_bootstrapped/data.json"


def test_itm_filter_reads_the_match_class_and_aligns_scores_with_pairs():
    from ocellus.data.shapes import render
    from test_albef import shapes_tokenizer
    from test_blip import tiny_blip
    tok = shapes_tokenizer()
    model = tiny_blip(tok=tok)
    images = [render(s) for s in capfilt.scenes({"image_size": 32}, 0, 4)]
    caps = ["A red circle.", "", "A blue square and a green star.", "A yellow triangle."]
    scores = capfilt.itm_filter(model, tok, images, caps, batch_size=2)
    assert scores[1] is None
    # each score is that pair's own P(match), scored alone
    from ocellus.data.image import preprocess
    from ocellus.models.contrastive.albef import encode_captions
    from ocellus.train.contrastive_run import image_cfg
    for i in (0, 2, 3):
        enc = encode_captions([caps[i]], tok, model.config, model.text_encoder.config.max_position_embeddings)
        alone = model.itm_scores(preprocess([images[i]], image_cfg(model.visual_encoder.config.image_size)), **enc)
        assert abs(scores[i] - float(alone[0])) < 1e-5
    assert len({round(scores[i], 6) for i in (0, 2, 3)}) == 3
    # a head that says "match" (class 1, the ITM label of positives) with logit margin 2: P = sigmoid(2)
    with torch.no_grad():
        model.itm_head.weight.zero_()
        model.itm_head.bias.copy_(torch.tensor([0.0, 2.0]))
    scores = capfilt.itm_filter(model, tok, images, caps, batch_size=2)
    for i in (0, 2, 3):
        assert abs(scores[i] - torch.sigmoid(torch.tensor(2.0)).item()) < 1e-6
