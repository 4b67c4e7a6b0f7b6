"""Declarative key tables: our parameter names <-> a checkpoint's names.

A table is a list of (ours, theirs) patterns. `{i}` matches a layer number and `{rest}` the
remainder of a dotted name; the same placeholders are filled on the other side. Keys matching a
`drop` pattern are consumed on load and never written (e.g. rotary `inv_freq` buffers older
exports carry). One table serves both directions, so load and save cannot disagree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_PLACEHOLDERS = {"i": r"\d+", "j": r"\d+", "rest": r".+"}


def _compile(pattern: str) -> re.Pattern:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", pattern):
        out += re.escape(pattern[pos:m.start()]) + f"(?P<{m.group(1)}>{_PLACEHOLDERS[m.group(1)]})"
        pos = m.end()
    return re.compile(out + re.escape(pattern[pos:]) + r"\Z")


def _first_rename(rules, name: str) -> str | None:
    """The first (compiled pattern, template) of `rules` whose pattern matches `name`, its placeholders filled
    into the template; None when none matches. Both directions of a KeyMap rename through this."""
    for pattern, template in rules:
        m = pattern.match(name)
        if m:
            return template.format(**m.groupdict())
    return None


@dataclass(frozen=True)
class KeyMap:
    rules: tuple[tuple[str, str], ...]            # (ours, theirs), first match wins
    drop: tuple[str, ...] = ()                    # regexes of checkpoint keys consumed and discarded
    _compiled: list = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self):
        self._compiled.extend((_compile(o), _compile(t), o, t) for o, t in self.rules)

    def to_ours(self, theirs: str) -> str | None:
        return _first_rename(((rt, o) for _, rt, o, _ in self._compiled), theirs)

    def to_theirs(self, ours: str) -> str | None:
        return _first_rename(((ro, t) for ro, _, _, t in self._compiled), ours)

    def dropped(self, theirs: str) -> bool:
        return any(re.search(p, theirs) for p in self.drop)
