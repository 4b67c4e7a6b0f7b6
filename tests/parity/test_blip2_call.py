"""BLIP-2's processor called as transformers users call it: `processor(images=image, text="Question: ... Answer:")`,
no placeholder in the text. transformers' Blip2Processor puts the num_query_tokens image tokens in front of each
encoded text (before BOS, outside its padding); ocellus.load_processor on the directory transformers'
save_pretrained wrote gives the same input_ids / attention_mask / pixel_values, and the model the same logits and
generated ids. A text that holds placeholders (transformers would add the query tokens in front too, ids its
model refuses) and a processor_config.json whose query count differs from the model's are typed errors."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

import ocellus  # noqa: E402
from ocellus.errors import ConfigError, InputError  # noqa: E402
from _init import spread_init  # noqa: E402

QUERIES = 4
CORPUS = ["Question: what is this? Answer: a red circle on a grey table.",
          "Describe the picture in one short sentence."] * 20
PROMPTS = ["Question: what is this? Answer:", "Describe it."]


def _checkpoint(tmp_path, queries=QUERIES):
    """A tiny random Blip2ForConditionalGeneration (Llama LM) + the Blip2Processor that adds "<image>", both saved
    by transformers into tmp_path; returns (processor, model)."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=280, special_tokens=["<pad>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])  # BOS, as OPT's
    raw.save(str(tmp_path / "raw_tokenizer.json"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "raw_tokenizer.json"), bos_token="<s>",
                                               eos_token="</s>", pad_token="<pad>")
    images = transformers.BlipImageProcessorPil(size={"height": 32, "width": 32})
    proc = transformers.Blip2Processor(image_processor=images, tokenizer=tok, num_query_tokens=queries)
    image_id = tok.convert_tokens_to_ids("<image>")
    vision = dict(hidden_size=40, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    qformer = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   cross_attention_frequency=1, vocab_size=60, max_position_embeddings=32)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                bos_token_id=1, eos_token_id=None)
    cfg = transformers.Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                                   num_query_tokens=QUERIES, image_token_index=image_id)
    torch.manual_seed(0)
    model = spread_init(transformers.Blip2ForConditionalGeneration(cfg).eval())
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    return proc, model


def _images(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(n)]


@pytest.mark.parametrize("side", ["left", "right"])
def test_text_without_placeholder_gives_transformers_inputs(tmp_path, side):
    ref, _ = _checkpoint(tmp_path)
    ours = ocellus.load_processor(tmp_path)
    images = _images(2)
    for text, imgs in ((PROMPTS[0], images[0]), (PROMPTS, images), ([PROMPTS[1]], [images[1]])):
        a = ref(images=imgs, text=text, return_tensors="pt", padding=True, padding_side=side)
        b = ours(text=text, images=imgs, padding_side=side)
        assert torch.equal(b["input_ids"], a["input_ids"]), text
        assert torch.equal(b["attention_mask"], a["attention_mask"]), text
        torch.testing.assert_close(b["pixel_values"], a["pixel_values"], atol=1e-5, rtol=1e-5)
    # images as per-sample lists, lists out (return_tensors=None)
    a = ref(images=images, text=PROMPTS, padding=True, padding_side=side)
    b = ours(text=PROMPTS, images=[[images[0]], [images[1]]], return_tensors=None, padding_side=side)
    assert (b["input_ids"], b["attention_mask"]) == (a["input_ids"], a["attention_mask"])


def test_logits_and_generate_equal_transformers(tmp_path):
    ref, model = _checkpoint(tmp_path)
    ours = ocellus.load(tmp_path)
    ours_proc = ocellus.load_processor(tmp_path)
    images = _images(2)
    a = ref(images=images, text=PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    b = ours_proc(text=PROMPTS, images=images)
    mask = b["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)   # pads sit between the image tokens and the text
    with torch.no_grad():
        want = model(**a, position_ids=pos).logits
        got = ours(**b, position_ids=pos).logits
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-5, rtol=1e-5)
    # the batch as the processor gives it (pads between image tokens and text), and one prompt alone
    expected = model.generate(**a, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours.generate(**b, max_new_tokens=8), expected)
    one = ref(images=images[0], text=PROMPTS[0], return_tensors="pt")
    expected = model.generate(**one, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours.generate(**ours_proc(text=PROMPTS[0], images=images[0]), max_new_tokens=8), expected)
    # a hole after text tokens is no processor's layout: still the engine's left-padding error
    holed = b["attention_mask"].clone()
    holed[0, QUERIES + 2] = 0
    with pytest.raises(InputError, match="left padding"):
        ours.generate(b["input_ids"], attention_mask=holed, pixel_values=b["pixel_values"], max_new_tokens=2)


def test_placeholders_or_image_count_mismatch_are_input_errors(tmp_path):
    _checkpoint(tmp_path)
    proc = ocellus.load_processor(tmp_path)
    images = _images(2)
    # transformers: the query tokens in front AND the placeholder kept -> 5 image tokens for 4 queries, refused
    with pytest.raises(InputError, match="sample 1: the text holds 1 '<image>'"):
        proc(text=[PROMPTS[0], "<image>" + PROMPTS[1]], images=images)
    with pytest.raises(InputError, match="one image per text"):
        proc(text=PROMPTS, images=images[:1])
    with pytest.raises(InputError, match="one image per text"):
        proc(text=PROMPTS[0], images=images)
    text_only = proc(text=PROMPTS[0])   # no images: the text alone, as transformers
    assert proc.image_token_id not in text_only["input_ids"][0].tolist()


def test_processor_config_query_count_differs_from_model(tmp_path):
    _checkpoint(tmp_path)
    path = tmp_path / "processor_config.json"
    settings = json.loads(path.read_text())
    assert settings["num_query_tokens"] == QUERIES   # where transformers 5 writes the processor's count
    path.write_text(json.dumps({**settings, "num_query_tokens": QUERIES + 2}))
    with pytest.raises(ConfigError, match="num_query_tokens is 6, but config.json's is 4"):
        ocellus.load_processor(tmp_path)


# ---- Qwen2-VL / Qwen2.5-VL: a config.json without its placeholder ids takes transformers' defaults ----------------
QWEN_IDS = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
            "vision_end_token_id": 151653}   # transformers' Qwen2VLConfig / Qwen2_5_VLConfig defaults


def _without_token_ids(tmp_path, variant):
    """A tiny Qwen2(.5)-VL (vocab reaching Qwen's ids) saved by transformers, its config.json stripped of the
    placeholder ids; returns transformers' model reopened from that config (its defaults) and ours."""
    from test_qwen2_vl_parity import _reference
    _reference(variant, vocab=151680).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key in QWEN_IDS:
        cfg.pop(key, None)
        (cfg.get("text_config") or {}).pop(key, None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ref = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert {k: getattr(ref.config, k) for k in QWEN_IDS} == QWEN_IDS
    return ref, ocellus.load(tmp_path)


@pytest.mark.parametrize("variant", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen2_vl_config_without_token_ids_takes_transformers_defaults(tmp_path, variant):
    from test_qwen2_vl_parity import _patches
    ref, ours = _without_token_ids(tmp_path, variant)
    assert (ours.tokens.image, ours.tokens.video, ours.tokens.vision_start, ours.tokens.vision_end) == (
        151655, 151656, 151652, 151653)
    start, image, video, end = 151652, 151655, 151656, 151653
    # (one temporal patch: Qwen2.5-VL text after a longer video is placed apart from transformers', another issue)
    grids, video_grids = torch.tensor([[1, 4, 6]]), torch.tensor([[1, 4, 4]])
    ids = torch.tensor([[5, start] + [image] * 6 + [end, 7, start] + [video] * 4 + [end, 8, 9]])
    types = (ids == image).long() + 2 * (ids == video).long()
    inputs = dict(input_ids=ids, pixel_values=_patches(grids), image_grid_thw=grids,
                  pixel_values_videos=_patches(video_grids, seed=1), video_grid_thw=video_grids)
    with torch.no_grad():
        want = ref(**inputs, mm_token_type_ids=types).logits
        got = ours(**inputs).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def _qwen_tokenizer(directory):
    """A word-level tokenizer holding Qwen's vision tokens at Qwen's ids (the ids transformers' config defaults to)."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import models, pre_tokenizers
    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    vocab = {"<unk>": 0, "<pad>": 1, **{w: i + 2 for i, w in enumerate("what is this picture ?".split())},
             **dict(zip(specials, (151652, 151653, 151655, 151656)))}
    raw = RawTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.add_special_tokens(specials)
    raw.save(str(directory / "raw_tokenizer.json"))
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "raw_tokenizer.json"),
                                                pad_token="<pad>", unk_token="<unk>")


def test_qwen2_vl_processor_of_a_config_without_token_ids(tmp_path):
    """The processor reads the same defaults: transformers' Qwen2VLProcessor's ids and pixels; a tokenizer without
    the default video id gives a processor without videos (refused when given), not a failed load."""
    _without_token_ids(tmp_path, "qwen2_vl")
    images = transformers.Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 112)
    images.save_pretrained(tmp_path)
    tok = _qwen_tokenizer(tmp_path)
    tok.save_pretrained(tmp_path)
    check = transformers.Qwen2VLProcessor.check_argument_for_proper_class   # its video processor needs torchvision
    transformers.Qwen2VLProcessor.check_argument_for_proper_class = lambda self, name, arg: None
    try:
        ref = transformers.Qwen2VLProcessor(image_processor=images, tokenizer=tok)
    finally:
        transformers.Qwen2VLProcessor.check_argument_for_proper_class = check
    ours = ocellus.load_processor(tmp_path)
    text = "what <|vision_start|><|image_pad|><|vision_end|> is this picture ?"
    image = _images(1)[0]
    want = ref(images=[image], text=[text], return_tensors="pt")
    got = ours(text=text, images=[image])
    assert got["input_ids"].tolist() == want["input_ids"].tolist()
    assert torch.equal(got["image_grid_thw"], want["image_grid_thw"])
    torch.testing.assert_close(got["pixel_values"], want["pixel_values"], atol=1e-6, rtol=0)
    assert ours.video_token == "<|video_pad|>"
    # the same files with a tokenizer lacking <|video_pad|>: images only
    vocab = json.loads((tmp_path / "tokenizer.json").read_text())
    vocab["model"]["vocab"].pop("<|video_pad|>")
    vocab["added_tokens"] = [t for t in vocab["added_tokens"] if t["content"] != "<|video_pad|>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(vocab))
    assert ocellus.load_processor(tmp_path).video_token is None


def test_images_alone_caption_as_transformers(tmp_path):
    """`processor(images=image)` then generate (transformers' captioning example): pixel_values alone, and the
    model's generate starts each row at the image's query tokens + BOS, the ids transformers generates."""
    ref, model = _checkpoint(tmp_path)
    ours, proc = ocellus.load(tmp_path), ocellus.load_processor(tmp_path)
    images = _images(2)
    for given in (images[0], images):
        a, b = ref(images=given, return_tensors="pt"), proc(images=given)
        assert set(b) == {"pixel_values"}
        torch.testing.assert_close(b["pixel_values"], a["pixel_values"], atol=1e-5, rtol=1e-5)
        expected = model.generate(**a, max_new_tokens=6, do_sample=False)
        assert torch.equal(ours.generate(**b, max_new_tokens=6), expected)
    with pytest.raises(InputError, match="images is empty"):
        proc(images=[])
