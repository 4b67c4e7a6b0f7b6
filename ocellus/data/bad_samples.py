"""Bad training samples, found before step 1.

A dataset file is read and every sample is made once (images decoded, conversation encoded) before
training starts. A bad one — no assistant turn, an image that is missing, corrupt, not an image, given by an
absolute path or one leaving the data root, a sample longer than data.max_length — raises InputError naming
the file and the record, or with data.skip_bad_samples is left out and counted by reason: the counts are
printed before step 1 and every skipped record is written to out_dir/bad_samples.json. So no single sample
can stop a run in the middle.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ocellus.errors import InputError

REASONS = {
    "invalid_json": "a .jsonl line that is not JSON",
    "invalid_record": "not a LLaVA record or TRL row (shape, roles, placeholder count)",
    "no_assistant_turn": "a conversation with nothing to train on",
    "absolute_image_path": "an image path that is absolute",
    "image_outside_root": "an image path that resolves outside the data root",
    "missing_image": "an image file that does not exist",
    "bad_image": "an image file that is corrupt, truncated or not an image",
    "too_long": "longer than data.max_length after encoding",
    "invalid_sample": "any other sample error",
}


class BadSample(InputError):
    """One sample that cannot be trained on; `reason` is a key of REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class BadSampleReport:
    """The samples of one dataset file left out by skip_bad_samples, and how many there were in all."""

    source: str
    total: int = 0
    skipped: list[dict] = field(default_factory=list)   # {"where", "reason", "message"}

    def add(self, where: str, error: InputError) -> None:
        self.skipped.append({"where": where, "reason": getattr(error, "reason", "invalid_sample"),
                             "message": str(error)})

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s["reason"] for s in self.skipped).items()))

    def summary(self) -> str:
        by_reason = ", ".join(f"{reason} {n}" for reason, n in self.counts().items()) or "none"
        return (f"{self.source}: skipped {len(self.skipped)} of {self.total} samples (skip_bad_samples): "
                f"{by_reason}")

    def write(self, out_dir) -> Path:
        path = Path(out_dir) / "bad_samples.json"
        path.write_text(json.dumps({"source": self.source, "total": self.total, "skipped": len(self.skipped),
                                    "by_reason": self.counts(), "samples": self.skipped}, indent=1))
        return path


def screen(n: int, make: Callable[[int], object], name: Callable[[int], str], report: BadSampleReport,
           skip: bool) -> list[int]:
    """make(i) once for every i < n, before training: the indices that work. A failing one raises
    InputError naming the file (report.source) and the sample, or with skip=True goes into the report."""
    kept = []
    for i in range(n):
        try:
            make(i)
        except InputError as e:
            if not skip:
                raise InputError(f"{report.source}, {name(i)}: {e} (data.skip_bad_samples: true leaves such "
                                 f"samples out)") from e
            report.add(name(i), e)
        else:
            kept.append(i)
    return kept
