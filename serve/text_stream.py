"""Token ids to streamed text: never a broken character, never any part of a stop string.

Text is decoded from all the ids so far (a byte-level or BPE token can end in the middle of a UTF-8 character,
which decodes to U+FFFD until the next token completes it), cut at the first stop string, and only the part that
can no longer change is released: a trailing replacement character and a tail that could still grow into a stop
string are held back until the next token or the end.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...] = ()):
        self.decode, self.stop = decode, stop
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; the text that is now certain and was not released yet."""
        return self.push_many([token])

    def push_many(self, tokens: list[int]) -> str:
        """Add tokens that arrived together (one decode for all of them); the text now certain and not released."""
        self.ids.extend(tokens)
        text = self._cut(self.decode(self.ids))
        if not self.stopped:
            text = text[: len(text) - self._unsettled_tail(text)]
        return self._release(text)

    def finish(self) -> str:
        """The end: everything not released yet (up to a stop string)."""
        return self._release(self._cut(self.decode(self.ids)))

    @property
    def text(self) -> str:
        return self.sent

    def _cut(self, text: str) -> str:
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return text[:cut]
        return text

    def _unsettled_tail(self, text: str) -> int:
        """Characters at the end that may still change: a partial character, or a prefix of a stop string."""
        hold = len(text) - len(text.rstrip(REPLACEMENT))
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        return hold

    def _release(self, text: str) -> str:
        if not text.startswith(self.sent):  # cannot happen for a prefix-stable decoder; never resend
            return ""
        new, self.sent = text[len(self.sent) :], text
        return new
