"""Multimodal requests no other test names, against transformers' processors (found by fuzzing chat messages with
images in every form users send, over several turns, on tiny checkpoints saved by transformers): one
representative fixed case per mismatch found, each red before its fix.

The checkpoint is a Qwen2-VL one as the hub ships it: a ChatML chat template that wraps each image / video
placeholder in <|vision_start|> / <|vision_end|> and accepts a part that carries its image, the image processor's
preprocessor_config.json, config.json with the placeholder ids. transformers' Qwen2VLProcessor needs torchvision
for its video processor, which cannot be installed here: its class check is skipped (images only).
"""
import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

tf = pytest.importorskip("transformers")

import ocellus  # noqa: E402
from ocellus.data.messages import from_trl  # noqa: E402
from ocellus.errors import InputError  # noqa: E402

# the shape of Qwen2-VL's chat template: a default system turn, parts that carry their image count as images
TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """(transformers' Qwen2VLProcessor, Ocellus' processor, the checkpoint dir) on the same files."""
    from ocellus.data.bpe import train_bpe
    d = tmp_path_factory.mktemp("qwen2_vl")
    tok = train_bpe(["what is in the picture? a red circle and a blue square"] * 20, 300, SPECIALS,
                    chat_template=TEMPLATE, image_token="<|image_pad|>")
    tok.save(d)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2]})
    vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=4, patch_size=14, spatial_merge_size=2)
    tf.Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                     video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                     vision_end_token_id=ids["<|vision_end|>"]).save_pretrained(d)
    image_processor = tf.Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 112)
    image_processor.save_pretrained(d)
    # its class check looks up the video processor, which needs torchvision (not installed): skip only that check
    check = tf.Qwen2VLProcessor.check_argument_for_proper_class
    tf.Qwen2VLProcessor.check_argument_for_proper_class = lambda self, name, arg: None
    try:
        hf = tf.Qwen2VLProcessor(image_processor=image_processor, tokenizer=tf.AutoTokenizer.from_pretrained(d),
                                 chat_template=TEMPLATE)
    finally:
        tf.Qwen2VLProcessor.check_argument_for_proper_class = check
    return hf, ocellus.load_processor(d), d


def _image(h, w, seed=0, mode="RGB"):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _assert_same(got, want):
    assert got["input_ids"].tolist() == want["input_ids"].tolist()
    assert torch.equal(got["attention_mask"], want["attention_mask"])
    assert torch.equal(got["image_grid_thw"], want["image_grid_thw"])
    torch.testing.assert_close(got["pixel_values"], want["pixel_values"], atol=1e-6, rtol=0)


def _both(qwen, conv):
    hf, ours, _ = qwen
    want = hf.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=True,
                                  return_tensors="pt")
    return ours(messages=conv, add_generation_prompt=True), want


def test_every_part_form_transformers_reads_gives_its_ids_and_pixels(qwen, tmp_path):
    """{"type": "image", X: src} for X in image / url / path / base64 (transformers' keys), a data URL under "url"
    and OpenAI's {"type": "image_url", "image_url": {"url": ...}}: the same image, the same ids and pixels as
    transformers. Before: only "image" / "path" were read, the rest said '0 images' or refused the part."""
    img = _image(40, 90)
    path = tmp_path / "a.png"
    path.write_bytes(_png(img))
    b64 = base64.b64encode(_png(img)).decode()
    forms = [{"type": "image", "image": img}, {"type": "image", "url": str(path)}, {"type": "image", "path": str(path)},
             {"type": "image", "base64": b64}, {"type": "image", "url": "data:image/png;base64," + b64},
             {"type": "image_url", "image_url": {"url": str(path)}}]
    for part in forms:
        conv = [{"role": "user", "content": [part, {"type": "text", "text": "what is in the picture?"}]}]
        _assert_same(*_both(qwen, conv))


def test_images_in_several_turns_and_a_system_message_equal_transformers(qwen, tmp_path):
    """Three images over two user turns (one after the text, one by url), an assistant turn between, a system
    message, odd sizes (2 px wide, wide, tall): ids and pixels as transformers'."""
    path = tmp_path / "b.png"
    path.write_bytes(_png(_image(400, 2, seed=2)))
    conv = [{"role": "system", "content": "Describe both images."},
            {"role": "user", "content": [{"type": "image", "image": _image(30, 200, seed=1)},
                                         {"type": "text", "text": "a red circle"}]},
            {"role": "assistant", "content": "a blue square"},
            {"role": "user", "content": [{"type": "text", "text": "and these?"},
                                         {"type": "image", "url": str(path)},
                                         {"type": "image", "image": _image(120, 31, seed=3, mode="RGBA")}]}]
    _assert_same(*_both(qwen, conv))


def test_a_video_part_carries_its_frames_under_path_or_url(qwen):
    """{"type": "video", "path" / "url": frames} is read as transformers reads it ("video", "url", "path"); before,
    only "video" was, and the others said '0 videos'."""
    _, ours, _ = qwen
    frames = [_image(28, 56, seed=k) for k in range(3)]
    want = ours(messages=[{"role": "user", "content": [{"type": "video", "video": frames}]}])
    for key in ("path", "url"):
        got = ours(messages=[{"role": "user", "content": [{"type": "video", key: frames}]}])
        assert got["input_ids"].tolist() == want["input_ids"].tolist()
        assert torch.equal(got["pixel_values_videos"], want["pixel_values_videos"])
        assert torch.equal(got["video_grid_thw"], want["video_grid_thw"])


def test_a_bare_part_among_carrying_ones_is_named(qwen):
    """One image part carrying its image, one not, no images=: transformers fails on counts (2 tokens, 1 image);
    Ocellus names the bare part rather than reporting '0 images' or pairing the image with the wrong part."""
    _, ours, _ = qwen
    conv = [{"role": "user", "content": [{"type": "text", "text": "a"}]},
            {"role": "user", "content": [{"type": "image", "image": _image(28, 28)}, {"type": "image"}]}]
    with pytest.raises(InputError, match=r"sample 0, turn 1, part 1: this image part carries no image"):
        ours(messages=conv)
    batch = [[{"role": "user", "content": [{"type": "image", "image": _image(28, 28)}]}],
             [{"role": "user", "content": [{"type": "image"}]}]]
    with pytest.raises(InputError, match=r"sample 1, turn 0, part 0"):
        ours(messages=batch)


def test_media_given_both_ways_must_be_the_same(qwen):
    """images= and an image inside the part: the same object (or path) is fine; a different one was silently
    replaced by images=' and is now an InputError naming the part. Likewise videos=."""
    _, ours, _ = qwen
    a, b = _image(28, 28, seed=0), _image(28, 28, seed=1)
    conv = [{"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "what?"}]}]
    assert torch.equal(ours(messages=conv, images=[a])["pixel_values"], ours(messages=conv)["pixel_values"])
    with pytest.raises(InputError, match=r"sample 0, turn 0, part 0: the part carries a image other than"):
        ours(messages=conv, images=[b])
    clip = [a, b]
    video = [{"role": "user", "content": [{"type": "video", "video": clip}]}]
    assert "pixel_values_videos" in ours(messages=video, videos=[clip])
    with pytest.raises(InputError, match=r"part 0: the part carries a video other than"):
        ours(messages=video, videos=[[b, a]])


@pytest.mark.parametrize("part,match", [
    ({"type": "image", "image": "x.png", "url": "y.png"}, r"part 0: the image part carries 'image' and 'url'"),
    ({"type": "image", "base64": "not base64!"}, r"part 0: the image part's 'base64' is not valid base64"),
    ({"type": "image_url", "image_url": {}}, r"part 0: an image_url part needs 'image_url'"),
    ({"type": "image_url"}, r"part 0: an image_url part needs 'image_url'"),
], ids=["two-sources", "bad-base64", "image_url-without-url", "image_url-missing"])
def test_a_bad_part_is_an_input_error_naming_it(qwen, part, match):
    _, ours, _ = qwen
    with pytest.raises(InputError, match=match):
        ours(messages=[{"role": "user", "content": [part, {"type": "text", "text": "what?"}]}])


def test_trl_rows_read_every_part_form(tmp_path):
    """A TRL row whose images travel in their parts by url / base64 keeps them, in order."""
    b64 = base64.b64encode(_png(_image(4, 4))).decode()
    conv = from_trl({"messages": [{"role": "user", "content": [
        {"type": "image", "url": "a.png"}, {"type": "image_url", "image_url": {"url": "b.png"}},
        {"type": "image", "base64": b64}, {"type": "text", "text": "hi"}]}]})
    assert conv.images[:2] == ["a.png", "b.png"] and conv.images[2] == base64.b64decode(b64)


def _video_dir(qwen, tmp_path, **settings):
    """The checkpoint with a video_preprocessor_config.json (28 x 28 .. 56 x 112 pixels a frame) plus `settings`."""
    import json
    import shutil
    d = tmp_path / "video"
    shutil.copytree(qwen[2], d)
    (d / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "Qwen2VLVideoProcessor", "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2,
        "size": {"shortest_edge": 28 * 28, "longest_edge": 56 * 112}, **settings}))
    return ocellus.load_processor(d)


def _clip(n, h=56, w=56):
    return [_image(h, w, seed=k) for k in range(n)]


def test_video_num_frames_setting_samples_that_many_frames(qwen, tmp_path):
    """video_preprocessor_config.json's num_frames (do_sample_frames): transformers keeps round(n / 2) * 2 frames at
    arange(0, total, total / n) and ignores fps; it was silently ignored (fps sampling instead, other frames and
    another token count). 9 frames, num_frames 4 -> frames 0, 2, 4, 6; 5 -> rounds to 4 as well (fps 6 alone: 8)."""
    from ocellus.data.video import Video
    clip = _clip(9)
    plain = _video_dir(qwen, tmp_path / "a")
    want = plain(messages=[{"role": "user", "content": [{"type": "video"}]}], videos=[[clip[i] for i in (0, 2, 4, 6)]])
    for n in (4, 5):
        ours = _video_dir(qwen, tmp_path / str(n), do_sample_frames=True, num_frames=n, fps=6.0)
        got = ours(messages=[{"role": "user", "content": [{"type": "video"}]}], videos=[Video(clip, fps=6.0)])
        assert got["video_grid_thw"].tolist() == [[2, 4, 4]]
        assert torch.equal(got["pixel_values_videos"], want["pixel_values_videos"])
        assert got["input_ids"].tolist() == want["input_ids"].tolist()
        # transformers' sampled_fps: kept / total x the video's rate = 4 / 9 x 6; a temporal patch spans 2 / that
        torch.testing.assert_close(got["second_per_grid_ts"], torch.tensor([2 / (4 / 9 * 6)]))
        # a list of frames has no rate, and needs none for a fixed count
        assert torch.equal(ours(messages=[{"role": "user", "content": [{"type": "video"}]}],
                                videos=[clip])["pixel_values_videos"], want["pixel_values_videos"])
    # without do_sample_frames, num_frames samples nothing (transformers calls sample_frames only then): 9 frames kept
    kept = _video_dir(qwen, tmp_path / "kept", num_frames=4)
    assert kept(messages=[{"role": "user", "content": [{"type": "video"}]}],
                videos=[clip])["video_grid_thw"].tolist() == [[5, 4, 4]]
    too_many = _video_dir(qwen, tmp_path / "many", do_sample_frames=True, num_frames=12)
    with pytest.raises(InputError, match=r"video 0: num_frames=12 samples 12 frames but the video has 9"):
        too_many(messages=[{"role": "user", "content": [{"type": "video"}]}], videos=[clip])
    from ocellus.errors import ConfigError
    one = _video_dir(qwen, tmp_path / "one", do_sample_frames=True, num_frames=1)
    with pytest.raises(ConfigError, match=r"num_frames=1 rounds to no whole temporal patch"):
        one(messages=[{"role": "user", "content": [{"type": "video"}]}], videos=[clip])


def test_video_cap_pixels_per_frame_bounds_the_whole_video(qwen, tmp_path):
    """cap_pixels_per_frame + max_video_tokens (transformers 5's Qwen2VLVideoProcessor): each frame's pixel cap is
    min(longest_edge, int(max_video_tokens x 28^2 x 0.9) x 2 // frames), floored at 1.05 x shortest_edge. It was
    ignored: the frames kept their per-frame budget and the video more tokens than transformers gives it."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    clip = _clip(8, 112, 112)
    msg = [{"role": "user", "content": [{"type": "video"}]}]
    for tokens in (10, 17, 35, 100000):   # 17 and 35 sit next to a 28 / 56 px edge for the 0.9 and the x 2
        ours = _video_dir(qwen, tmp_path / str(tokens), cap_pixels_per_frame=True, max_video_tokens=tokens)
        cap = max(min(56 * 112, int(tokens * 28 * 28 * 0.9) * 2 // len(clip)), int(28 * 28 * 1.05))
        h, w = smart_resize(112, 112, factor=28, min_pixels=28 * 28, max_pixels=cap)
        assert ours(messages=msg, videos=[clip])["video_grid_thw"].tolist() == [[4, h // 14, w // 14]], tokens
    uncapped = _video_dir(qwen, tmp_path / "off", max_video_tokens=10)
    assert uncapped(messages=msg, videos=[clip])["video_grid_thw"].tolist() == [[4, 4, 4]]


def test_an_unsampled_video_of_known_rate_spans_its_own_time(qwen, tmp_path):
    """Every frame kept (do_sample_frames false, the default) of a video whose rate is known (a decoded GIF, or
    Video(frames, fps)): transformers' sampled_fps is that rate, so one temporal patch spans 2 / fps seconds, which
    Qwen2.5-VL's time ids scale with. It was 2 / 2.0 whatever the rate (1 s, 5x too long at 10 fps). Frames of
    unknown rate keep the video processor's fps (2: 1 s)."""
    from ocellus.data.video import Video
    ours = _video_dir(qwen, tmp_path)
    msg = [{"role": "user", "content": [{"type": "video"}, {"type": "video"}]}]
    got = ours(messages=msg, videos=[Video(_clip(4), fps=10.0), _clip(4)])
    torch.testing.assert_close(got["second_per_grid_ts"], torch.tensor([2 / 10.0, 2 / 2.0]))


def test_a_placeholder_split_over_text_parts_is_named_as_typed_text(qwen):
    """"<|image" + "_pad|>" in two text parts is "<|image_pad|>" in the rendered prompt (transformers: a count
    error, no images given): the InputError says the text holds the token, not that the template dropped an image.
    Split by an image part, the two halves are text again."""
    _, ours, _ = qwen
    halves = [{"type": "text", "text": "a <|image"}, {"type": "text", "text": "_pad|> b"}]
    with pytest.raises(InputError, match=r"sample 0, turn 0: the text contains the image token '<\|image_pad\|>'"):
        ours(messages=[{"role": "user", "content": halves}])
    split = [halves[0], {"type": "image", "image": _image(28, 28)}, halves[1]]
    assert ours(messages=[{"role": "user", "content": split}])["image_grid_thw"].tolist() == [[1, 2, 2]]


def test_an_empty_images_list_beside_carrying_parts_reads_the_parts(qwen):
    _, ours, _ = qwen
    conv = [{"role": "user", "content": [{"type": "image", "image": _image(28, 28)}, {"type": "text", "text": "a"}]}]
    assert torch.equal(ours(messages=conv, images=[])["pixel_values"], ours(messages=conv)["pixel_values"])


def test_a_template_with_a_branch_per_content_form_gets_each_message_as_sent(qwen, tmp_path):
    """A template that reads content as a string or as parts and renders them differently (here the parts branch
    starts each text on a new line): transformers passes each message in the form its sender wrote. Before, one
    form was chosen for the whole template ('string', the parts joined), and the part-list messages, images among
    them, were rendered by the string branch: other ids than transformers'."""
    import json
    import shutil
    hf, _, d = qwen
    dual = TEMPLATE.replace("{% elif 'text' in content %}{{ content['text'] }}",
                            "{% elif 'text' in content %}{{ '\\n' + content['text'] }}")
    assert dual != TEMPLATE
    shutil.copytree(d, tmp_path / "dual")
    cfg = json.loads((tmp_path / "dual" / "tokenizer_config.json").read_text())
    (tmp_path / "dual" / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": dual}))
    (tmp_path / "dual" / "chat_template.jinja").write_text(dual)
    ours = ocellus.load_processor(tmp_path / "dual")
    conv = [{"role": "system", "content": "a red circle"},
            {"role": "user", "content": [{"type": "image", "image": _image(40, 90)}, {"type": "text", "text": "what?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a blue square"}]},
            {"role": "user", "content": "and now?"}]
    want = hf.apply_chat_template(conv, chat_template=dual, add_generation_prompt=True, tokenize=True,
                                  return_dict=True, return_tensors="pt")
    assert ours.apply_chat_template(conv, add_generation_prompt=True) == hf.apply_chat_template(
        conv, chat_template=dual, add_generation_prompt=True, tokenize=False)
    _assert_same(ours(messages=conv), want)
    # training renders the template too (data/templates.py): parts, the form a multimodal sample is, as above
    from ocellus.data.templates import get_template
    assert get_template("jinja", ours.tokenizer, chat_template=dual).content_format == "parts"


def test_string_content_reaches_a_template_that_reads_parts_only(qwen, tmp_path):
    """A template that reads parts only (selectattr over content['type']) drops a string's text in transformers
    (a string's characters have no 'type'); Ocellus hands it the string as one text part, so the text is rendered,
    the same prompt as the sender writing the part."""
    import json
    import shutil
    parts_only = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                  "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% endif %}{% endfor %}"
                  "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] }}{% endfor %}"
                  "<|im_end|>\n{% endfor %}")
    shutil.copytree(qwen[2], tmp_path / "parts")
    cfg = json.loads((tmp_path / "parts" / "tokenizer_config.json").read_text())
    (tmp_path / "parts" / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": parts_only}))
    (tmp_path / "parts" / "chat_template.jinja").write_text(parts_only)
    ours = ocellus.load_processor(tmp_path / "parts")
    as_string = ours.apply_chat_template([{"role": "user", "content": "a red circle"}])
    assert as_string == ours.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "a red circle"}]}])
    assert "a red circle" in as_string
