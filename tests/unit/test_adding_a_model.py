"""docs/ADDING_A_MODEL.md, followed literally: every python block of the page that names a file is written into
a folder, the page's registry line is run, and the family it describes composes a recipe's model, saves, reopens
with the same logits and files, and serves its processor, all through the public API (ocellus.load / save /
load_processor); the page's recipe trains a step through the tasks table (what `ocellus train` runs), and the
family joins ocellus/compare.py's table as the page says. A page that drifts from the code fails here."""
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import ocellus
from ocellus.data.bpe import train_bpe
from ocellus.data.image import ImageProcessorConfig
from ocellus.errors import ConfigError
from ocellus.hub import families
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.models.vision.vit import ViTConfig, VisionTransformer

PAGE = Path(__file__).resolve().parents[2] / "docs" / "ADDING_A_MODEL.md"
FILES = {"pooled_llava/__init__.py", "pooled_llava/modeling.py", "pooled_llava/checkpoint.py",
         "pooled_llava/processor.py"}
DECODER_FILES = {"ministral/__init__.py", "ministral/checkpoint.py"}      # "A decoder-only family"
IMAGE_CONFIG = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"height": 16, "width": 16},
                "do_center_crop": False, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}


def page_recipe() -> str:
    """The page's one YAML block: step 7's recipe."""
    (block,) = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.S)
    return block


def page_blocks() -> dict[str, str]:
    """The page's python blocks by what their first line names ("# pooled_llava/modeling.py", "# registry line")."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    return {b.splitlines()[0].removeprefix("#").strip(): b for b in blocks}


@pytest.fixture
def family_from_the_page(tmp_path, monkeypatch):
    blocks = page_blocks()
    assert set(blocks) == FILES | DECODER_FILES | {"registry line", "decoder registry line"}, sorted(blocks)
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(blocks[name])
    monkeypatch.syspath_prepend(str(tmp_path))
    exec(blocks["registry line"], {})
    yield blocks
    if "pooled_llava" in families.FAMILIES:
        families.unregister("pooled_llava")
    for name in [m for m in sys.modules if m == "pooled_llava" or m.startswith("pooled_llava.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tokenizer with <image>, a CLIP tower (16 px, 4 px patches: a 4x4 grid) and a tied decoder, saved as a
    recipe's vision_from / llm_from."""
    root = tmp_path_factory.mktemp("parts")
    tok = train_bpe(["a red circle", "a blue square", "what colour is it?"] * 20, 300)
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig.from_hf({"model_type": "clip_vision_model", "hidden_size": 32,
                                                "intermediate_size": 64, "num_hidden_layers": 1,
                                                "num_attention_heads": 2, "image_size": 16, "patch_size": 4}))
    llm = DecoderLM(DecoderConfig.from_hf({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                           "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                                           "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                                           "tie_word_embeddings": True}))
    ocellus.save(vit, root / "vit")
    ocellus.save(llm, root / "llm", tokenizer=tok)
    return tok, root


def _batch(proc):
    image = Image.new("RGB", (20, 16), (200, 30, 30))
    return proc(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]}],
                images=[image])


def _files(path: Path) -> tuple[dict, dict]:
    return json.loads((path / "config.json").read_text()), load_file(str(path / "model.safetensors"))


def test_the_page_family_composes_saves_reopens_and_serves_its_processor(family_from_the_page, parts, tmp_path):
    tok, root = parts
    pieces = families.family_module("pooled_llava")
    model = pieces.compose({"architecture": "pooled_llava", "vision_from": str(root / "vit"),
                            "llm_from": str(root / "llm")}, tok)
    image_config = ImageProcessorConfig.from_dict(IMAGE_CONFIG)
    proc = pieces.training_processor(model, tok, image_config)
    batch = _batch(proc)
    assert (batch["input_ids"] == model.image_token_id).sum() == 4            # (4 / 2)^2: a 2x2 pool of a 4x4 grid
    with torch.no_grad():
        logits = model(**batch).logits

    out = tmp_path / "export"
    ocellus.save(model, out, processor=proc)
    pieces.export_processor(model, tok, image_config, out)
    cfg, tensors = _files(out)
    assert cfg["architectures"] == ["OcellusPooledLlavaForConditionalGeneration"]
    assert cfg["model_type"] == "ocellus_pooled_llava"
    assert {k.split(".")[0] for k in tensors} == {"vision", "connector", "language"}          # the page's key table
    assert "language.lm_head.weight" not in tensors                                           # tied: written once

    again = ocellus.load(out)
    assert again.family_name == "pooled_llava"
    served = ocellus.load_processor(out)
    reread = _batch(served)
    assert torch.equal(reread["input_ids"], batch["input_ids"])
    assert torch.equal(reread["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(again(**reread).logits, logits)

    ocellus.save(again, tmp_path / "again")
    cfg2, tensors2 = _files(tmp_path / "again")
    assert {k: v for k, v in cfg2.items() if k != "dtype"} == {k: v for k, v in cfg.items() if k != "dtype"}
    assert tensors2.keys() == tensors.keys() and all(torch.equal(tensors[k], tensors2[k]) for k in tensors)

    families.unregister("pooled_llava")                  # the registry line is what made the directory loadable
    with pytest.raises(ConfigError, match="unknown model_type 'ocellus_pooled_llava'"):
        ocellus.load(out)


def test_the_page_connector_is_a_2x2_mean_then_its_mlp(family_from_the_page):
    from pooled_llava.modeling import PooledProjector
    torch.manual_seed(0)
    proj = PooledProjector(6, 8)
    x = torch.randn(2, 16, 6)                                          # a 4x4 grid, row-major
    grid = x.reshape(2, 4, 4, 6)
    mean = torch.stack([grid[:, r:r + 2, c:c + 2].mean((1, 2)) for r in (0, 2) for c in (0, 2)], 1)   # [2, 4, 6]
    expected = proj.linear_2(torch.nn.functional.gelu(proj.linear_1(mean)))
    torch.testing.assert_close(proj(x), expected)


def test_the_page_registry_line_refuses_a_second_registration(family_from_the_page):
    with pytest.raises(ConfigError, match="family 'pooled_llava' is registered already"):
        exec(family_from_the_page["registry line"], {})


def test_the_page_recipe_trains_a_step_through_the_tasks_table(family_from_the_page, parts, tmp_path):
    """Step 7: the page's recipe, as written (its 48 px shapes), with the test's parts (a 48 px tower, 12 px patches:
    the same 4x4 grid) and a one-step budget, goes through what `ocellus train` runs (train/tasks: load_recipe ->
    check_sources -> run_recipe). Its stage holds: the frozen ViT leaves unchanged, the decoder (full) moves, and
    the export reopens as the page's family."""
    from ocellus.train import tasks
    tok, root = parts
    torch.manual_seed(1)
    ocellus.save(VisionTransformer(ViTConfig.from_hf({"model_type": "clip_vision_model", "hidden_size": 32,
                                                      "intermediate_size": 64, "num_hidden_layers": 1,
                                                      "num_attention_heads": 2, "image_size": 48, "patch_size": 12})),
                 tmp_path / "vit48")
    path = tmp_path / "pooled_llava.yaml"
    path.write_text(page_recipe())
    recipe = tasks.load_recipe(path, [f"model.vision_from={tmp_path / 'vit48'}", f"model.llm_from={root / 'llm'}",
                                      "data.n=8", "train.max_steps=1", "train.batch_size=4", "train.warmup_steps=0",
                                      f"train.out_dir={tmp_path / 'run'}", "train.progress=false"])
    assert recipe["model"]["architecture"] == "pooled_llava" and recipe["train"]["stage"]["vision"] == "frozen"
    tasks.check_sources(recipe, str(path))
    out = Path(tasks.run_recipe(recipe))

    trained, vit, llm = ocellus.load(out), ocellus.load(tmp_path / "vit48"), ocellus.load(root / "llm")
    assert trained.family_name == "pooled_llava"
    assert all(torch.equal(a, b) for a, b in zip(trained.vision_tower.state_dict().values(), vit.state_dict().values()))
    moved = [not torch.equal(a, b) for a, b in zip(trained.language_model.state_dict().values(),
                                                    llm.state_dict().values())]
    assert any(moved)
    batch = _batch(ocellus.load_processor(out))
    assert (batch["input_ids"] == trained.image_token_id).sum() == 4                  # the family's own count


def test_the_page_family_joins_the_comparison(family_from_the_page, parts, tmp_path, monkeypatch):
    """The page's last step: an entry of ocellus/compare.py's FAMILY_SPECS (and its route) makes the family one
    more row of the comparison, its recipe valid for the tasks table."""
    from ocellus import compare
    from ocellus.train import tasks
    _, root = parts
    monkeypatch.setitem(compare.FAMILY_SPECS, "pooled_llava", {})
    monkeypatch.setitem(compare.ROUTES, "pooled_llava", "all tokens, pooled")
    recipe = compare.recipe_for("pooled_llava", tmp_path, tmp_path / "runs", steps=1, batch_size=2)
    assert recipe["model"]["architecture"] == "pooled_llava"
    tasks.validate(recipe, where="compare pooled_llava")


# ---- "A decoder-only family": a folder with checkpoint.py and one registry line --------------------------------

@pytest.fixture
def decoder_from_the_page(tmp_path, monkeypatch):
    blocks = page_blocks()
    for name in DECODER_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(blocks[name])
    monkeypatch.syspath_prepend(str(tmp_path))
    yield blocks["decoder registry line"]
    if "ministral" in families.FAMILIES:
        families.unregister("ministral")
    for name in [m for m in sys.modules if m == "ministral" or m.startswith("ministral.")]:
        del sys.modules[name]


MINISTRAL = {"architectures": ["MinistralForCausalLM"], "model_type": "ministral", "vocab_size": 64,
             "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "sliding_window": None, "tie_word_embeddings": False}


def test_the_page_decoder_family_loads_saves_and_reopens(decoder_from_the_page, tmp_path):
    torch.manual_seed(0)
    model = DecoderLM(DecoderConfig.from_hf(MINISTRAL)).eval()
    ocellus.save(model, tmp_path / "ministral")
    cfg, tensors = _files(tmp_path / "ministral")
    assert cfg["architectures"] == ["MinistralForCausalLM"] and cfg["model_type"] == "ministral"
    with pytest.raises(ConfigError, match="unknown model_type 'ministral'"):      # not loadable before the line
        ocellus.load(tmp_path / "ministral")

    exec(decoder_from_the_page, {})
    back = ocellus.load(tmp_path / "ministral")
    assert back.family_name == "ministral" and type(back) is DecoderLM
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, rtol=0, atol=0)
    ocellus.save(back, tmp_path / "again")
    cfg2, tensors2 = _files(tmp_path / "again")
    assert {k: v for k, v in cfg2.items() if k != "dtype"} == {k: v for k, v in cfg.items() if k != "dtype"}
    assert tensors2.keys() == tensors.keys() and all(torch.equal(tensors[k], tensors2[k]) for k in tensors)
    assert "model.layers.1.self_attn.q_proj.weight" in tensors                  # Llama's names (DECODER_KEYS)

    with pytest.raises(ConfigError, match="sliding_window=4096"):
        families.family_for_config({**MINISTRAL, "sliding_window": 4096}).build({**MINISTRAL, "sliding_window": 4096})
