"""Split a streamed recipient list (NDJSON or one JSON array) into documents, bounded memory.

The body of ``POST /v1/campaigns/{id}/recipients`` may hold millions of recipients, so it
is never read whole: chunks go in as they arrive, complete documents come out, and only
the unfinished tail is kept. ``ijson`` would do the JSON array part, but a recipient list
is an array of small objects, which a dozen lines of bracket counting split exactly.

Each document carries its position: the 1-based ``line`` of an NDJSON body, or the
0-based ``index`` of an array element. Problems with one document are data (the caller
reports them and goes on); a body that is not NDJSON or an array at all raises
:class:`StreamFormatError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MAX_DOCUMENT_BYTES = 1 << 20  # one recipient: 1 MiB is far beyond any sane vars

Format = Literal["ndjson", "array"]


class StreamFormatError(ValueError):
    """The body as a whole is neither NDJSON nor a JSON array of recipients."""


@dataclass(frozen=True, slots=True)
class Document:
    """One recipient's raw JSON, or ``problem`` when it could not be cut out."""

    position: int
    raw: bytes = b""
    problem: str = ""


class NdjsonSplitter:
    """One JSON document per line; blank lines are skipped (but counted)."""

    format: Format = "ndjson"

    def __init__(self, max_document: int = MAX_DOCUMENT_BYTES) -> None:
        self._tail = b""
        self._line = 0
        self._skipping = False  # inside an over-long line: drop until its end
        self._max = max_document

    def feed(self, data: bytes) -> list[Document]:
        """The documents completed by ``data``."""
        out: list[Document] = []
        parts = data.split(b"\n")
        parts[0] = self._tail + parts[0]
        self._tail = parts.pop()
        for part in parts:
            self._line += 1
            if self._skipping:
                self._skipping = False
                continue
            self._emit(part, out)
        if len(self._tail) > self._max and not self._skipping:
            self._skipping = True
            out.append(Document(self._line + 1, problem=self._too_long()))
            self._tail = b""
        elif self._skipping:
            self._tail = b""
        return out

    def finish(self) -> list[Document]:
        """The last line, if the body did not end with a newline."""
        out: list[Document] = []
        if self._tail and not self._skipping:
            self._line += 1
            self._emit(self._tail, out)
        self._tail = b""
        return out

    def _emit(self, line: bytes, out: list[Document]) -> None:
        line = line.strip()
        if not line:
            return
        if len(line) > self._max:
            out.append(Document(self._line, problem=self._too_long()))
        else:
            out.append(Document(self._line, line))

    def _too_long(self) -> str:
        return f"longer than {self._max} bytes"


# Characters that matter outside strings, and inside them.
_STRUCTURE = re.compile(rb'[\[\]{}",]')
_IN_STRING = re.compile(rb'["\\]')


class JsonArraySplitter:
    """The elements of one top-level JSON array, each cut out by bracket counting.

    Only structure is tracked (depth, strings, escapes); each element is then parsed on
    its own, so a bad element is reported without losing its neighbours.
    """

    format: Format = "array"

    def __init__(self, max_document: int = MAX_DOCUMENT_BYTES) -> None:
        self._buf = bytearray()
        self._pos = 0  # scan position in _buf
        self._start = -1  # start of the current element in _buf, -1 between elements
        self._depth = 0  # 0: before '[', 1: inside the array, >1: inside an element
        self._in_string = False
        self._escaped = False
        self._index = 0
        self._closed = False
        self._max = max_document

    def feed(self, data: bytes) -> list[Document]:
        """The elements completed by ``data``; raises :class:`StreamFormatError`."""
        self._buf += data
        out: list[Document] = []
        buf = self._buf
        pos = self._pos
        while pos < len(buf):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                    pos += 1
                    continue
                m = _IN_STRING.search(buf, pos)
                if m is None:
                    pos = len(buf)
                    break
                pos = m.start()
                if buf[pos] == 0x5C:  # backslash
                    self._escaped = True
                else:
                    self._in_string = False
                pos += 1
                continue
            m = _STRUCTURE.search(buf, pos)
            gap_end = m.start() if m else len(buf)
            self._check_gap(buf, pos, gap_end)
            if m is None:
                pos = len(buf)
                break
            pos = m.start()
            char = buf[pos]
            if self._closed:
                raise StreamFormatError("data after the end of the JSON array")
            if self._depth == 0:
                if char != 0x5B:  # '['
                    raise StreamFormatError("the body is neither NDJSON nor a JSON array")
                self._depth = 1
            elif char == 0x22:  # '"'
                self._in_string = True
                self._begin(pos)
            elif char in (0x5B, 0x7B):  # '[' '{'
                self._begin(pos)
                self._depth += 1
            elif char in (0x5D, 0x7D):  # ']' '}'
                self._depth -= 1
                if self._depth == 0:
                    self._end(buf, pos, out)
                    self._closed = True
            elif char == 0x2C and self._depth == 1:  # ',' between elements
                self._end(buf, pos, out)
            pos += 1
        self._pos = pos
        self._compact()
        return out

    def finish(self) -> list[Document]:
        """Raises :class:`StreamFormatError` when the array never closed."""
        if not self._closed:
            raise StreamFormatError(
                f"the JSON array ends early (after element {self._index - 1})"
                if self._depth
                else "the body is empty"
            )
        return []

    def _check_gap(self, buf: bytearray, start: int, end: int) -> None:
        """Bytes between structural characters: only an element's scalars may be there."""
        if start >= end:
            return
        if self._depth <= 1 and self._start < 0 and buf[start:end].strip():
            if self._depth == 0 or self._closed:
                raise StreamFormatError("the body is neither NDJSON nor a JSON array")
            self._begin(start + (len(buf[start:end]) - len(buf[start:end].lstrip())))

    def _begin(self, pos: int) -> None:
        if self._depth == 1 and self._start < 0:
            self._start = pos

    def _end(self, buf: bytearray, pos: int, out: list[Document]) -> None:
        if self._start < 0:
            if buf[pos] == 0x2C:  # an empty slot: '[,' or ',,'
                out.append(Document(self._index, problem="empty element"))
                self._index += 1
            return
        raw = bytes(buf[self._start : pos]).strip()
        if len(raw) > self._max:
            out.append(Document(self._index, problem=f"longer than {self._max} bytes"))
        else:
            out.append(Document(self._index, raw))
        self._index += 1
        self._start = -1

    def _compact(self) -> None:
        """Drop what is consumed; refuse an element that grows past the limit."""
        keep = self._start if self._start >= 0 else self._pos
        if keep:
            del self._buf[:keep]
            self._pos -= keep
            if self._start >= 0:
                self._start = 0
        if self._start >= 0 and len(self._buf) > self._max + 1024:
            raise StreamFormatError(f"element {self._index} is longer than {self._max} bytes")


BOM = b"\xef\xbb\xbf"  # UTF-8 byte order mark


class RecipientSplitter:
    """NDJSON or one JSON array, told apart by the body's first byte, then split.

    A leading UTF-8 byte order mark is dropped, even when it arrives cut over several
    chunks: Windows tools write one, and RFC 8259 §8.1 lets a parser ignore it (kept, it
    would make the first line or the whole array unreadable).
    """

    def __init__(self, max_document: int = MAX_DOCUMENT_BYTES) -> None:
        self.format: Format = "ndjson"
        self._max = max_document
        self._inner: NdjsonSplitter | JsonArraySplitter | None = None
        self._head = b""  # the body's first bytes, until a BOM is ruled out

    def feed(self, data: bytes) -> list[Document]:
        """The documents completed by ``data``; raises :class:`StreamFormatError`."""
        if self._inner is not None:
            return self._inner.feed(data)
        data = self._head + data
        text = data.removeprefix(BOM).lstrip()
        if not text or BOM.startswith(data):  # blank so far, or maybe the start of a BOM
            self._head = data
            return []
        self._inner = (
            JsonArraySplitter(self._max) if text[:1] == b"[" else NdjsonSplitter(self._max)
        )
        self.format = self._inner.format
        self._head = b""
        return self._inner.feed(data.removeprefix(BOM))

    def finish(self) -> list[Document]:
        """Raises :class:`StreamFormatError` for a body that is blank or ends early."""
        if self._inner is None:
            raise StreamFormatError("the body is empty")
        return self._inner.finish()


def splitter_for(first_bytes: bytes) -> RecipientSplitter:
    """A splitter whose ``format`` already is the one the body's ``first_bytes`` tell.

    For a caller that reads ``format`` before feeding (it then feeds ``first_bytes`` too).
    """
    splitter = RecipientSplitter()
    probe = RecipientSplitter()
    probe.feed(first_bytes)
    splitter.format = probe.format
    return splitter
