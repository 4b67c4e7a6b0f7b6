"""The training runs' wiring (train/unified.py, albef_blip_run.py, seed_tokenizer_run.py, contrastive_run.py,
tasks/vit_classify.py, shard_loader.py, data/hf_dataset.py): slips that still train but feed the wrong split, pair,
part or position, or score a measurement against the wrong thing. Each test checks a property only the right
wiring has, on tiny models and a few samples (scripts/mutations/train_runs.toml names the bug each one guards)."""
import json
import types

import numpy as np
import pytest
import torch

from ocellus.data.shapes import COLOURS as PALETTE, Obj, render, Scene, SHAPES
from ocellus.train import unified

from test_shards import key_of, write_shards

COLOURS = ["red", "blue"]
pytestmark = pytest.mark.usefixtures("one_thread")


def _pixels(img) -> torch.Tensor:
    return torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1) / 127.5 - 1


def _key(img: torch.Tensor) -> bytes:
    return img.numpy().tobytes()


class _ShapeJudge:
    """A judge that knows the shape of every image it was told about (and says -1 otherwise)."""

    def __init__(self):
        self.shape = {}

    def learn(self, x, ks):
        self.shape.update({_key(img): int(k) for img, k in zip(x, ks)})

    def __call__(self, images):
        ids = torch.tensor([self.shape.get(_key(img), -1) for img in images])
        return torch.nn.functional.one_hot(ids.clamp(min=0), len(SHAPES)).float() * (ids >= 0)[:, None]


# ---- train/unified.py -----------------------------------------------------------------------------------

def test_unified_test_split_is_not_the_training_split():
    """caption_data's held-out split draws other images than the training split (the eval is not on train)."""
    tr, te = unified.caption_data(20, 16, "train", COLOURS)[0], unified.caption_data(20, 16, "test", COLOURS)[0]
    same = [torch.equal(a, b) for a, b in zip(tr, te)]
    assert sum(same) < 5, same


def test_unified_collate_masks_the_padding_of_shorter_rows():
    """Rows whose caption was dropped are shorter: their padding is masked out and never a target (-100)."""
    from ocellus.models.generative.checkpoint import build
    from _unified_tiny import VQ_SPEC
    torch.manual_seed(0)
    model = unified.build_model({"family": "emu3", "dim": 32, "num_layers": 1, "num_heads": 2}, build(dict(VQ_SPEC)),
                                unified.text_vocab(COLOURS), 16)
    x, caps, _, _ = unified.caption_data(2, 16, "train", COLOURS)
    batch = unified.make_collate(x)(unified.token_rows(model, x, caps, ["t2i", "i2t"], 1.0 - 1e-9, 0))
    pad = batch["attention_mask"] == 0
    assert pad.any() and (batch["labels"][pad] == -100).all()


def test_unified_measure_gives_a_perfect_model_full_marks(monkeypatch):
    """measure() on a model that captions every held-out image right and draws every caption right (and a judge
    that knows the shapes): every accuracy is 1. Captions are looked up among the held-out images only, so a
    measure reading the training split scores 0; the colour of a drawing is checked against the colour asked."""
    size, n = 16, 10
    x, caps, ks, _ = unified.caption_data(n, size, "test", COLOURS)
    said = {_key(img): cap for img, cap in zip(x, caps)}
    judge = _ShapeJudge()
    judge.learn(*unified.caption_data(200, size, "test", COLOURS)[::2])

    class Perfect:
        def eval(self):
            return self

        def describe(self, chunk):
            return [said.get(_key(img), "? ?") for img in chunk]

        def generate_images(self, prompts, generator=None, **gen):
            out = []
            for p in prompts:
                colour, shape = p.split()
                img = _pixels(render(Scene(size, "white", (Obj(shape, colour, (3, 3, 13, 13)),))))
                judge.learn([img], [SHAPES.index(shape)])
                out.append(img)
            return torch.stack(out)
    monkeypatch.setattr(unified, "judge_fd", lambda *a: 0.0)
    res = unified.measure(Perfect(), COLOURS, size, judge, x, n_test=n, n_per_caption=1)
    for key in ("caption_shape_acc", "caption_colour_acc", "caption_acc", "draw_shape_acc", "draw_colour_acc",
                "draw_acc", "judge_acc_real"):
        assert res[key] == 1.0, (key, res[key])


def test_unified_run_trains_the_model_but_not_its_image_tokenizer(tmp_path):
    """One step of run_unified with the default stage: the decoder moves, the VQ tokenizer (whose codes are the
    data) stays exactly as loaded and is frozen (no gradient reaches it, so only requires_grad shows a stage that
    would hand it to the optimizer and to the trainable-only checkpoints)."""
    from _unified_tiny import tiny_recipe
    from ocellus.models.generative.checkpoint import load_generator
    recipe = tiny_recipe(tmp_path, {"family": "emu3"}, steps=1)
    recipe["data"]["n"], recipe["train"].update(batch_size=4, warmup_steps=0, lr=1e-2)
    model = unified.run_unified(recipe)["model"]
    vq = load_generator(recipe["model"]["tokenizer_from"])
    assert not any(p.requires_grad for p in model.tokenizer.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.tokenizer.state_dict().values(), vq.state_dict().values()))
    torch.manual_seed(0)
    fresh = unified.build_model({k: v for k, v in recipe["model"].items() if k not in ("tokenizer_from", "tasks")},
                                vq, unified.text_vocab(COLOURS), 16)
    assert any(not torch.equal(a, b) for a, b in zip(model.decoder.state_dict().values(),
                                                     fresh.decoder.state_dict().values()))


# ---- train/albef_blip_run.py ---------------------------------------------------------------------------

def test_albef_caption_is_the_last_assistant_turn():
    from ocellus.train.albef_blip_run import caption_of
    turn = lambda role, text: {"role": role, "content": [{"type": "text", "text": text}]}   # noqa: E731
    sample = {"id": "x", "messages": [turn("user", "describe"), turn("assistant", "a draft."),
                                      turn("user", "again"), turn("assistant", " A red circle. ")]}
    assert caption_of(sample) == "A red circle."


@pytest.fixture(scope="module")
def bpe():
    from ocellus.data.shapes_pairs import shapes_pairs
    from ocellus.data.bpe import train_bpe
    pair = shapes_pairs({"image_size": 32}, 5, 100)
    return train_bpe([pair(i)[1] for i in range(100)], 300, eos_token="<|endoftext|>")


VISION = dict(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2)
TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=24)


def test_itm_rerank_scores_each_query_top_k_by_its_own_pair(bpe, monkeypatch):
    """itm_rerank_retrieval's score matrices: ITC similarity, with each query's top k replaced by 10 + P(match)
    of THAT (text, image) pair: P[t, i] for text->image, P[t, i] at [i, t] for image->text."""
    from ocellus.data.image import image_config, preprocess
    from ocellus.data.shapes_pairs import shapes_pairs
    from ocellus.eval.retrieval import EVAL_SEED, SHAPES_RENDER_SIZE
    from ocellus.models.contrastive.albef import encode_captions
    from ocellus.train import albef_blip_run
    torch.manual_seed(0)
    recipe = {"task": "albef", "model": {"vision": VISION, "text": TEXT,
                                         "align": dict(embed_dim=8, queue_size=8, text_layers=1)}}
    model = albef_blip_run.build_model(recipe, bpe).eval()
    seen = []
    monkeypatch.setattr(albef_blip_run, "recall_at_k", lambda s, c: (seen.append(s), {1: 0.0})[1])
    n, k = 6, 3
    albef_blip_run.itm_rerank_retrieval(model, bpe, n=n, k=k)
    pair = shapes_pairs({"image_size": SHAPES_RENDER_SIZE}, EVAL_SEED, n)
    images, captions = zip(*(pair(i) for i in range(n)))
    with torch.no_grad():
        states = model.visual_encoder(preprocess(list(images), image_config(16)))
        enc = encode_captions(list(captions), bpe, model.config, 24)
        img = torch.nn.functional.normalize(model.vision_proj(states.pooler_output), dim=-1)
        sim = torch.nn.functional.normalize(model.get_text_features(**enc), dim=-1) @ img.t()      # [T, I]
        t, i = torch.arange(n).repeat_interleave(n), torch.arange(n).repeat(n)
        p = model.itm_from_states(states.last_hidden_state[i], enc["input_ids"][t], enc["attention_mask"][t])
    P = p.view(n, n)                                                                             # [T, I]
    want_t2i, want_i2t = sim.clone(), sim.t().clone()
    for q in range(n):
        for c in sim[q].topk(k).indices.tolist():
            want_t2i[q, c] = 10 + P[q, c]
        for c in sim.t()[q].topk(k).indices.tolist():
            want_i2t[q, c] = 10 + P[c, q]
    torch.testing.assert_close(seen[0], want_t2i, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen[1], want_i2t, rtol=1e-5, atol=1e-5)


# ---- train/seed_tokenizer_run.py -----------------------------------------------------------------------

def test_seed_curve_means_disjoint_first_and_last_windows():
    from ocellus.train.seed_tokenizer_run import curve
    assert curve([{"loss": v} for v in (6.0, 5.0, 4.0, 3.0, 2.0, 1.0)]) == \
        {"steps": 6, "first_loss": 5.0, "last_loss": 2.0}


def test_seed_detokenizer_trains_on_decoded_codes_and_the_probe_reads_them(monkeypatch, tmp_path):
    """Phase 3 pairs every image with the embedding its codes decode to (what the detokenizer receives at
    inference), and the reconstruction probe is read on those decoded embeddings, not on the ViT's own."""
    import ocellus.train.seed_tokenizer_run as run
    torch.manual_seed(0)
    monkeypatch.setattr(run, "caption_embeddings", lambda caps, enc: torch.randn(len(caps), 6))
    fits, probes = {}, []

    def fake_fit(model, rows, collate, section, stage, out, name, seed):
        fits[name] = collate(list(range(rows)))
        return [{"loss": 1.0}]
    monkeypatch.setattr(run, "_fit", fake_fit)
    monkeypatch.setattr(run, "linear_probe", lambda tr, ytr, te, yte, max_iter: (probes.append(te), 0.0)[1])
    recipe = {"task": "seed_tokenizer", "name": "t", "seed": 0, "data": {"image_size": 16, "n": 8, "colours": COLOURS},
              "model": {"text_encoder": "minilm", "num_codes": 8, "code_dim": 4,
                        "vit": {"image_size": 16, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                                "num_hidden_layers": 1, "num_attention_heads": 2},
                        "qformer": {"num_query_tokens": 2, "hidden_size": 16, "num_hidden_layers": 1,
                                    "num_attention_heads": 2, "intermediate_size": 32, "cross_attention_frequency": 1},
                        "detokenizer": {"unet": {"channels": 8, "channel_mults": [1, 2], "attention_levels": [1],
                                                 "num_heads": 2, "context_dim": 16, "groups": 4},
                                        "diffusion": {"num_train_timesteps": 20}}},
              "train": {"out_dir": str(tmp_path), "detokenizer": {"max_steps": 1}}, "eval": {"n_test": 4, "measure": False}}
    codec = run.run_seed(recipe)["codec"]
    x = unified.caption_data(8, 16, "train", COLOURS)[0]
    xt = unified.caption_data(4, 16, "test", COLOURS)[0]
    torch.testing.assert_close(fits["seed detokenizer"]["labels"], codec.embed(codec.encode(x)))
    with torch.no_grad():
        decoded, vit = codec.embed(codec.encode(xt)), codec.tokenizer.vision(xt).pooler_output
    assert not torch.allclose(decoded, vit, atol=1e-3)
    torch.testing.assert_close(probes[0], vit)
    torch.testing.assert_close(probes[1], decoded)


def test_seed_codec_measure_gives_a_perfect_codec_full_marks():
    """measure_codec on a codec that gives every image back exactly (and a judge that knows the shapes): shape,
    colour and both accuracies are 1."""
    from ocellus.train.seed_tokenizer_run import measure_codec
    x, _, ks, cs = unified.caption_data(10, 16, "test", COLOURS)
    judge = _ShapeJudge()
    judge.learn(x, ks)
    codec = types.SimpleNamespace(encode=lambda px: px, decode=lambda c, guidance_scale, seed, **gen: c)
    res, _ = measure_codec(codec, x, ks, cs, COLOURS, judge, [1.0], {}, 0)
    got = res["guidance_1"]
    assert (got["shape_acc"], got["colour_acc"], got["both_acc"]) == (1.0, 1.0, 1.0)


# ---- train/contrastive_run.py --------------------------------------------------------------------------

DATA = dict(source="shapes", n=8, seed=0, image_size=32, min_objects=1, max_objects=1)


def _moco(bpe):
    from ocellus.train import contrastive_run
    recipe = {"task": "moco", "seed": 0, "data": DATA,
              "model": {"vision": VISION, "moco": dict(dim=8, queue_size=8, momentum=0.9)}}
    torch.manual_seed(0)
    return recipe, contrastive_run.build_model(recipe, bpe)


def test_moco_batch_keeps_query_and_key_views_apart(bpe):
    from ocellus.train import contrastive_run
    recipe, model = _moco(bpe)
    dataset, collate = contrastive_run.build_dataset(recipe, bpe, model)
    rows = [dataset[i] for i in range(3)]
    batch = collate(rows)
    assert torch.equal(batch["pixel_values"], torch.stack([r[0] for r in rows]))
    assert torch.equal(batch["pixel_values_k"], torch.stack([r[1] for r in rows]))
    assert not torch.equal(batch["pixel_values"], batch["pixel_values_k"])


def test_moco_exports_the_query_encoder(bpe, tmp_path):
    """The exported backbone is the query encoder's (the one the gradient trains), not the momentum copy."""
    from ocellus.models.families.vit.checkpoint import load_vision
    from ocellus.train import contrastive_run
    recipe, model = _moco(bpe)
    with torch.no_grad():
        for p in model.encoder_q.backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))                 # a trained-looking query encoder, apart from the key one
    path = contrastive_run.export(recipe, model, bpe, tmp_path / "model")
    back, want = load_vision(path).state_dict(), model.encoder_q.backbone.state_dict()
    assert back.keys() == want.keys() and all(torch.equal(back[k], want[k]) for k in want)


def test_clip_batch_ids_make_equal_captions_positives(bpe):
    from ocellus.train import contrastive_run
    recipe = {"task": "contrastive", "model": {"vision": VISION, "text": TEXT, "projection_dim": 8}}
    model = contrastive_run.build_model(recipe, bpe)
    texts = ["A red circle.", "A blue star.", "A red circle."]
    batch = contrastive_run.caption_collate(bpe, model)([(torch.zeros(3, 16, 16), t) for t in texts])
    ids = batch["ids"].tolist()
    assert ids[0] == ids[2] != ids[1]


def test_exported_preprocessor_makes_the_training_pixels(tmp_path):
    """preprocessor_config.json (what eval and inference read) turns an image into the pixels training made."""
    from PIL import Image
    from ocellus.data.image import image_config, ImageProcessorConfig, preprocess
    from ocellus.data.processor import image_processor_dict
    from ocellus.train.contrastive_run import write_preprocessor
    write_preprocessor(tmp_path, 16)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (37, 29, 3), dtype=np.uint8))
    got = preprocess([image], ImageProcessorConfig.from_dict(image_processor_dict(tmp_path)))
    assert torch.equal(got, preprocess([image], image_config(16)))


# ---- train/tasks/vit_classify.py -----------------------------------------------------------------------

VIT = {"model_type": "clip_vision_model", "image_size": 48, "patch_size": 16, "hidden_size": 16,
       "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}


def test_vit_digits_train_on_the_train_split():
    from ocellus.data.digits import digits_samples
    from ocellus.data.image import image_config, preprocess
    from ocellus.train.tasks import vit_classify
    recipe = {"task": "vit_classify", "seed": 0, "model": {"config": VIT}, "data": {"source": "digits", "image_size": 48}}
    dataset, _ = vit_classify.build_dataset(recipe, None, vit_classify.build_model(recipe, None))
    rows = digits_samples("train", seed=0, image_size=48)
    assert len(dataset) == len(rows)
    for i in (0, 1, len(rows) - 1):
        px, label = dataset[i]
        assert label == rows[i]["label"] and torch.equal(px, preprocess([rows[i]["images"][0]], image_config(48))[0])


def test_vit_single_label_images_hold_one_object_of_a_class_the_head_has(tmp_path):
    """labels: single draws one object per image, whatever max_objects says, and its class is within the head
    (shapes x colours); classifier_head.json records that head's number of classes."""
    from ocellus.data.image import image_config, preprocess
    from ocellus.data.shapes import make_scene
    from ocellus.train.recipe_data import shapes_config
    from ocellus.train.tasks import vit_classify
    data = {"source": "shapes", "n": 6, "seed": 3, "image_size": 48, "labels": "single", "max_objects": 3}
    recipe = {"task": "vit_classify", "seed": 0, "model": {"config": VIT}, "data": data}
    model = vit_classify.build_model(recipe, None)
    cfg = shapes_config(data)
    assert model.classifier.out_features == len(cfg.shapes) * len(cfg.colours)
    dataset, _ = vit_classify.build_dataset(recipe, None, model)
    one = shapes_config({**data, "max_objects": 1})
    for i in range(len(dataset)):
        px, label = dataset[i]
        scene = make_scene(np.random.default_rng([cfg.seed, i]), one)
        assert torch.equal(px, preprocess([render(scene)], image_config(48))[0])
        assert 0 <= label < model.classifier.out_features
    path = vit_classify.export(recipe, model, None, tmp_path / "model")
    assert json.loads((path / "classifier_head.json").read_text()) == {"num_classes": model.classifier.out_features}


# ---- train/shard_loader.py -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from ocellus.data.shards import shard_paths
    root = tmp_path_factory.mktemp("wiring_shards")
    write_shards(root)
    return root, shard_paths(str(root))


def test_a_started_loader_restored_to_a_position_continues_from_it(shards):
    """load_state_dict on a loader already streaming: its next batch is the restored position's, not its own."""
    from ocellus.train.shard_loader import ShardLoader
    _, paths = shards
    make = lambda: ShardLoader(paths, 3, key_of, list, seed=5, buffer=4)   # noqa: E731
    whole = make()
    uninterrupted = [whole.next_raw() for _ in range(5)]
    at2 = make()
    [at2.next_raw() for _ in range(2)]
    busy = make()
    [busy.next_raw() for _ in range(4)]
    busy.load_state_dict(json.loads(json.dumps(at2.state_dict())))
    assert [busy.next_raw() for _ in range(3)] == uninterrupted[2:]


def test_shard_loader_reads_the_ranks_own_shards_through_the_recipes_buffer(shards):
    from ocellus.train.distributed import DistInfo
    from ocellus.train.shard_loader import shard_loader
    root, paths = shards
    task = types.SimpleNamespace(shard_data=lambda recipe, tok, model: (key_of, list))
    recipe = {"name": "t", "seed": 0, "data": {"urls": str(root), "shuffle_buffer": 4}}
    loader = shard_loader(recipe, task, None, None, 3, DistInfo(rank=1, world_size=2))
    assert loader.my_shards() == paths[1::2]
    keys = [k for _ in range(4) for k in loader.next_raw()]
    assert {k.split("-")[0] for k in keys} == {"s1", "s3"}
    assert loader.state_dict()["shuffle_buffer"] == 4
    plain = shard_loader({**recipe, "data": {"urls": str(root)}}, task, None, None, 3, DistInfo(rank=1, world_size=2))
    assert keys != [k for _ in range(4) for k in plain.next_raw()]     # the buffer of 4 reorders the samples


def test_shard_loader_total_counts_the_skipped_samples(tmp_path):
    import tarfile
    from ocellus.data.shards import ImageText, shard_paths
    from ocellus.train.recipe_data import image_config
    from ocellus.train.shard_loader import ShardLoader
    from test_shards import _member
    write_shards(tmp_path, shards=1, per_shard=4)
    with tarfile.open(tmp_path / "shard-000.tar", "a") as tar:
        _member(tar, "broken.png", b"not a png")
        _member(tar, "broken.txt", b"a red circle")
    loader = ShardLoader(shard_paths(str(tmp_path)), 5, ImageText(image_config(16)), list, skip_bad=True)
    assert len(loader.next_raw()) == 4
    assert loader.report.total == 5 and len(loader.report.skipped) == 1


# ---- data/hf_dataset.py --------------------------------------------------------------------------------

def test_hf_rows_come_from_the_named_split_and_are_counted():
    datasets = pytest.importorskip("datasets")
    from ocellus.data.bad_samples import BadSampleReport
    from ocellus.data.hf_dataset import given, read_rows
    rows = lambda ids: datasets.Dataset.from_dict({"id": ids, "prompt": [f"q {i}" for i in ids]})   # noqa: E731
    report = BadSampleReport("given")
    with given(datasets.DatasetDict({"train": rows(["a", "b", "c"]), "test": rows(["x", "y"])})):
        got = read_rows({"source": "hf", "split": "test"}, ("prompt",), "grpo", report=report)
    assert [r["id"] for r in got] == ["x", "y"] and report.total == 2


def test_vlm_collate_concatenates_every_rows_images():
    """The VLM batch holds the images of every row, in row order (not only the first row's)."""
    from ocellus.train.tasks.vlm import vlm_collate
    tok = types.SimpleNamespace(pad_token_id=0)
    rows = [{"enc": {"input_ids": [5, 6], "labels": [-100, 6]},
             "images": {"pixel_values": torch.full((1, 3, 4, 4), float(r))}} for r in range(3)]
    batch = vlm_collate({}, None, tok)(rows)
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]

