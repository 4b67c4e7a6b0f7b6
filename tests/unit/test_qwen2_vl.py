"""Qwen2-VL beyond parity: the processor (dynamic resolution, token counts, typed errors, export ->
processor_from_dir), video frames (sampling, pixel budget, zero frames), packing with per-document
M-RoPE ids, stages addressing vision / connector / llm, and the tiny recipe (a few steps, loss falls)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ocellus
from ocellus.data.image import ImageProcessorConfig
from ocellus.data.video import VideoSampling, as_frames, preprocess_video, sample_indices
from ocellus.errors import ConfigError, InputError
from ocellus.models.families.qwen2_vl import modeling as qwen2_vl
from ocellus.models.families.qwen2_vl import packing as qwen2_vl_packing, processor as qwen2_vl_processor
from ocellus.data.packing import pack
from ocellus.train.stages import apply_stage

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def parts(tiny_vlm_parts):
    tok = ocellus.load_processor(tiny_vlm_parts / "text" / "model")
    tok = getattr(tok, "tokenizer", tok)
    spec = {"llm_from": str(tiny_vlm_parts / "text" / "model"),
            "config": {"vision_config": {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8},
                       "mrope_section": [2, 1, 1]}}
    torch.manual_seed(0)
    return tok, qwen2_vl.compose(spec, tok).eval(), spec


def _icfg(size=64):
    from ocellus.train.recipe_data import image_config
    return image_config(size)


def _image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_compose_keeps_the_decoder_and_refuses_a_clip_tower(parts, tiny_vlm_parts):
    tok, model, spec = parts
    llm = ocellus.load(spec["llm_from"])
    ids = torch.tensor([tok.encode("a red circle")])
    with torch.no_grad():  # text only: M-RoPE ids equal 1D positions and the zero q/k/v biases change nothing
        torch.testing.assert_close(model(input_ids=ids).logits, llm(ids).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="vision_from"):
        qwen2_vl.compose({**spec, "vision_from": str(tiny_vlm_parts / "vit" / "model")}, tok)
    with pytest.raises(ConfigError, match="mrope_section"):
        qwen2_vl.compose({**spec, "config": {"mrope_section": [1, 1, 1]}}, tok)


def test_processor_dynamic_resolution_counts_and_errors(parts):
    tok, model, _ = parts
    proc = qwen2_vl_processor.training_processor(model, tok, _icfg(64))
    assert proc.image_token == "<image>"                       # the tiny BPE has no <|image_pad|>
    # 64x64 stays (multiple of 16, within 64*64); 100x40 -> 96x32... shrunk under the 4096 budget
    batch = proc(text="<image> what? <image>", images=[_image(64, 64), _image(100, 40, 1)])
    grids = batch["image_grid_thw"].tolist()
    assert grids[0] == [1, 8, 8] and grids[1][1] * grids[1][2] * 64 <= 64 * 64
    want = sum(t * h * w // 4 for t, h, w in grids)
    assert int((batch["input_ids"] == proc.image_token_id).sum()) == want
    assert batch["pixel_values"].shape == (sum(t * h * w for t, h, w in grids), 3 * 2 * 8 * 8)
    with torch.no_grad():
        assert model(**batch).logits.shape[1] == batch["input_ids"].shape[1]
    with pytest.raises(InputError, match="image 0 is 10x10 = 100 pixels, below min_pixels=256"):
        proc.image_inputs([_image(10, 10)])
    assert proc.image_inputs([_image(16, 16)])[1] == [1]          # exactly min_pixels: taken as it is
    # the eval scene side: the largest square of whole merged patches (16 px) within the budget (70^2 -> 64)
    assert qwen2_vl_processor._image_config(_icfg(70), model.visual.config).size_hw == (64, 64)
    upscale = qwen2_vl_processor.Qwen2VLImages(qwen2_vl_processor._image_config(_icfg(64), model.visual.config), upscale_small=True)
    assert upscale([_image(10, 10)])[1] == [1]                   # opted in: enlarged to one merged patch
    with pytest.raises(InputError, match="placeholders"):
        proc(text="<image> what?", images=[_image(64, 64), _image(64, 64)])


def test_export_then_processor_from_dir_gives_the_same_inputs(parts, tmp_path):
    tok, model, _ = parts
    proc = qwen2_vl_processor.training_processor(model, tok, _icfg(64))
    ocellus.save(model, tmp_path, tokenizer=tok)
    qwen2_vl_processor.export_processor(model, tok, _icfg(64), tmp_path)
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "Qwen2VLImageProcessor" and pre["patch_size"] == 8
    # the budget written both ways (v4's min/max_pixels, v5's size), which must agree for either reader
    assert pre["size"] == {"shortest_edge": pre["min_pixels"], "longest_edge": pre["max_pixels"]}
    again = ocellus.load_processor(tmp_path)
    images = [_image(64, 48, 2)]
    a, b = proc(text="<image> hi", images=images), again(text="<image> hi", images=images)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    reloaded = ocellus.load(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**b).logits, model(**a).logits)
    # the exported file as transformers reads it: the same pixels and grids, small and wide images too
    import transformers as tf
    hf = tf.Qwen2VLImageProcessor.from_pretrained(tmp_path)
    more = [_image(20, 20, 3), _image(64, 48, 2), _image(200, 30, 4)]
    ref, ours = hf(images=more, return_tensors="pt"), again.image_inputs(more)[0]
    assert torch.equal(ref["image_grid_thw"], ours["image_grid_thw"])
    torch.testing.assert_close(ref["pixel_values"], ours["pixel_values"], atol=1e-5, rtol=0)
    for key, bad in (("patch_size", 14), ("merge_size", 1)):     # a preprocessor the tower cannot read
        (tmp_path / "preprocessor_config.json").write_text(json.dumps({**pre, key: bad}))
        with pytest.raises(ConfigError, match=f"{key}={bad}"):
            ocellus.load_processor(tmp_path)


def test_video_sampling_budget_and_errors():
    # transformers' rule: n = total / video_fps * fps, clamped, floored to the temporal patch
    assert sample_indices(60, video_fps=30, fps=2) == [0, 15, 30, 45]         # 2 s at 2 fps -> 4 frames
    assert sample_indices(300, video_fps=30, fps=2, max_frames=6) == [0, 50, 100, 150, 200, 250]
    assert sample_indices(10, video_fps=30, fps=2, min_frames=4) == [0, 2, 5, 7]  # clamped up to min_frames
    assert sample_indices(75, video_fps=30, fps=2) == [0, 18, 37, 56]         # 5 frames floored to 2 patches
    with pytest.raises(InputError, match="zero frames"):
        sample_indices(0, video_fps=30)
    with pytest.raises(InputError, match="zero frames"):
        as_frames(np.zeros((0, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="zero frames"):
        as_frames([])
    cfg = ImageProcessorConfig(min_pixels=16 * 16, max_pixels=64 * 64, patch_size=8, temporal_patch_size=2,
                               merge_size=2, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    frames = np.random.default_rng(0).integers(0, 255, (60, 64, 64, 3), dtype=np.uint8)
    out = preprocess_video(frames, cfg, video_fps=30, fps=2)
    assert out.video_grid_thw == (2, 8, 8) and out.frame_indices == (0, 15, 30, 45)
    assert out.second_per_grid_ts == pytest.approx(1.0)          # 2 frames a patch at 2 fps
    # min_frames kept 4 of a 10-frame clip (1/3 s): the rate kept is 12 fps, so a patch spans 2 / 12 s
    assert preprocess_video(frames[:10], cfg, video_fps=30, fps=2).second_per_grid_ts == pytest.approx(2 / 12)
    sampling = VideoSampling.from_dict({"do_sample_frames": True, "fps": 1, "min_frames": 2, "max_frames": 6})
    assert sampling == VideoSampling(do_sample_frames=True, fps=1.0, min_frames=2, max_frames=6)
    as_pil = preprocess_video([Image.fromarray(f) for f in frames], cfg, video_fps=30, fps=2)
    assert torch.equal(as_pil.pixel_values_videos, out.pixel_values_videos)
    capped = preprocess_video(frames, cfg, video_fps=30, fps=2, total_pixels=4 * 32 * 32)
    assert capped.video_grid_thw == (2, 4, 4)                     # 1024 pixels a frame under the budget
    with pytest.raises(InputError, match="total_pixels"):
        preprocess_video(frames, cfg, video_fps=30, fps=2, total_pixels=4 * 8 * 8)


def test_video_forward_and_generation_through_the_model(parts):
    tok, model, _ = parts
    model = qwen2_vl.Qwen2VL(model.visual, model.merger, model.language_model,
                             qwen2_vl.Qwen2VLTokens(image=model.tokens.image, video=tok.convert_tokens_to_ids("<box>")))  # a stand-in video pad
    images = qwen2_vl_processor.Qwen2VLImages(qwen2_vl_processor._image_config(_icfg(64), model.visual.config))
    frames = np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    video, counts = images.videos([frames], video_fps=4)
    assert video["video_grid_thw"].tolist() == [[2, 8, 8]] and counts == [32]
    ids = torch.tensor([tok.encode("hi") + [model.tokens.video] * counts[0] + tok.encode("what?")])
    with torch.no_grad():
        logits = model(input_ids=ids, **video).logits
        assert torch.isfinite(logits).all()
        with pytest.raises(InputError, match="video"):
            model(input_ids=ids)
    out = model.generate(input_ids=ids, max_new_tokens=3, **video)
    assert out.shape == (1, ids.shape[1] + 3)


def _token_losses(logits, labels):
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")


def test_packed_batch_gives_each_sample_its_unpacked_loss(parts):
    tok, model, _ = parts
    images = qwen2_vl_processor.Qwen2VLImages(qwen2_vl_processor._image_config(_icfg(64), model.visual.config))
    g = torch.Generator().manual_seed(0)
    samples = []
    for i, (w, h) in enumerate([(64, 64), (48, 32), (0, 0), (32, 64), (0, 0)]):
        text = torch.randint(5, 60, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g).tolist()
        s = {"input_ids": text, "labels": text}
        if w:
            media, (n,) = images([_image(w, h, i)])
            s = {"input_ids": text[:1] + [model.tokens.image] * n + text[1:],
                 "labels": text[:1] + [-100] * n + text[1:], **media}
        samples.append(s)
    rows = pack(samples, max_len=48)
    assert len(rows) < len(samples)
    batch = qwen2_vl_packing.collate_packed(rows, samples, 48, model)
    assert batch["position_ids"].shape == (3, len(rows), 48)
    with torch.no_grad():
        packed = _token_losses(model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"])
        for b, row in enumerate(rows):
            docs = torch.tensor(row.document_ids)
            for d, i in enumerate(row.sources):
                span = (docs == d).nonzero().flatten()
                s = samples[i]
                kw = {k: s[k] for k in ("pixel_values", "image_grid_thw") if k in s}
                alone = _token_losses(model(input_ids=torch.tensor([s["input_ids"]]), **kw).logits,
                                      torch.tensor([s["labels"]]))
                torch.testing.assert_close(packed[b, span[:-1]], alone[0], atol=1e-5, rtol=1e-5)
        # the same batch with 1D (plain) positions is a different computation: the 3D ids matter
        flat = {**batch, "position_ids": batch["position_ids"][0]}
        flat.pop("labels")
        with pytest.raises(InputError, match="plain text positions"):
            model(**flat)


def test_stage_freezes_by_part(parts):
    _, model, _ = parts
    report = apply_stage(model, {"vision": "frozen", "connector": "full", "llm": "frozen"})
    assert report.counts["connector"][0] == sum(p.numel() for p in model.merger.parameters())
    assert report.counts["vision"][0] == report.counts["llm"][0] == 0
    model.requires_grad_(False)


def test_recipe_trains_and_the_loss_falls(tiny_vlm_parts, qwen2_towers, tmp_path):
    from ocellus.train.tasks import load_recipe, run_recipe
    text = tiny_vlm_parts / "text" / "model"
    recipe = load_recipe(ROOT / "recipes" / "qwen2_vl_tiny_shapes" / "train.yaml", [
        "train.progress=false", "train.log_every=2", "train.warmup_steps=2", "train.max_steps=8",
        "train.batch_size=8", "train.lr=3e-3", "data.n=64", f"train.out_dir={tmp_path}", f"model.llm_from={text}",
        f"tokenizer.from={text}", f"model.vision_from={qwen2_towers / 'qwen2_vl' / 'model'}"])
    recipe["model"]["config"]["mrope_section"] = [2, 1, 1]      # the fixture's decoder has 8-dim heads
    run_recipe(recipe)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
    model, proc = ocellus.load(tmp_path / "model"), ocellus.load_processor(tmp_path / "model")
    assert model.hf_config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    batch = proc(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]}],
                 images=[_image(64, 64)])
    n = batch["input_ids"].shape[1]
    assert n < model.generate(**batch, max_new_tokens=2).shape[1] <= n + 2   # eos may end it early
    from ocellus.eval.harness import evaluate
    result = evaluate(tmp_path / "model", "shapes-vqa", n=4, batch_size=4, printer=lambda *a: None)
    assert result["n"] == 4 and "all" in result["table"]         # `ocellus eval` runs on the export
