"""tokenizer_config.json's `tokenizer_class` as transformers 5 reads it, against AutoTokenizer on the same directory:
- LlamaTokenizer(Fast) builds its own pipeline over tokenizer.json's vocab and merges (data/tokenizer_classes.py):
  the "▁" is prepended once (legacy false, the default), at every split (legacy true) or never (add_prefix_space
  false), whatever the file's normalizer does; its default special tokens fill the names the config leaves out;
- a token additional_special_tokens lists that tokenizer.json already holds as a plain added token stays plain
  (skip_special_tokens keeps it), while a named one (image_token) becomes special."""
import json
import random

import pytest

transformers = pytest.importorskip("transformers")
from tokenizers import AddedToken  # noqa: E402
from tokenizers import Tokenizer as RawTokenizer  # noqa: E402
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from ocellus.data.tokenizer import Tokenizer  # noqa: E402

CORPUS = ["Hello world, this is a tiny corpus.", "café crème — déjà vu 🙂", "[INST] What is it? [/INST] A cat."] * 5
BYTES = [f"<0x{i:02X}>" for i in range(256)]
TEXTS = ["Hello world", "<s>[INST] hi [/INST] A cat.</s><s>[INST] and? [/INST]", "  two  spaces</s>x",
         "café 🙂\n\nnew", "</s>", ""]


def _llama2_file(path):
    """Llama-2's layout: the space marker prepended and substituted by a normalizer, byte fallback, BOS added."""
    tok = RawTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator([c.replace(" ", "▁") for c in CORPUS],
                            trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *BYTES],
                                                show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.save(str(path / "tokenizer.json"))


def _both(path, config):
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return Tokenizer.from_dir(path), AutoTokenizer.from_pretrained(path)


def _assert_same(ours, ref, texts):
    for text in texts:
        for special in (True, False):
            ids = ref.encode(text, add_special_tokens=special)
            assert ours.encode(text, add_special_tokens=special) == ids, (text, special)
            for skip in (False, True):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("flags", [{}, {"legacy": False}, {"legacy": True}, {"add_prefix_space": False},
                                   {"legacy": True, "add_prefix_space": True}])
@pytest.mark.parametrize("name", ["LlamaTokenizer", "LlamaTokenizerFast"])
def test_llama_class_builds_its_own_pipeline_like_transformers(name, flags, tmp_path):
    _llama2_file(tmp_path)
    ours, ref = _both(tmp_path, {"tokenizer_class": name, "bos_token": "<s>", "eos_token": "</s>", **flags})
    _assert_same(ours, ref, TEXTS)


def test_llama_class_default_special_tokens(tmp_path):
    _llama2_file(tmp_path)
    ours, ref = _both(tmp_path, {"tokenizer_class": "LlamaTokenizer", "unk_token": None})
    assert (ours.bos_token_id, ours.eos_token_id, ours.unk_token_id) == (ref.bos_token_id, ref.eos_token_id,
                                                                         ref.unk_token_id) == (1, 2, None)
    _assert_same(ours, ref, TEXTS)


def test_generic_class_reads_the_file_as_it_is(tmp_path):
    _llama2_file(tmp_path)
    ours, ref = _both(tmp_path, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                                 "eos_token": "</s>", "legacy": False})
    _assert_same(ours, ref, TEXTS)
    after_eos = ours.convert_ids_to_tokens(ours.encode("</s>x", add_special_tokens=False))[1]
    assert after_eos.startswith("▁")   # the file's normalizer prepends after a special token too


@pytest.mark.parametrize("entry", [{"additional_special_tokens": ["<image>"]}, {"image_token": "<image>"}])
def test_a_listed_extra_keeps_the_files_flags_a_named_one_turns_special(entry, tmp_path):
    _llama2_file(tmp_path)
    raw = RawTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    raw.add_tokens([AddedToken("<image>", special=False, normalized=False)])
    raw.save(str(tmp_path / "tokenizer.json"))
    ours, ref = _both(tmp_path, {"bos_token": "<s>", "eos_token": "</s>", **entry})
    _assert_same(ours, ref, ["a<image>b", "<image>"])


def test_random_text_through_the_llama_class(tmp_path):
    _llama2_file(tmp_path)
    ours, ref = _both(tmp_path, {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"})
    rng = random.Random(0)
    pieces = ["Hello", " ", "  ", "\n", "</s>", "<s>", "[INST]", "é", "e\u0301", "🙂", "👍🏽", "日本", "\t", "▁"]
    _assert_same(ours, ref, ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 10))) for _ in range(40)])


def test_message_text_holding_a_control_string_continues_the_prompt(tmp_path):
    """A message's "</s>" is read as text (data/control_tokens.py), its chunks encoded apart: a chunk after the
    template's <s> must not get the "▁" that LlamaTokenizer's Metaspace prepends only at the text's start."""
    from _chat_templates import LLAMA2
    _llama2_file(tmp_path)
    ours, ref = _both(tmp_path, {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                                 "chat_template": LLAMA2})
    for turns in ([{"role": "user", "content": "hi </s> there"}],
                  [{"role": "user", "content": "hi </s> there"}, {"role": "assistant", "content": "ok"}]):
        ids = ours.apply_chat_template(turns, tokenize=True)      # the second: the template's </s> ends a chunk
        head = ref.encode("<s>[INST] hi", add_special_tokens=False)
        assert ids[:len(head)] == head
        assert ids.count(ours.eos_token_id) == len(turns) - 1         # the message's "</s>" stayed text
