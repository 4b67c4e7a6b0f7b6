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
to come, so nothing is emitted until the character completes (or `flush()` at the end).
Concatenated deltas equal `tokenizer.decode(all_ids, skip_special_tokens=...)` for decoders
whose output over a window does not depend on tokens before it (byte-level BPE, Metaspace,
WordPiece), which is why the window keeps several chunks of left context.
"""

from collections import deque

REPLACEMENT_CHAR = "\ufffd"


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
        if prompt_ids:
            self.ids = [int(i) for i in list(prompt_ids)[-8:]]  # a little context is enough
            self._read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _step(self, final: bool) -> str:
        start = self._chunk_starts[0]
        prefix = self._decode(self.ids[start:self._read_offset])
        window = self._decode(self.ids[start:])
        if len(window) <= len(prefix) or (window.endswith(REPLACEMENT_CHAR) and not final):
            return ""  # nothing new yet (a skipped special token, or half a character)
        self._chunk_starts.append(self._read_offset)
        self._read_offset = len(self.ids)
        return window[len(prefix):]

    def push(self, ids) -> str:
        """Add token id(s); return the text they complete (possibly "")."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        self.ids.extend([ids] if isinstance(ids, int) else [int(i) for i in ids])
        return self._step(final=False)

    def flush(self) -> str:
        """End of stream: return whatever was held back (an incomplete character decodes as U+FFFD)."""
        return self._step(final=True)
