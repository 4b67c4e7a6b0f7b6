"""Special tokens a tokenizer_config.json names but tokenizer.json lacks are added as transformers 5 adds them:
- their ids follow transformers' order -- bos, eos, unk, sep, pad, cls, mask, then model-specific ones such as
  image_token (in config order), then additional_special_tokens -- not the order the config happens to list them;
- a plain string token is added unnormalized: under a lower-casing normalizer "<img>" typed in the text is
  text, not the special token "<IMG>";
- a named token is special even when its entry says "special": false (skip_special_tokens drops it).
The oracle is AutoTokenizer on the same directory."""
import json

import pytest

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer as RawTokenizer  # noqa: E402
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

from ocellus.data.tokenizer import Tokenizer  # noqa: E402

CORPUS = ["look at the picture", "a red circle and a blue square", "hello there"] * 20
NEW = ["<IMG>", "<PAD>", "<CLS>", "<MASK>", "<T1>", "<V>"]


def _directory(tmp_path, config_update, lowercase=False):
    tok = RawTokenizer(models.BPE())
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(config_update)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return Tokenizer.from_dir(tmp_path), AutoTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("update", [
    {"cls_token": "<CLS>", "pad_token": "<PAD>"},                    # standard tokens listed out of order
    {"image_token": "<IMG>", "pad_token": "<PAD>"},                  # a model-specific one before a standard one
    {"mask_token": "<MASK>", "image_token": "<IMG>", "video_token": "<V>", "additional_special_tokens": ["<T1>"],
     "cls_token": "<CLS>"},
])
def test_new_special_tokens_get_transformers_ids(update, tmp_path):
    ours, ref = _directory(tmp_path, update)
    assert {t: ours.convert_tokens_to_ids(t) for t in NEW} == {t: ref.convert_tokens_to_ids(t) for t in NEW}
    assert ours.vocab_size == len(ref)


def test_a_new_string_special_token_is_not_normalized(tmp_path):
    ours, ref = _directory(tmp_path, {"image_token": "<IMG>"}, lowercase=True)
    text = "<IMG> Look <img> there"
    assert ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)
    assert ours.encode(text, add_special_tokens=False).count(ours.convert_tokens_to_ids("<IMG>")) == 1


def test_a_named_token_is_special_even_when_its_entry_says_not(tmp_path):
    entry = {"__type": "AddedToken", "content": "<MASK>", "special": False, "lstrip": False, "rstrip": False,
             "normalized": False, "single_word": False}
    ours, ref = _directory(tmp_path, {"mask_token": entry})
    ids = ref.encode("look <MASK> there", add_special_tokens=False)
    assert ours.encode("look <MASK> there", add_special_tokens=False) == ids
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True) == "look  there"
