"""What a long CLI command is doing, on stderr: one line saying what it does (always, so a log
or a CI job shows it too) and, on a terminal, a counter updated in place. stdout stays the
command's result, for pipes and ``--json``."""

from __future__ import annotations

import sys
import time
from typing import TextIO

REFRESH_S = 0.2
"""Least time between two counter updates on a terminal."""


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.count = 0
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self._shown = 0.0
        print(f"{label} ...", file=self.stream, flush=True, end="" if self.live else "\n")

    def advance(self, step: int = 1) -> None:
        self.update(self.count + step)

    def update(self, done: int, total: int | None = None) -> None:
        """Set the count (also usable as a ``progress(done, total)`` callback)."""
        self.count = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if self.live and (now - self._shown >= REFRESH_S or done >= self.total):
            self._shown = now
            print(f"\r{self.label} ... {done}/{self.total}", end="", file=self.stream,
                  flush=True)

    __call__ = update

    def done(self) -> None:
        if self.live:
            print(f"\r{self.label} ... {self.count}/{self.total} done", file=self.stream,
                  flush=True)


def note(message: str) -> None:
    """One line on stderr about slow work that has no count (loading models)."""
    print(message, file=sys.stderr, flush=True)
