"""A tiny byte-level BPE tokenizer trained on MiniGPT-4-like text (" red###Human: ..."), shared by the stop-string
tests (stream / generate / chat and beam search): "#", "##" and "###" are tokens of their own and pieces of others."""
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from ocellus.data.tokenizer import Tokenizer

CORPUS = "a red circle###Human: and a blue square ## # b"


def byte_bpe_tokenizer(special_tokens: list[str], alphabet: list[str], **tokenizer_kw) -> Tokenizer:
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([CORPUS] * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=special_tokens,
                                                               initial_alphabet=alphabet))
    return Tokenizer(raw, special_tokens={"eos_token": "</s>", "pad_token": "<pad>"}, **tokenizer_kw)
