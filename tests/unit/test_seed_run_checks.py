"""The SEED-tokenizer runner's checks and numbers, with stand-ins for the trained parts: a recipe that trains its
own tokenizer must give vit / qformer / num_codes / code_dim (only codec_from spares them); the ViT is refused when
its image_size is not the data's; the code perplexity is exp(entropy) of the TRAINING codes' frequencies; the
codec's both-accuracy counts an image only when shape AND colour are right."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch

import ocellus.train.seed_tokenizer_run as seed_run
from ocellus.errors import ConfigError

VISION = dict(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2)


@pytest.mark.parametrize("key", ["vit", "qformer", "num_codes", "code_dim"])
def test_a_recipe_training_its_tokenizer_needs_the_tokenizer_keys(key):
    recipe = seed_run.load_seed_recipe("recipes/unified/seed_shapes.yaml")
    bad = copy.deepcopy(recipe)
    del bad["model"][key]
    with pytest.raises(ConfigError, match=f"model.{key} is required"):
        seed_run.check_seed_recipe(bad, "r")
    bad["model"]["codec_from"] = "runs/codec"                  # a trained codec: the tokenizer keys are not read
    seed_run.check_seed_recipe(bad, "r")


def test_vit_image_size_must_be_the_datas(tmp_path):
    x = torch.zeros(4, 3, 8, 8)
    with pytest.raises(ConfigError, match="model.vit.image_size 16 differs from data.image_size 8"):
        seed_run.pretrain_vit(VISION, x, torch.zeros(4, dtype=torch.long), 2, {"max_steps": 1, "batch_size": 2},
                              tmp_path, 0)


class _Tok:
    """codes = the first two pixels of each image's first row (channel 0); embeddings = the codes twice."""
    num_codes, Q = 4, 2
    vision = staticmethod(lambda x: SimpleNamespace(pooler_output=x[:, 0].flatten(1)))

    def eval(self):
        return self

    def encode(self, x):
        return x[:, 0, 0, :2].long()

    def decode_embedding(self, codes):
        return torch.cat([codes.float(), codes.float()], 1)

    def last_query_logits(self, x, table):
        return torch.zeros(len(x), len(table))


def test_code_perplexity_is_of_the_training_codes():
    x_train = torch.zeros(6, 3, 2, 2)
    x_train[:, 0, 0, :2] = torch.tensor([[0, 1], [0, 1], [0, 2], [0, 1], [0, 3], [0, 1]], dtype=torch.float32)
    x_test = torch.full((4, 3, 2, 2), 3.0)                        # the test images use code 3 only
    labels_train, labels_test = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 1, 0, 1])
    res = seed_run.measure_tokenizer(_Tok(), x_train, x_test, x_test[:, 0].flatten(1), labels_train, labels_test,
                                     torch.zeros(2, 3), probe_iter=2)
    counts = [6, 4, 1, 1]                                         # codes 0..3 over the 12 training codes
    p = [c / 12 for c in counts]
    assert res["code_perplexity_train"] == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)), rel=1e-5)
    assert (res["codes_used_train"], res["codes_used_test"]) == (4, 1)


def test_codec_both_accuracy_needs_shape_and_colour(monkeypatch):
    shapes, colours_idx = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 1])
    said_shape, said_colour = torch.tensor([0, 1, 0, 0]), torch.tensor([0, 1, 1, 0])   # right: TT FF / TF TF
    monkeypatch.setattr(seed_run, "dominant_colour", lambda images, colours: said_colour)
    judge = lambda images: torch.nn.functional.one_hot(said_shape, 5).float()
    codec = SimpleNamespace(encode=lambda x: x, decode=lambda c, guidance_scale, seed, **gen: c)
    x = torch.zeros(4, 3, 4, 4)
    res, _ = seed_run.measure_codec(codec, x, shapes, colours_idx, ["red", "blue"], judge, [1.0], {}, 0)
    got = res["guidance_1"]
    assert (got["shape_acc"], got["colour_acc"], got["both_acc"]) == (0.5, 0.5, 0.25)
