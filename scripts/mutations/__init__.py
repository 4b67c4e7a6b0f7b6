"""The mutation record: one realistic one-line bug and the tests that must catch it.

Each other file in this folder is one area of the code (post-training, objectives, generation, ...) with a list
`MUTATIONS`. Add one whenever you write or fix a loop: break the code the way a tired engineer would (a swapped
sign, a transposed axis, a dropped gate, an off-by-one shift), and name the default-run tests that go red.
"""
from __future__ import annotations

from dataclasses import dataclass
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
