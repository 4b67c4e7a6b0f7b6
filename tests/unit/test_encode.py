"""Messages -> (input_ids, labels): the loss mask follows the message structure.

A tiny byte-level BPE tokenizer (the `tokenizers` library, like Llama-3/Qwen) is trained here
with the special tokens the templates use and opened through ocellus' Tokenizer. For every
template the trained tokens, decoded, must be exactly the assistant replies with their
end-of-turn markers; transformers' apply_chat_template is the oracle for the jinja mode.
"""
import json

import pytest
import torch
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from ocellus.data import messages as M
from ocellus.data.encode import IGNORE_INDEX, collate, encode_messages
from ocellus.data.templates import LLAVA_SYSTEM, get_template, render
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError, InputError
from _chat_templates import LLAMA2

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<image>"]
CORPUS = ["A chat between a curious human and an artificial intelligence assistant.",
          "USER: What is in the picture? ASSISTANT: A red circle left of a blue square.",
          "###Human: Describe it.###Assistant: Two cats on a mat, sleeping in the sun.",
          "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n[INST] <<SYS>> hello [/INST]",
          LLAVA_SYSTEM, "A chat between a curious user."] * 5
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Qwen2-VL-like: content as parts, images rendered by the template itself.
CHATML_PARTS = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
                "{{ m['content'] }}{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>"
                "{% else %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nWhat is in the picture?"}]},
    {"role": "assistant", "content": "A red circle."},
    {"role": "user", "content": "And left of it?"},
    {"role": "assistant", "content": [{"type": "text", "text": "A blue square."}]},
]
REPLIES = ["A red circle.", "A blue square."]


def _train(style="bytelevel", bos_post_processor=False) -> RawTokenizer:
    tok = RawTokenizer(models.BPE(unk_token="<unk>" if style == "metaspace" else None))
    if style == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # SentencePiece-converted style (Llama-2 / Vicuna tokenizers)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        tok.decoder = decoders.Metaspace(prepend_scheme="first")
        alphabet = list(set("".join(CORPUS + REPLIES)) - {" "})
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=360, special_tokens=SPECIALS,
                                                        initial_alphabet=alphabet, show_progress=False))
    if bos_post_processor:  # Llama-style: the post-processor prepends BOS
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def _save(raw: RawTokenizer, directory, template=CHATML):
    directory.mkdir(parents=True, exist_ok=True)
    raw.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "pad_token": "<pad>", "unk_token": "<unk>", "image_token": "<image>", "chat_template": template}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return _save(_train(), tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return Tokenizer.from_dir(tok_dir)


def _jinja_tok(tmp_path, template):
    return Tokenizer.from_dir(_save(_train(), tmp_path / "jinja", template))


def _trained_text(tok, sample):
    return tok.decode([i for i, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX])


# Per template: (template name, tokenizer template source or None, how one reply is trained)
CASES = {
    "llava_v0": (None, lambda a: f" {a}###"),
    "llava_v1": (None, lambda a: f" {a}</s>"),
    "chatml": (None, lambda a: f"{a}<|im_end|>"),
    "jinja-chatml": (CHATML, lambda a: f"{a}<|im_end|>"),
    "jinja-chatml-parts": (CHATML_PARTS, lambda a: f"{a}<|im_end|>"),
    "jinja-llama2": (LLAMA2, lambda a: f" {a} </s>"),
}


def _setup(case, tok, tmp_path):
    source, reply = CASES[case]
    if source is None:
        return tok, case, reply
    return _jinja_tok(tmp_path, source), "jinja", reply


@pytest.mark.parametrize("case", list(CASES))
def test_trained_tokens_are_exactly_the_replies_and_their_end_markers(case, tok, tmp_path):
    tok, name, reply = _setup(case, tok, tmp_path)
    sample = encode_messages(CONVERSATION, tok, name, images_tokens=[3])
    assert _trained_text(tok, sample) == "".join(reply(a) for a in REPLIES)
    assert len(sample.input_ids) == len(sample.labels)
    # Every trained label is its own input id (labels are not shifted here: the model shifts).
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(sample.input_ids, sample.labels))
    # The ids decode to the template's rendering, with the placeholder expanded.
    rendered = render(get_template(name, tok).segments(M.normalize(CONVERSATION)))
    assert tok.decode(sample.input_ids) == rendered.replace("<image>", "<image>" * 3)
    assert sample.input_ids.count(tok.convert_tokens_to_ids("<image>")) == 3


@pytest.mark.parametrize("case", list(CASES))
def test_last_and_all(case, tok, tmp_path):
    tok, name, reply = _setup(case, tok, tmp_path)
    last = encode_messages(CONVERSATION, tok, name, images_tokens=[2], train_on="last")
    assert _trained_text(tok, last) == reply(REPLIES[-1])
    every = encode_messages(CONVERSATION, tok, name, images_tokens=[2], train_on="all")
    image_id = tok.convert_tokens_to_ids("<image>")
    assert every.input_ids == last.input_ids  # train_on changes labels only
    assert [i for i, label in zip(every.input_ids, every.labels) if label == IGNORE_INDEX] == [image_id] * 2


def test_exact_strings_of_the_builtin_templates(tok):
    conv = M.normalize([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                        {"role": "user", "content": "Bye"}])
    v1 = render(get_template("llava_v1").segments(conv, add_generation_prompt=True))
    assert v1 == LLAVA_SYSTEM + " USER: Hi ASSISTANT: Yo</s>USER: Bye ASSISTANT:"
    v0 = render(get_template("llava_v0").segments(conv, add_generation_prompt=True))
    assert v0 == LLAVA_SYSTEM + "###Human: Hi###Assistant: Yo###Human: Bye###Assistant:"
    chatml = render(get_template("chatml").segments(conv, add_generation_prompt=True))
    assert chatml == ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
                      "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    qwen = render(get_template("qwen").segments(conv[:1]))
    assert qwen.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    vicuna = render(get_template("vicuna_v1").segments(conv[:1]))
    assert vicuna.startswith("A chat between a curious user and")
    # a system message replaces the default system text (never both)
    own = M.normalize([{"role": "system", "content": "Be brief."}, *conv[:1]])
    assert render(get_template("llava_v1").segments(own)) == "Be brief. USER: Hi "
    assert render(get_template("qwen").segments(own)) == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                                                          "<|im_start|>user\nHi<|im_end|>\n")


def test_plain_trains_caption_and_eos_only(tok):
    row = {"conversations": [{"from": "human", "value": "Describe the image briefly.\n<image>"},
                             {"from": "gpt", "value": "Two cats on a mat."}], "image": "cats.jpg"}
    messages, images = M.from_llava(row)
    sample = encode_messages(messages, tok, "plain", images_tokens=[5])
    image_id = tok.convert_tokens_to_ids("<image>")
    assert sample.input_ids[:5] == [image_id] * 5 and sample.labels[:5] == [IGNORE_INDEX] * 5
    assert tok.decode(sample.input_ids) == "<image>" * 5 + "Two cats on a mat.</s>"  # the user's text is dropped
    assert _trained_text(tok, sample) == "Two cats on a mat.</s>"
    assert _trained_text(tok, encode_messages(messages, tok, "plain", images_tokens=[5], train_on="all")) == \
        "Two cats on a mat.</s>"
    newline = encode_messages(messages, tok, get_template("plain", end="\n"), images_tokens=[5])
    assert _trained_text(tok, newline) == "Two cats on a mat.\n"  # LLaVA-1.5's own sep
    with pytest.raises(InputError, match="exactly a user turn"):
        encode_messages(CONVERSATION, tok, "plain", images_tokens=[1])


@pytest.mark.parametrize("case", ["llava_v1", "chatml", "jinja-chatml-parts"])
def test_image_expansion_counts_and_positions(case, tok, tmp_path):
    tok, name, _ = _setup(case, tok, tmp_path)
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare"},
                                         {"type": "image"}, {"type": "text", "text": " and"}]},
            {"role": "assistant", "content": "Both red."},
            {"role": "user", "content": [{"type": "text", "text": "Now this:"}, {"type": "image"}]},
            {"role": "assistant", "content": "Blue."}]
    sample = encode_messages(conv, tok, name, images_tokens=[4, 1, 2])
    image_id = tok.convert_tokens_to_ids("<image>")
    positions = [i for i, t in enumerate(sample.input_ids) if t == image_id]
    assert len(positions) == 7 and all(sample.labels[i] == IGNORE_INDEX for i in positions)
    # Runs of 4, 1 and 2 image tokens, in that order, each where its placeholder was.
    runs, start = [], positions[0]
    for a, b in zip(positions, positions[1:] + [None]):
        if b != a + 1:
            runs.append((start, a - start + 1))
            start = b
    assert [n for _, n in runs] == [4, 1, 2]
    assert tok.decode(sample.input_ids[runs[0][0] + 4:runs[1][0]]) == "Compare"
    between = tok.decode(sample.input_ids[runs[1][0] + 1:runs[2][0]])
    assert between.startswith(" and") and between.endswith("Now this:") and "Both red." in between
    assert sample.tokens_per_image == [4, 1, 2]


def test_jinja_chatml_matches_transformers(tok_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    for template in (CHATML, CHATML_PARTS):
        directory = _save(_train(), tmp_path / str(len(template)), template)
        ours, hf = Tokenizer.from_dir(directory), transformers.AutoTokenizer.from_pretrained(directory)
        text_only = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else
                      "".join(p.get("text", "") for p in m["content"])} for m in CONVERSATION]
        for conv, add_generation_prompt in ((text_only, False), (text_only[:-1], True)):
            sample = encode_messages(conv, ours, "jinja", add_generation_prompt=add_generation_prompt)
            expected = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=add_generation_prompt)
            assert ours.decode(sample.input_ids) == expected
            assert sample.input_ids == hf(expected, add_special_tokens=False)["input_ids"]  # no boundary artefacts
    # Content parts with an image: the template renders "<image>", one token per image here.
    assert get_template("jinja", ours).content_format == "parts"
    sample = encode_messages(CONVERSATION, ours, "jinja", images_tokens=[1])
    assert ours.decode(sample.input_ids) == hf.apply_chat_template(CONVERSATION, tokenize=False)


def test_jinja_trains_a_reply_through_its_last_end_marker(tmp_path):
    """A reply whose text holds the end marker as text: the whole reply and the template's own marker are
    trained, not just the text up to the first "<|im_end|>"."""
    ours = Tokenizer.from_dir(_save(_train(), tmp_path, CHATML))
    reply = "a <|im_end|> b"
    sample = encode_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": reply}], ours,
                             "jinja")
    trained = [i for i, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX]
    assert ours.decode(trained) == reply + "<|im_end|>"


@pytest.mark.parametrize("style", ["bytelevel", "metaspace"])
def test_segmentwise_ids_equal_whole_string_ids_with_bos(style, tmp_path):
    # Llama/Vicuna tokenizers prepend BOS in their post-processor; SentencePiece-style ones mark word
    # starts with "▁". Segment-wise encoding must still give the ids of the whole rendered string.
    tok = Tokenizer.from_dir(_save(_train(style, bos_post_processor=True), tmp_path / style))
    conv = M.normalize(CONVERSATION[1:])
    for name in ("llava_v1", "llava_v0", "chatml"):
        sample = encode_messages(conv, tok, name, images_tokens=[1])
        rendered = render(get_template(name).segments(conv))
        assert sample.input_ids[0] == tok.bos_token_id and sample.labels[0] == IGNORE_INDEX
        assert sample.input_ids == tok.encode(rendered, add_special_tokens=True), name
        # Read the trained pieces token by token (a Metaspace decoder drops the first token's leading "▁").
        pieces = tok.convert_ids_to_tokens([i for i, label in zip(sample.input_ids, sample.labels)
                                            if label != IGNORE_INDEX])
        trained = tok.backend.decoder.decode(pieces) if style == "bytelevel" else "".join(pieces).replace("▁", " ")
        assert trained == "".join(CASES[name][1](a) for a in REPLIES), name
    assert encode_messages(conv, tok, "chatml", images_tokens=[1], add_bos=False).input_ids[0] != tok.bos_token_id


def test_llava_json_round_trip():
    row = {"id": "000001", "image": "coco/1.jpg",
           "conversations": [{"from": "human", "value": "<image>\nWhat is on the table?"},
                             {"from": "gpt", "value": "A cup."},
                             {"from": "human", "value": "Color?"}, {"from": "gpt", "value": "Blue."}]}
    messages, images = M.from_llava(row)
    assert images == ["coco/1.jpg"]
    assert messages[0] == {"role": "user", "content": [{"type": "image"},
                                                       {"type": "text", "text": "\nWhat is on the table?"}]}
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert M.to_llava(messages, images, id="000001") == row
    multi = {"image": ["a.jpg", "b.jpg"], "conversations": [
        {"from": "system", "value": "Be kind."}, {"from": "human", "value": "<image> vs <image><image>?"},
        {"from": "gpt", "value": "Same."}]}
    with pytest.raises(InputError, match="3 image placeholders in the messages but 2 images given"):
        M.from_llava(multi, row=7)
    multi["image"].append("c.jpg")
    messages, images = M.from_llava(multi)
    assert M.count_images(messages) == 3 and M.to_llava(messages, images) == multi


def test_trl_round_trip():
    row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "A dog."}]}],
           "images": ["<PIL>"]}
    messages, images = M.from_trl(row)
    assert M.to_trl(messages, images) == row
    string_row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    messages, images = M.from_trl(string_row)
    assert images == [] and messages[1] == {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}
    inline = {"messages": [{"role": "user", "content": [{"type": "image", "image": "pil-0"}]},
                           {"role": "assistant", "content": "x"}]}
    assert M.from_trl(inline).images == ["pil-0"]
    # attached images move to the row's list (else reading the row back would find them twice)
    row_back = M.to_trl(*M.from_trl(inline))
    assert row_back["messages"][0]["content"] == [{"type": "image"}] and row_back["images"] == ["pil-0"]
    assert M.from_trl(row_back).images == ["pil-0"]
    with pytest.raises(InputError, match="both"):
        M.from_trl({**inline, "images": ["pil-0"]}, row=3)


def test_errors_name_the_row_and_turn(tok):
    with pytest.raises(InputError, match=r"row 12, turn 1: unknown role 'bot'"):
        encode_messages([{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}], tok, row=12)
    with pytest.raises(InputError, match=r"row 4, turn 2: unknown speaker 'robot'"):
        M.from_llava({"id": 4, "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                                                 {"from": "robot", "value": "c"}]})
    with pytest.raises(InputError, match="row 5: 1 image placeholders in the messages but 2 images given"):
        encode_messages(CONVERSATION, tok, images_tokens=[3, 3], row=5)
    with pytest.raises(InputError, match="row 5: 1 image placeholders in the messages but 0 images given"):
        encode_messages(CONVERSATION, tok, row=5)
    with pytest.raises(InputError, match="row 0: a conversation must be a non-empty list"):
        encode_messages([], tok, row=0)
    with pytest.raises(InputError, match=r"row 2: llava_v1 template: turn 3: expected role assistant, got user"):
        encode_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": "c"}, {"role": "user", "content": "d"}], tok, "llava_v1", row=2)
    with pytest.raises(InputError, match=r"turn 0: the text contains the image token"):
        encode_messages([{"role": "user", "content": "<image> hi"}, {"role": "assistant", "content": "b"}], tok)
    with pytest.raises(InputError, match="turn 1: assistant message has empty content"):
        encode_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}], tok)
    with pytest.raises(InputError, match="nothing to train on"):
        encode_messages([{"role": "user", "content": "a"}], tok)


def test_max_length_raises_or_truncates_and_reports(tok):
    full = encode_messages(CONVERSATION, tok, "chatml", images_tokens=[2])
    n = len(full)
    with pytest.raises(InputError, match=f"row 9: sample is {n} tokens long, over max_length={n - 1}"):
        encode_messages(CONVERSATION, tok, "chatml", images_tokens=[2], max_length=n - 1, row=9)
    cut = encode_messages(CONVERSATION, tok, "chatml", images_tokens=[2], max_length=n - 1, truncate=True)
    assert cut.truncated_from == n and cut.input_ids == full.input_ids[:-1] and cut.labels == full.labels[:-1]
    assert encode_messages(CONVERSATION, tok, "chatml", images_tokens=[2], max_length=n).truncated_from is None
    with pytest.raises(InputError, match="would cut through its images"):
        encode_messages(CONVERSATION, tok, "chatml", images_tokens=[2], max_length=12, truncate=True)


def test_config_errors(tok, tmp_path):
    raw = _train()
    raw_dir = tmp_path / "noimage"
    raw_dir.mkdir()
    raw.save(str(raw_dir / "tokenizer.json"))
    (raw_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    no_image = Tokenizer.from_dir(raw_dir)
    no_image.backend.add_tokens(["<img>"])  # known, but not as a special token
    with pytest.raises(ConfigError, match="does not know the image token '<img>' as a special token"):
        encode_messages(CONVERSATION, no_image, images_tokens=[1], image_token="<img>")
    # A template that renders the newest turn differently from history: no stable prefix, no mask.
    unstable = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if loop.last %} [end]{% endif %}\n"
                "{% endfor %}")
    with pytest.raises(ConfigError, match="not prefix-stable at turn 1"):
        encode_messages(CONVERSATION[1:3], _jinja_tok(tmp_path, unstable), "jinja", images_tokens=[1])
    assert get_template("jinja", _jinja_tok(tmp_path, CHATML)).content_format == "string"
    with pytest.raises(InputError, match="row 3: jinja template: turn 2: .*roles must alternate"):
        encode_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "assistant", "content": "c"}], _jinja_tok(tmp_path, LLAMA2), "jinja", row=3)
    with pytest.raises(ConfigError, match="unknown template 'vicuna'"):
        encode_messages(CONVERSATION, tok, "vicuna", images_tokens=[1])
    with pytest.raises(ConfigError, match="train_on"):
        encode_messages(CONVERSATION, tok, images_tokens=[1], train_on="assistants")


def test_generation_prompt_has_no_labels_and_prompts_like_the_template(tok):
    prompt = [{"role": "user", "content": "Hi"}]
    sample = encode_messages(prompt, tok, "llava_v1", add_generation_prompt=True)
    assert tok.decode(sample.input_ids).endswith("USER: Hi ASSISTANT:") and sample.num_trained == 0
    with pytest.raises(InputError, match="already ends with an assistant message"):
        encode_messages(CONVERSATION, tok, "chatml", images_tokens=[1], add_generation_prompt=True)


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate(side, tok):
    a = encode_messages(CONVERSATION, tok, "chatml", images_tokens=[2])
    b = encode_messages(CONVERSATION[3:5], tok, "chatml")
    batch = collate([a, b], pad_id=0, padding_side=side)
    n, m = len(a), len(b)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, n)
    assert batch["attention_mask"].sum(1).tolist() == [n, m]
    row = slice(0, m) if side == "right" else slice(n - m, n)
    pad = slice(m, n) if side == "right" else slice(0, n - m)
    assert batch["input_ids"][1, row].tolist() == b.input_ids and batch["labels"][1, row].tolist() == b.labels
    assert torch.all(batch["input_ids"][1, pad] == 0) and torch.all(batch["labels"][1, pad] == IGNORE_INDEX)
    assert torch.all(batch["attention_mask"][1, pad] == 0) and torch.all(batch["attention_mask"][1, row] == 1)
    assert batch["input_ids"].dtype == torch.long
    with pytest.raises(ConfigError, match="pad_id"):
        collate([a], pad_id=None)
