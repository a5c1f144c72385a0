"""Split a streamed recipient list (NDJSON or one JSON array) into documents, bounded memory.

The body of ``POST /v1/campaigns/{id}/recipients`` may hold millions of recipients, so it
is never read whole: chunks go in as they arrive, complete documents come out, and only
the unfinished tail is kept. ``ijson`` would do the JSON array part, but a recipient list
is an array of small objects, which a dozen lines of bracket counting split exactly.

Each document carries its position: the 1-based ``line`` of an NDJSON body, or the
0-based ``index`` of an array element. Problems with one document are data (the caller
reports them and goes on; an element or a line too long is one of them); a body that is
not NDJSON or an array at all raises :class:`StreamFormatError`.
:class:`RecipientSplitter` tells the two formats apart from the body itself.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import orjson

MAX_DOCUMENT_BYTES = 1 << 20  # one recipient: 1 MiB is far beyond any sane vars
DECODED_PIECE = 1 << 16  # a compressed body is inflated this many bytes at a time

Format = Literal["ndjson", "array"]


class StreamFormatError(ValueError):
    """The body as a whole is neither NDJSON nor a JSON array of recipients.

    ``documents`` are those completed before the fault by the call that raised it: the
    caller takes them like any others, so that what came before the fault is kept.
    """

    def __init__(self, message: str, documents: list[Document] | None = None) -> None:
        super().__init__(message)
        self.documents: list[Document] = documents or []


class EmptyBodyError(StreamFormatError):
    """The body holds nothing but white space (and a byte order mark)."""


@dataclass(slots=True)  # not frozen: a frozen dataclass is built at a third of the speed
class Document:
    """One recipient's raw JSON, or ``problem`` when it could not be cut out."""

    position: int
    raw: bytes = b""
    problem: str = ""


class NdjsonSplitter:
    """One JSON document per line; blank lines are skipped (but counted)."""

    format: Format = "ndjson"

    def __init__(self, max_document: int = MAX_DOCUMENT_BYTES, *, line: int = 0) -> None:
        self._tail = b""
        self._line = line  # lines read before the first byte fed
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
# A closing brace followed by the next element's ',' or the array's ']'; tried this many
# times for one element before following its structure instead.
_OBJECT_END = re.compile(rb"\}[ \t\r\n]*[,\]]")
_OBJECT_END_TRIES = 4


class JsonArraySplitter:
    """The elements of one top-level JSON array, each cut out by bracket counting (an
    object that is all in the buffer at once in one step, see :meth:`_object_end`: three
    times as fast for a list of small objects).

    Only structure is tracked (depth, strings, escapes); each element is then parsed on
    its own, so a bad element is reported without losing its neighbours. An element
    longer than ``max_document`` is followed to its end without keeping its bytes, and
    reported as too long.
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
        self._oversized = False  # the current element is too long: its bytes are dropped
        self._max = max_document

    def feed(self, data: bytes) -> list[Document]:
        """The elements completed by ``data``; raises :class:`StreamFormatError` (with
        the elements completed before the fault)."""
        out: list[Document] = []
        try:
            self._scan(data, out)
        except StreamFormatError as exc:
            exc.documents = out
            raise
        return out

    def _scan(self, data: bytes, out: list[Document]) -> None:
        self._buf += data
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
            elif (
                char == 0x7B
                and self._depth == 1
                and self._start < 0
                and ((end := self._object_end(buf, pos)) >= 0)
            ):
                self._start = pos  # a whole object: on to the ',' or ']' after it
                pos = end
                continue
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

    def finish(self) -> list[Document]:
        """Raises :class:`StreamFormatError` when the array never closed."""
        if not self._closed:
            raise StreamFormatError(
                f"the JSON array ends early: the body ended in element {self._index} "
                "(counting from 0), before the closing ]"
                if self._depth
                else "the body is empty"
            )
        return []

    def _object_end(self, buf: bytearray, start: int) -> int:
        """Where the ',' or ']' after the object at ``start`` is, found without following
        its structure: at a '}' followed by one, when the bytes up to that '}' parse as
        JSON. They parse only when that '}' is the object's own (before it the object
        would still be open, or a string unterminated). -1 after a few tries, or when the
        object is not all in the buffer yet: the scan follows it character by character.
        """
        search = start
        limit = min(len(buf), start + self._max + 1)
        for _ in range(_OBJECT_END_TRIES):
            m = _OBJECT_END.search(buf, search, limit)
            if m is None:
                return -1
            search = m.start() + 1
            try:
                orjson.loads(buf[start:search])
            except orjson.JSONDecodeError:
                continue
            return m.end() - 1
        return -1

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
        if self._oversized:
            out.append(Document(self._index, problem=f"longer than {self._max} bytes"))
            self._oversized = False
            self._index += 1
            self._start = -1
            return
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
        """Drop what is consumed, and what is scanned of an element past the limit."""
        if self._start >= 0 and self._pos - self._start > self._max:
            self._oversized = True  # _end reports it; only its structure is followed
            self._start = self._pos
        keep = self._start if self._start >= 0 else self._pos
        if keep:
            del self._buf[:keep]
            self._pos -= keep
            if self._start >= 0:
                self._start = 0

    @property
    def closed(self) -> bool:
        """The array's closing bracket has been read."""
        return self._closed


BOM = b"\xef\xbb\xbf"  # UTF-8 byte order mark


class RecipientSplitter:
    """NDJSON or one JSON array, told apart by the body itself, then split.

    A leading UTF-8 byte order mark is dropped, even when it arrives cut over several
    chunks: Windows tools write one, and RFC 8259 §8.1 lets a parser ignore it (kept, it
    would make the first line or the whole array unreadable).

    A body whose first document does not start with ``[`` is NDJSON. One that does is a
    JSON array, unless that array ends on its first line and more documents follow on
    later lines: then the body is NDJSON whose first line is one bad recipient, which
    must not sink the others. Until the body tells, its first line is held (no document
    comes out); ``format`` is final from the first document on. Memory stays bounded: a
    first line longer than ``max_document`` cannot be an NDJSON line, so the body is an
    array as soon as it grows past that, and blank lines are counted, not kept.
    """

    def __init__(self, max_document: int = MAX_DOCUMENT_BYTES) -> None:
        self.format: Format = "ndjson"  # the likely one until the first document
        self._max = max_document
        self._inner: NdjsonSplitter | JsonArraySplitter | None = None
        self._bom = b""  # the body's first bytes, until a BOM is ruled out
        self._started = False  # a BOM is ruled out (or dropped)
        self._head = bytearray()  # the first line, from its '[', while the format is open
        # The first line's array followed as it is held (its documents dropped): whether
        # it ends on that line is known when the line does, without reading it again.
        self._probe: JsonArraySplitter | None = JsonArraySplitter(max_document)
        self._lines = 0  # newlines before the first document
        self._first_line_ended = False  # the first line held a whole array: wait for more
        self._lines_after = 0  # newlines after that array, with only blanks after them
        self._held = b""  # the first line once the format is told: split a piece at a time
        self._held_pos = 0

    def feed(self, data: bytes) -> list[Document]:
        """The documents completed by ``data``; raises :class:`StreamFormatError`."""
        return _joined(self.split(data, None))

    def finish(self) -> list[Document]:
        """The documents held until the end; raises :class:`EmptyBodyError` for a blank
        body, :class:`StreamFormatError` (with those documents) for a broken array."""
        return _joined(self.split_end(None))

    def split(self, data: bytes, piece: int | None) -> Iterator[list[Document]]:
        """The documents completed by ``data``, in lists of those completed by ``piece``
        bytes of it (all at once for None): the caller may do other work between two.
        The first line held until it told the format (up to ``max_document``, 1 MiB, of
        "[1,1,1": some two seconds to split) is split in such pieces too.

        Raises :class:`StreamFormatError` (with the documents completed in that piece).
        """
        step = piece or max(len(data), 1)
        for start in range(0, len(data), step):
            yield self._feed(data[start : start + step])
            yield from self._release(piece)

    def split_end(self, piece: int | None) -> Iterator[list[Document]]:
        """The documents held until the end, as :meth:`split` hands them; raises
        :class:`EmptyBodyError` for a blank body, :class:`StreamFormatError` (with the
        documents completed in the last piece) for a broken array."""
        if self._inner is None and not self._started:
            self._started = True
            yield self._sniff(self._bom)  # a body shorter than a BOM
        if self._inner is None:
            if not self._head:
                raise EmptyBodyError("the body is empty")
            self._become(JsonArraySplitter(self._max), bytes(self._head))
        assert self._inner is not None
        yield from self._release(piece)
        yield self._inner.finish()

    def _feed(self, data: bytes) -> list[Document]:
        if self._inner is not None:
            return self._inner.feed(data)
        if not self._started:
            data = self._bom + data
            if len(data) < len(BOM) and BOM.startswith(data):
                self._bom = data  # maybe the start of a BOM
                return []
            self._started = True
            self._bom = b""
            data = data.removeprefix(BOM)
        return self._sniff(data)

    def _release(self, piece: int | None) -> Iterator[list[Document]]:
        """Split what was held, ``piece`` bytes at a time."""
        while self._held_pos < len(self._held):
            assert self._inner is not None
            end = len(self._held) if piece is None else self._held_pos + piece
            part = self._held[self._held_pos : end]
            self._held_pos += len(part)
            if self._held_pos >= len(self._held):
                self._held, self._held_pos = b"", 0
            yield self._inner.feed(part)

    def _sniff(self, data: bytes) -> list[Document]:
        """Hold the first line until it tells the format; then hand everything over."""
        if not self._head:
            text = data.lstrip()
            self._lines += data.count(b"\n", 0, len(data) - len(text))
            if not text:
                return []
            if text[:1] != b"[":
                return self._become(NdjsonSplitter(self._max, line=self._lines), text)
            self.format = "array"
            data = text
        if not self._first_line_ended:
            end = data.find(b"\n")
            part, data = (data, b"") if end < 0 else (data[:end], data[end:])
            self._head += part
            self._follow(part)
            # Longer than any NDJSON line, or an array that goes on after its first line.
            if len(self._head) > self._max or (end >= 0 and not self._holds_an_array()):
                return self._become(JsonArraySplitter(self._max), bytes(self._head) + data)
            if end < 0:
                return []
            self._first_line_ended = True
        text = data.lstrip()
        self._lines_after += data.count(b"\n", 0, len(data) - len(text))
        if not text:
            return []
        # More after a one-line array: NDJSON, the array its (bad) first line.
        first = Document(self._lines + 1, bytes(self._head).strip())
        line = self._lines + self._lines_after
        return [first, *self._become(NdjsonSplitter(self._max, line=line), text)]

    def _follow(self, part: bytes) -> None:
        """Feed the probe the first line's next part."""
        if self._probe is None:
            return
        try:
            self._probe.feed(part)
        except StreamFormatError:
            self._probe = None  # something after its end: it ended

    def _holds_an_array(self) -> bool:
        """Whether the array that starts the first line ends on it."""
        return self._probe is None or self._probe.closed

    def _become(self, inner: NdjsonSplitter | JsonArraySplitter, data: bytes) -> list[Document]:
        """Split with ``inner`` from now on; ``data`` is held, for :meth:`_release`."""
        self._inner = inner
        self.format = inner.format
        self._head = bytearray()
        self._probe = None
        self._held, self._held_pos = data, 0
        return []


def _joined(lists: Iterator[list[Document]]) -> list[Document]:
    """The documents of ``lists``; a :class:`StreamFormatError` carries all of them."""
    out: list[Document] = []
    try:
        for docs in lists:
            out += docs
    except StreamFormatError as exc:
        exc.documents = out + exc.documents
        raise
    return out


# Content-Encoding -> zlib's wbits: gzip; deflate as HTTP means it (zlib-wrapped; RFC 9110
# §8.4.1.2), or raw deflate as some clients send it anyway (told by the first bytes).
ENCODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


class BodyDecoder:
    """Inflates a body sent with ``Content-Encoding: gzip`` or ``deflate`` as it arrives,
    at most :data:`DECODED_PIECE` bytes at a time, so that a small compressed body that
    inflates to gigabytes costs no more memory than a plain one. Several gzip members one
    after the other (``cat a.gz b.gz``) are one body, as ``gzip -d`` reads them.

    Raises :class:`StreamFormatError` when the body is not in its declared encoding, or
    ends before its compressed stream does.
    """

    def __init__(self, encoding: str) -> None:
        self._wbits = ENCODINGS[encoding]
        self._encoding = encoding
        self._inflater: zlib._Decompress | None = None
        self._head = b""  # deflate: the first bytes, until zlib-wrapped or raw is told

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The inflated bytes of ``data``, in pieces."""
        if self._inflater is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            self._inflater = self._new(data)
        while data:
            try:
                piece = self._inflater.decompress(data, DECODED_PIECE)
            except zlib.error as exc:
                raise StreamFormatError(f"the body is not valid {self._encoding}: {exc}") from None
            if piece:
                yield piece
            data = self._inflater.unconsumed_tail
            if self._inflater.eof and not data:
                data = self._inflater.unused_data.lstrip(b"\0")  # the next member, if any
                if data:
                    self._inflater = self._new(data)

    def finish(self) -> None:
        """Raises :class:`StreamFormatError` when the compressed stream did not end."""
        if self._head or (self._inflater is not None and not self._inflater.eof):
            raise StreamFormatError(
                f"the {self._encoding} body ends early: its compressed stream is cut off"
            )

    def _new(self, start: bytes) -> zlib._Decompress:
        wbits = self._wbits
        if wbits == 15 and (start[0] & 0x0F != 8 or int.from_bytes(start[:2]) % 31):
            wbits = -15  # no zlib header: raw deflate
        return zlib.decompressobj(wbits)
