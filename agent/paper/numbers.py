"""Every number the paper's prose may show, formatted once by code, and the check that prose invents none.

Prose (from a template or an LLM) names numbers by placeholder, ``{{best_val_bpb}}``; :meth:`NumberBook.fill`
puts in the formatted value. :func:`invented_numbers` lists the digit strings a draft writes itself that are not
one of the run's formatted numbers: a draft with any is refused, so a number in the paper is either in the book
(and so from the run's files) or absent. Small counting words ("two seeds") are words, not digits, and pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PLACEHOLDER = re.compile(r"\{\{([a-z0-9_]+)\}\}")
# a number starts where no letter, digit, point or hyphen precedes it: "INT8", "2019" in a key, "batch-1" are names
DIGITS = re.compile(r"(?<![A-Za-z_\d.\-])[-+]?\d[\d,]*(?:\.\d+)?%?")
# names that contain digits but state no result: pass@k, 2:4 sparsity, INT8 / FP16 (caught by the look-behind)
TECHNICAL = re.compile(r"pass@\d+|\b2:4\b")


@dataclass
class NumberBook:
    """Named, formatted numbers of one run (``values`` keeps the raw value beside its text, for the appendix)."""

    text: dict[str, str] = field(default_factory=dict)
    values: dict[str, float | int] = field(default_factory=dict)

    def add(self, key: str, value: float | int | None, fmt: str = "{:g}") -> None:
        """Record ``key`` (nothing when the run did not measure it: prose that needs it then falls back)."""
        if value is None:
            return
        self.text[key], self.values[key] = fmt.format(value), value

    def has(self, *keys: str) -> bool:
        return all(k in self.text for k in keys)

    def fill(self, prose: str) -> str:
        """``prose`` with each placeholder replaced by its formatted number; an unknown placeholder is an error."""
        unknown = sorted({k for k in PLACEHOLDER.findall(prose) if k not in self.text})
        if unknown:
            raise KeyError(f"placeholders without a number: {', '.join(unknown)}")
        return PLACEHOLDER.sub(lambda m: self.text[m.group(1)], prose)


def invented_numbers(draft: str, book: NumberBook) -> list[str]:
    """Digit strings written into ``draft`` outside placeholders that are not one of the book's numbers."""
    allowed = {d.lstrip("+-").rstrip("%") for t in book.text.values() for d in [t, *DIGITS.findall(t)]}
    bare = TECHNICAL.sub(" ", PLACEHOLDER.sub(" ", draft))
    return [d for d in DIGITS.findall(bare) if d.lstrip("+-").rstrip("%") not in allowed]
