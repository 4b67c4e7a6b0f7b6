"""Stop strings on streamed text: the reply ends before the first stop string, and nothing of it is ever shown.

Text arrives in deltas (infer/streaming.TextStreamDecoder's) and a stop string may be split over several, so
a delta is released only up to the longest tail that could still grow into a stop string ("#" and "##" while
"###" is a stop string); that tail waits for the next delta, and `flush()` releases it at the end when no stop
string followed. OpenAI's `stop` works this way (the stop string is not in the answer), and so do the MiniGPT-4
processor's "###" (data/processor.Processor.stop_strings) in `stream`, `ocellus chat` / `generate` and the
server's engine (infer/engine_request.Sequence), one implementation for all of them. StopTokens feeds it a
reply's token ids through the streaming detokenizer: `stream` shows its text, and `generate` (greedy / sampled,
infer/generate.decode_steps) keeps one per row to end that row at the token that completes a stop string, so the
stream and generate stop at the same token. Paths that hold a reply as token ids (beam search, infer/beam.py;
`ocellus explain`, viz/attention_map.py) ask `tokens_before_stop` how many of its tokens to keep.

    cut = StopText(("###",))
    cut.push("red #")    -> "red "    ("#" may begin "###": held back)
    cut.push("# a")      -> "## a"    (it did not)
    cut.push("###Human") -> ""        (a stop string: the reply ends before it)
    cut.flush()          -> ""
"""
from __future__ import annotations

from ocellus.errors import ConfigError
from ocellus.infer.streaming import TextStreamDecoder


class StopText:
    """Cuts a stream of text deltas at the first of `stops` (non-empty strings; none: every delta passes)."""

    def __init__(self, stops=()):
        self.stops = tuple(stops)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""          # everything pushed
        self.sent = 0           # text[:sent] has been released
        self.stopped = False    # a stop string occurred: nothing more is released

    def push(self, piece: str) -> str:
        """Add a delta; -> the text it releases ("" while held back or after a stop)."""
        if self.stopped:
            return ""
        self.text += piece
        # a stop string starts at or after `sent`: any earlier start would have been held back
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._release(min(hits))
        return self._release(len(self.text) - self._held_back())

    def flush(self) -> str:
        """End of the stream: the held-back tail, which no stop string completed."""
        return "" if self.stopped else self._release(len(self.text))

    def _release(self, end: int) -> str:
        out = self.text[self.sent:end]
        self.sent = end
        return out

    def _held_back(self) -> int:
        """Length of the longest unreleased tail that is a proper prefix of a stop string."""
        for k in range(min(self.longest - 1, len(self.text) - self.sent), 0, -1):
            if any(s.startswith(self.text[-k:]) for s in self.stops):
                return k
        return 0


class StopTokens:
    """A reply's token ids, one at a time -> its text, cut before the first of `stops`: the streaming detokenizer's
    deltas (infer/streaming.py: the whole reply's text, partial UTF-8 held back) through a StopText. The text is
    decoded from the reply's first token on, however many tokens a stop string spans."""

    def __init__(self, tokenizer, stops=(), skip_special_tokens: bool = True):
        self.decoder = TextStreamDecoder(tokenizer, skip_special_tokens=skip_special_tokens)
        self.cut = StopText(stops)

    @property
    def stopped(self) -> bool:
        """A stop string has occurred in the text: the tokens pushed so far end the reply."""
        return self.cut.stopped

    def push(self, token: int) -> str:
        """Add the next token; -> the text it releases."""
        return self.cut.push(self.decoder.push([token]))

    def flush(self) -> str:
        """End of the reply: the detokenizer's and the cut's held-back tails."""
        return self.cut.push(self.decoder.flush()) + self.cut.flush()


def cut_at_stop(text: str, stops) -> str:
    """A whole reply up to the first of `stops` (what StopText releases for it in one piece)."""
    cut = StopText(stops)
    return cut.push(text) + cut.flush()


def tokens_before_stop(decode, ids: list[int], stops) -> int | None:
    """How many of a reply's token `ids` come before its first stop string; None when its text `decode(ids)` holds
    none. `decode(ids) -> str` is the text the reply shows. The kept tokens' text is the reply cut before the stop
    string (cut_at_stop), less any token that straddles where the stop string begins, since ids cannot hold part
    of a token: [" red", " #", "##"] with "###" keeps 1, " red" (cut_at_stop shows " red ")."""
    cut = StopText(stops)
    before = cut.push(decode(ids))
    if not cut.stopped:
        return None
    n = len(ids) - 1              # decode(ids) holds the stop string, so the last token is never kept
    while n > 0 and not before.startswith(decode(ids[:n])):
        n -= 1
    return n


def reply_stops(processor, stops=()) -> tuple[str, ...]:
    """A front end's stop strings: the processor's (a template ending turns in plain text, MiniGPT-4's "###";
    a Tokenizer has none), then the user's `stops` (a string or strings), each once."""
    stops = (stops,) if isinstance(stops, str) else tuple(stops or ())
    return tuple(dict.fromkeys(tuple(getattr(processor, "stop_strings", ())) + stops))


__all__ = ["StopText", "StopTokens", "cut_at_stop", "reply_stops", "tokens_before_stop"]


def require_tokenizer(stop_strings, tokenizer) -> None:
    """Stop strings are matched on text: without a tokenizer to decode the ids there is nothing to match
    (ConfigError, for greedy / sampled decoding and beam search alike)."""
    if stop_strings and tokenizer is None:
        raise ConfigError("stop_strings need a tokenizer: pass tokenizer=... to generate")
