"""Processor parity: ocellus.load_processor(dir) on structured messages + images gives the same
input_ids, attention_mask and pixel_values as transformers' AutoProcessor on
apply_chat_template(..., tokenize=False) + the same images, and ocellus.load(dir) on our batch gives
the logits transformers' LlavaForConditionalGeneration gives on theirs.

The checkpoint is made here: a byte-level BPE tokenizer trained with `tokenizers` (an "<image>" special
token whose id is the model's image_token_index), a chat template that renders image parts, an image
processor (CLIP / LLaVA pad-to-square / SigLIP / LLaVA-NeXT anyres), all saved by transformers'
LlavaProcessor (LlavaNextProcessor).save_pretrained (which in 5.x writes the image processor into
processor_config.json), and a tiny random LLaVA (LLaVA-NeXT).
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

import ocellus  # noqa: E402
from ocellus.data.processor import Processor  # noqa: E402
from ocellus.data.tokenizer import Tokenizer  # noqa: E402
from ocellus.errors import ConfigError, InputError  # noqa: E402
from _init import spread_init  # noqa: E402

SPECIALS = ["<pad>", "<s>", "</s>", "<image>"]
CORPUS = ["What is in the picture? Describe the image in one sentence.",
          "A red circle sits left of a blue square on a grey table.",
          "Compare the two images. Which one is brighter?"] * 20
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'].upper() + ': ' }}"
            "{% for p in m['content'] %}{% if p['type'] == 'image' %}{{ '<image>\n' }}{% else %}{{ p['text'] }}"
            "{% endif %}{% endfor %}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

CASES = {  # name: (vision tower, feature strategy, extra tokens (CLS), image processor)
    "clip-default": ("clip", "default", 1, "clip"),
    "clip-full-pad": ("clip", "full", 1, "llava-pad"),
    "siglip-full": ("siglip", "full", 0, "siglip"),
    "next-clip-default": ("clip", "default", 1, "anyres"),  # LLaVA-NeXT: per-image token counts, image_sizes
}
PINPOINTS = [[32, 64], [64, 32], [64, 64]]


def _tokenizer(tmp_path):
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    raw.save(str(tmp_path / "raw_tokenizer.json"))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "raw_tokenizer.json"), bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"})


def _image_processor(kind):
    if kind == "clip":
        return transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    if kind == "llava-pad":
        return transformers.LlavaImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                   do_pad=True)
    if kind == "anyres":
        return transformers.LlavaNextImageProcessorPil(size={"shortest_edge": 32}, image_grid_pinpoints=PINPOINTS,
                                                       crop_size={"height": 32, "width": 32})
    return transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32})


def _checkpoint(tmp_path, case):
    vision, select, extra, image_kind = CASES[case]
    tok = _tokenizer(tmp_path)
    image_token = tok.convert_tokens_to_ids("<image>")
    anyres = image_kind == "anyres"
    proc_cls = transformers.LlavaNextProcessor if anyres else transformers.LlavaProcessor
    proc = proc_cls(image_processor=_image_processor(image_kind), tokenizer=tok, patch_size=8,
                    vision_feature_select_strategy=select, chat_template=TEMPLATE, num_additional_image_tokens=extra)
    vc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)
    vision_cfg = transformers.CLIPVisionConfig(**vc) if vision == "clip" else transformers.SiglipVisionConfig(**vc)
    text_cfg = dict(model_type="llama", vocab_size=320, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                    pad_token_id=tok.pad_token_id, eos_token_id=None)
    common = dict(vision_config=vision_cfg, text_config=text_cfg, image_token_index=image_token,
                  vision_feature_layer=-1, vision_feature_select_strategy=select)
    torch.manual_seed(0)
    if anyres:
        cfg = transformers.LlavaNextConfig(**common, image_grid_pinpoints=PINPOINTS)
        model = spread_init(transformers.LlavaNextForConditionalGeneration(cfg).eval())   # _init.py
    else:
        model = spread_init(transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(**common)).eval())
    directory = tmp_path / "ckpt"
    model.save_pretrained(directory)
    proc.save_pretrained(directory)
    return directory, model


def _images():
    rng = np.random.default_rng(0)  # different sizes and aspect ratios: resize, crop and padding all matter
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 52), (61, 33), (32, 32)]]


def _messages():
    return [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "Compare the two images."}, {"type": "image"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which one is brighter?"}]}],
    ]


@pytest.mark.parametrize("case", list(CASES))
def test_processor_and_logits_equal_transformers(case, tmp_path):
    directory, ref_model = _checkpoint(tmp_path, case)
    ref_proc = transformers.AutoProcessor.from_pretrained(directory)
    ours = ocellus.load_processor(directory)
    assert isinstance(ours, Processor)
    images, convs = _images(), _messages()

    texts = [ref_proc.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs]
    assert [ours.apply_chat_template(c, add_generation_prompt=True) for c in convs] == texts
    theirs = ref_proc(text=texts, images=[images[:1], images[1:]], return_tensors="pt", padding=True,
                      padding_side="left")
    batch = ours(messages=convs, images=images, return_tensors="pt", add_generation_prompt=True, padding_side="left")
    anyres = CASES[case][3] == "anyres"
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"} | ({"image_sizes"} if anyres else set())
    assert torch.equal(batch["input_ids"], theirs["input_ids"])
    assert torch.equal(batch["attention_mask"], theirs["attention_mask"])
    torch.testing.assert_close(batch["pixel_values"], theirs["pixel_values"], rtol=0, atol=1e-6)
    if anyres:  # each image's count depends on its own size
        assert torch.equal(batch["image_sizes"], theirs["image_sizes"].to(torch.int64))
        expected = sum(ours.num_image_tokens(im.height, im.width) for im in images)
    else:
        expected = 3 * ours.num_image_tokens(32, 32)
    assert (batch["input_ids"] == ours.image_token_id).sum() == expected

    model = ocellus.load(directory)
    mask = batch["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # transformers' forward does not derive positions from the mask
    with torch.no_grad():
        a = ref_model(**theirs, position_ids=pos).logits
        b = model(**batch, position_ids=pos).logits
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("clip"), "clip-default")[0]


def test_single_conversation_attached_images_and_right_padding(clip_dir):
    proc = ocellus.load_processor(clip_dir)
    img = _images()[0]
    conv = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "What?"}]}]
    attached = proc(messages=conv)
    given = proc(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
                 images=img)
    assert torch.equal(attached["input_ids"], given["input_ids"])
    assert torch.equal(attached["pixel_values"], given["pixel_values"])
    both = proc(messages=[conv, [{"role": "user", "content": "Hi"}]], padding_side="right")
    assert both["attention_mask"][1, -1] == 0 and both["attention_mask"][0].all()
    as_lists = proc(messages=[{"role": "user", "content": "Hi"}], return_tensors=None)
    assert isinstance(as_lists["input_ids"][0], list) and "pixel_values" not in as_lists


def test_placeholder_image_mismatch_names_the_sample(clip_dir):
    proc = ocellus.load_processor(clip_dir)
    images = _images()
    with pytest.raises(InputError, match="sample 1"):
        proc(messages=_messages(), images=images[:2])  # sample 1 has two placeholders, one image left
    with pytest.raises(InputError, match="sample 0: 1 image placeholders but 2"):
        proc(messages=_messages(), images=[images[:2], images[2:]])
    with pytest.raises(InputError, match="4 images given"):
        proc(messages=_messages(), images=images + images[:1])
    with pytest.raises(InputError, match="literally"):
        proc(messages=[{"role": "user", "content": "look: <image>"}], images=images[:1])
    with pytest.raises(InputError, match="sample 0, image 0"):
        proc(messages=_messages()[:1], images=[b"not an image"])


def test_config_checks(clip_dir, tmp_path):
    # processor_config.json counting image tokens differently from the model's config.json
    cfg = json.loads((clip_dir / "processor_config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in clip_dir.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    (bad / "processor_config.json").write_text(json.dumps({**cfg, "num_additional_image_tokens": 0}))
    with pytest.raises(ConfigError, match="num_extra_tokens"):
        ocellus.load_processor(bad)
    # anyres is not done yet: a clear error, not a wrong count
    (bad / "processor_config.json").write_text(json.dumps(
        {**cfg, "image_processor": {**cfg["image_processor"], "image_grid_pinpoints": [[64, 32], [32, 64]]}}))
    with pytest.raises(ConfigError, match="anyres"):
        ocellus.load_processor(bad)
    # image_token_index must be the tokenizer's image token
    (bad / "processor_config.json").write_text(json.dumps(cfg))
    model_cfg = json.loads((clip_dir / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**model_cfg, "image_token_index": 5}))
    with pytest.raises(ConfigError, match="image_token_index"):
        ocellus.load_processor(bad)
    # a text-only directory still gives its tokenizer
    text_only = tmp_path / "text"
    text_only.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (text_only / name).write_bytes((clip_dir / name).read_bytes())
    assert isinstance(ocellus.load_processor(text_only), Tokenizer)


def test_llava_next_config_without_canvases_takes_the_default_ones(tmp_path):
    """A LLaVA-NeXT config.json without image_grid_pinpoints means transformers' default canvases (the model
    builds with them): the processor takes them too, instead of calling the model single-view."""
    from ocellus.models.families.llava.modeling import DEFAULT_GRID_PINPOINTS
    directory, _ = _checkpoint(tmp_path, "next-clip-default")
    cfg = json.loads((directory / "config.json").read_text())
    del cfg["image_grid_pinpoints"]
    cfg["vision_config"]["image_size"] = 48        # a tile that divides the default (336-multiple) canvases
    (directory / "config.json").write_text(json.dumps(cfg))
    name = next(n for n in ("preprocessor_config.json", "processor_config.json") if (directory / n).is_file())
    pre = json.loads((directory / name).read_text())
    section = pre.get("image_processor", pre)
    section.update(image_grid_pinpoints=DEFAULT_GRID_PINPOINTS, size={"shortest_edge": 48},
                   crop_size={"height": 48, "width": 48})
    (directory / name).write_text(json.dumps(pre))
    proc = ocellus.load_processor(directory)
    assert [list(p) for p in proc.grid_pinpoints] == DEFAULT_GRID_PINPOINTS

