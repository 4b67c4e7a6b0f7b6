"""Streaming detokenizer: token ids arrive one (or a few) at a time, text leaves as deltas.

Decoding each token alone is wrong (byte-level BPE splits "🙂" over several tokens, and
SentencePiece-style decoders drop a word's leading space at the start of a string), and
re-decoding everything per token is O(T^2). We follow text-generation-inference's incremental
detokenizer (`decode_token` in its server/text_generation_server/models/model.py): decode a
short window that starts a few emitted chunks back, and emit what the window adds beyond the
already-emitted part of it:

    prefix = decode(ids[prefix_offset:read_offset])   # text already emitted, re-decoded for context
    window = decode(ids[prefix_offset:])
    delta  = window[len(prefix):]                      # held back while it ends in U+FFFD

A trailing U+FFFD means the last token ended inside a UTF-8 sequence; its next bytes are still
to come, so nothing is emitted until the character completes (or `flush()` at the end). Two more
kinds of text can still change when later tokens arrive, and are held back too, so the stream never
shows what the whole decode would not:

- a run of SentencePiece byte-fallback tokens ("<0xE2>", Llama's ByteFallback decoder): the run
  decodes as a whole, and when it is not valid UTF-8 every byte of it becomes U+FFFD, the valid
  ones before the bad byte included ("6" then a lone "<0x8E>" decodes as two U+FFFD, not "6\ufffd");
  the run is settled only when a token of another kind follows;
- with clean_up_tokenization_spaces (WordPiece, Unigram), a tail that may still become " 's", " ."
  and so on, which the clean-up rewrites (the tokenizer's `unsettled_tail`).

Held-back text is released by the next token that settles it, or by `flush()`: the concatenated
deltas equal the whole decode, U+FFFD characters included.
Concatenated deltas equal `tokenizer.decode(all_ids, skip_special_tokens=...)` for decoders
whose output over a window does not depend on tokens before it (byte-level BPE, Metaspace,
WordPiece), which is why the window keeps several chunks of left context.
"""

import re
from collections import deque

REPLACEMENT_CHAR = "\ufffd"
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")   # SentencePiece's byte-fallback pieces


class TextStreamDecoder:
    """Turns a stream of token ids into text deltas.

    tokenizer: anything with `decode(ids, skip_special_tokens=...) -> str` (ocellus' Tokenizer,
    or a transformers tokenizer). context_chunks: how many emitted chunks of left context each
    decode sees; the cost per token is O(those chunks + pending tokens), never O(all tokens).
    prompt_ids: tokens already shown to the user (the prompt); they give the first generated
    tokens their left context (e.g. a leading space) and are never emitted.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = False, context_chunks: int = 4, prompt_ids=None):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        # Start offsets of the last emitted chunks; the oldest is where the decode window starts.
        self._chunk_starts = deque([0], maxlen=max(1, context_chunks))
        self._read_offset = 0  # ids before this have been emitted as text
        self._partial = 0      # characters of the pending ids' text emitted already (before an unsettled tail)
        if prompt_ids:
            self.ids = [int(i) for i in list(prompt_ids)[-8:]]  # a little context is enough
            self._read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _settled(self, window: str, sent: int) -> int:
        """How much of `window` no later token can change (see the module docstring); `sent`: what is emitted."""
        if window.endswith(REPLACEMENT_CHAR) or self._ends_in_byte_run():
            return sent
        tail = getattr(self.tokenizer, "unsettled_tail", None)
        return len(window) - (tail(window) if tail is not None else 0)

    def _ends_in_byte_run(self) -> bool:
        """The last pending token that writes text (a skipped special token writes none) is a byte-fallback one."""
        convert = getattr(self.tokenizer, "convert_ids_to_tokens", None)
        if convert is None:
            return False
        for index in reversed(self.ids[self._read_offset:]):
            token = convert(index)
            if isinstance(token, str) and _BYTE_TOKEN.fullmatch(token):
                return True
            if self._decode([index]):
                return False
        return False

    def _step(self, final: bool) -> str:
        start = self._chunk_starts[0]
        prefix = self._decode(self.ids[start:self._read_offset])
        window = self._decode(self.ids[start:])
        sent = len(prefix) + self._partial      # window[:sent] has been emitted
        end = len(window) if final else self._settled(window, sent)
        if end <= sent:
            return ""  # nothing new yet (a skipped special token, half a character, an unsettled tail)
        if end < len(window):   # part of the new tokens' text: they stay pending
            self._partial = end - len(prefix)
        else:
            self._chunk_starts.append(self._read_offset)
            self._read_offset, self._partial = len(self.ids), 0
        return window[sent:end]

    def push(self, ids) -> str:
        """Add token id(s); return the text they complete (possibly "")."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        self.ids.extend([ids] if isinstance(ids, int) else [int(i) for i in ids])
        return self._step(final=False)

    def flush(self) -> str:
        """End of stream: return whatever was held back (an incomplete character decodes as U+FFFD)."""
        return self._step(final=True)
