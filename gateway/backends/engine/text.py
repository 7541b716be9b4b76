"""From tokens to text: incremental detokenizing, stop strings, and each token's exact bytes.

A token is not a piece of text: a byte-level BPE token can hold half a UTF-8 character, and a
SentencePiece token's leading space depends on what precedes it. So the text of an answer is
always cut from decodes of *windows* of ids (:class:`IncrementalDetokenizer`, the scheme vLLM and
TGI use), never from single tokens, and nothing is released while it ends in an incomplete
character. Streamed and whole answers are built by the same code, so they are equal.
"""

from __future__ import annotations

import re
from typing import Any

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 5
"""Prompt tokens decoded with the first output tokens, so their leading spaces come out right."""
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode-to-byte table (the inverse of ``bytes_to_unicode``)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


class TokenText:
    """Each token id's text and exact bytes, as logprobs report them."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = repr(getattr(backend, "decoder", None))
        self.style = ("byte-level" if "ByteLevel" in decoder
                      else "sentencepiece" if "ByteFallback" in decoder or "▁" in decoder
                      else "plain")
        self.byte_decoder = _byte_level_decoder() if self.style == "byte-level" else {}
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.cache: dict[int, tuple[str, list[int]]] = {}

    def _bytes(self, token_id: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if not isinstance(piece, str):
            return b""
        if token_id in self.special:
            return piece.encode()
        if self.style == "byte-level" and all(c in self.byte_decoder for c in piece):
            return bytes(self.byte_decoder[c] for c in piece)
        if self.style == "sentencepiece":
            match = _BYTE_TOKEN.fullmatch(piece)
            if match:
                return bytes([int(match.group(1), 16)])
            return piece.replace("▁", " ").encode()
        return str(self.tokenizer.decode([token_id])).encode()

    def get(self, token_id: int) -> tuple[str, list[int]]:
        """``(text, bytes)``: the text has U+FFFD where the bytes are a partial character."""
        known = self.cache.get(token_id)
        if known is None:
            raw = self._bytes(token_id)
            known = (raw.decode("utf-8", errors="replace"), list(raw))
            self.cache[token_id] = known
        return known


class IncrementalDetokenizer:
    """Turns output token ids, one at a time, into text deltas that add up to the answer."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True,
                                         clean_up_tokenization_spaces=False))

    def push(self, token_id: int) -> str:
        """Add one token; the text it completes (empty while a character is incomplete)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) > len(prefix) and not text.endswith(REPLACEMENT):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return text[len(prefix):]
        return ""

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end)."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix):] if len(text) > len(prefix) else ""


class StopMatcher:
    """Finds stop strings in the growing answer and holds back what may begin one.

    The answer's text never includes a stop string: what :meth:`feed` releases is the text up to
    the first stop string, and a suffix that could be the start of one is held until it is
    decided.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.released = 0

    def _held(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.text) - self.released), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def feed(self, delta: str, *, check: bool = True,
             final: bool = False) -> tuple[str, str | None]:
        """Add ``delta``; ``(text to release, the stop string found or None)``.

        ``check=False`` (before ``min_tokens``) releases text without looking for stops.
        ``final`` releases everything held.
        """
        self.text += delta
        if check and self.stops:
            found: tuple[int, str] | None = None
            for stop in self.stops:
                at = self.text.find(stop, self.released)
                if at != -1 and (found is None or at < found[0]):
                    found = (at, stop)
            if found is not None:
                out = self.text[self.released:found[0]]
                self.text = self.text[:found[0]]
                self.released = found[0]
                return out, found[1]
        end = len(self.text) if final or not check else len(self.text) - self._held()
        out = self.text[self.released:end]
        self.released = max(self.released, end)
        return out, None
