"""continue_final_message (a prefilled assistant reply the model continues) renders as transformers'
apply_chat_template renders it: the prompt ends right after the last message's text (its trailing space kept
unless the template strips it; the last text part of a list of parts; a named field), for text and for ids.
Before, it reached the template as an unknown variable and the prompt closed the turn."""
import json

import pytest

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer as RawTokenizer  # noqa: E402
from tokenizers import decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from ocellus.data.tokenizer import Tokenizer  # noqa: E402
from ocellus.errors import InputError  # noqa: E402
from _chat_templates import LLAMA2  # noqa: E402

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
          "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}"
          "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}"
         "\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}")
THINKING = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m.reasoning_content %}<think>"
            "{{ m.reasoning_content }}</think>{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}")
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>", "<image>"]


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the answer is a cat, hello there"] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return path


def _pair(directory, template):
    ours, ref = Tokenizer.from_dir(directory), AutoTokenizer.from_pretrained(directory)
    ours.chat_templates["default"] = ref.chat_template = template
    return ours, ref


USER = {"role": "user", "content": "hello there"}


@pytest.mark.parametrize("template,last,field", [
    (CHATML, {"role": "assistant", "content": "The answer is "}, True),
    (CHATML, {"role": "assistant", "content": [{"type": "text", "text": "a cat"}, {"type": "image"}]}, True),
    (CHATML, {"role": "assistant", "content": [{"type": "text", "text": "The"}, {"type": "image"},
                                               {"type": "text", "text": " answer is"}]}, True),   # the last one
    (LLAMA2, {"role": "assistant", "content": "The answer is  "}, True),          # stripped by the template
    (GEMMA, {"role": "assistant", "content": "  The answer"}, "content"),
    (THINKING, {"role": "assistant", "content": "", "reasoning_content": "hmm, a cat"}, "reasoning_content"),
])
def test_continue_final_message_like_transformers(directory, template, last, field):
    ours, ref = _pair(directory, template)
    messages = [USER, last]
    text = ref.apply_chat_template(messages, tokenize=False, continue_final_message=field)
    assert ours.apply_chat_template(messages, continue_final_message=field) == text
    ids = ref.apply_chat_template(messages, tokenize=True, return_dict=False, continue_final_message=field)
    assert ours.apply_chat_template(messages, tokenize=True, continue_final_message=field) == list(ids)


@pytest.mark.parametrize("kwargs,last,says", [
    ({"add_generation_prompt": True}, {"role": "assistant", "content": "a"}, "add_generation_prompt"),
    ({}, {"role": "assistant", "content": [{"type": "image"}]}, "no text part"),
    ({"continue_final_message": "thinking_text"}, {"role": "assistant", "content": "a"}, '"thinking_text"'),
    ({"continue_final_message": "note"}, {"role": "assistant", "content": "a", "note": "b"}, 'never reads "note"'),
])
def test_continue_final_message_refusals_are_typed(directory, kwargs, last, says):
    ours, ref = _pair(directory, CHATML)
    kwargs = {"continue_final_message": True, **kwargs}
    with pytest.raises(ValueError):
        ref.apply_chat_template([USER, last], tokenize=False, **kwargs)
    with pytest.raises(InputError, match=says):
        ours.apply_chat_template([USER, last], **kwargs)


@pytest.mark.parametrize("template", ["{% set ns = namespace(_x=1) %}{{ ns._x }}",
                                      "{% set ns = namespace(x=1) %}{% set ns.__class__ = 2 %}{{ ns.x }}"])
def test_a_namespace_refuses_underscore_names_like_transformers(directory, template):
    ours, ref = _pair(directory, template)
    with pytest.raises(Exception, match="underscore"):
        ref.apply_chat_template([USER], tokenize=False)
    with pytest.raises(InputError, match="underscore"):
        ours.apply_chat_template([USER])
    ours.chat_templates["default"] = ref.chat_template = "{% set ns = namespace(x=1) %}{% set ns.x = 2 %}{{ ns.x }}"
    assert ours.apply_chat_template([USER]) == ref.apply_chat_template([USER], tokenize=False) == "2"
