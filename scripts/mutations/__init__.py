"""The mutation record: one realistic one-line bug and the tests that must catch it.

Each `<area>.toml` in this folder is one area of the code (post-training, objectives, generation, ...): one
`[[mutation]]` table per bug with the five fields of `Mutation` (a snippet of several lines reads best as a
'''-string, whose first newline TOML drops). Add one whenever you write or fix a loop: break the code the way a
tired engineer would (a swapped sign, a transposed axis, a dropped gate, an off-by-one shift), and name the
default-run tests that go red. The lists are data, not code: 500 entries of one shape are not duplicated logic,
and a snippet is written out as it stands in the file, never computed.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class Mutation:
    name: str          # short and unique: "ppo: ratio clip range ignored"
    file: str          # path from the repository root
    old: str           # a snippet that occurs exactly once in that file
    new: str           # what it becomes
    tests: list[str]   # pytest node ids / files that must go red (default-run tests, never slow-only ones)

    def apply(self, text: str) -> str:
        return text.replace(self.old, self.new, 1)

    def check_applies(self, root: Path) -> None:
        text = (root / self.file).read_text()
        n = text.count(self.old)
        if n != 1:
            raise SystemExit(f"mutation {self.name!r}: snippet found {n} times in {self.file} (must be once):\n"
                             f"{self.old}")
        if self.old == self.new:
            raise SystemExit(f"mutation {self.name!r}: replacement equals the original")


FIELDS = tuple(f.name for f in fields(Mutation))


def from_toml(path: Path) -> list[Mutation]:
    """The `[[mutation]]` tables of one <area>.toml, each with exactly Mutation's fields (strings; tests a
    non-empty list of strings); anything else stops the check naming the file and the entry."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SystemExit(f"{path}: not valid TOML ({e})") from e
    if set(data) != {"mutation"} or not isinstance(data["mutation"], list):
        raise SystemExit(f"{path}: must hold only [[mutation]] tables, got keys {sorted(data)}")
    out = []
    for i, entry in enumerate(data["mutation"]):
        where = f"{path.name} mutation {i} ({entry.get('name', 'unnamed')!r})"
        if set(entry) != set(FIELDS):
            raise SystemExit(f"{where}: fields must be {list(FIELDS)}, got {sorted(entry)}")
        tests = entry["tests"]
        if not all(isinstance(entry[k], str) for k in FIELDS[:4]) or not isinstance(tests, list) or not tests \
                or not all(isinstance(t, str) for t in tests):
            raise SystemExit(f"{where}: name / file / old / new must be strings and tests a non-empty list of them")
        out.append(Mutation(**entry))
    return out
