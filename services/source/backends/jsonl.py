"""JSONL backend: one item per line of a file, named by its `name` (or `id`) field."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import zlib
from pathlib import Path
from typing import BinaryIO

from services.core import strict_json

from ..names import InvalidName, validate_name
from .base import FullPage, InvalidCursor, Item, Page, Skipped, SourceBackend, register_backend, skipped_record

log = logging.getLogger(__name__)
_CURSOR = re.compile(r"(\d{1,18})-(\d{1,18})")


def _unencodable(obj: object) -> bool:
    """True if no UTF-8 response could carry `obj` (it holds a lone surrogate)."""
    try:
        json.dumps(obj, ensure_ascii=False).encode()
        return False
    except UnicodeEncodeError:
        return True


@register_backend("jsonl")
class JsonlBackend(SourceBackend):
    """Lines in file order. The cursor is '<lines read>-<byte offset>' of the next line, so each page is a seek
    and a read of that page only (walking a million lines is linear, not quadratic), and appending lines while
    a walk is under way is safe. Malformed lines are skipped, counted in `malformed`, and warned about once.
    Names should be unique; `get` returns the first line with the name.
    """

    def __init__(self, path: str | os.PathLike[str], glob: str | None = None) -> None:
        if glob not in (None, "*"):  # the spec's default glob is accepted so `source.type` alone can switch
            raise ValueError(f"glob {glob!r} does not apply to a jsonl source")
        self.path = Path(path).resolve()
        if not self.path.is_file():
            raise ValueError(f"source file {str(path)!r} does not exist or is not a file")
        self._bad: set[tuple[int, int]] = set()  # (line number, crc of the line): warn once per bad line
        self._index: dict[str, int] = {}
        self._index_key: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    @property
    def malformed(self) -> int:
        """How many distinct malformed lines were seen (a line fixed in place counts again if it breaks again)."""
        return len(self._bad)

    def list(self, limit: int, cursor: str | None = None) -> Page:
        items, next_cursor, _ = self.list_page(limit, cursor)
        return items, next_cursor

    def list_page(self, limit: int, cursor: str | None = None) -> FullPage:
        skipped: list[Skipped] = []  # the malformed lines of this page's range
        with self.path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            lineno, pos = self._decode(cursor, f, size) if cursor is not None else (0, 0)
            f.seek(pos)
            items: list[Item] = []
            while len(items) < limit:
                raw = f.readline()
                if not raw:
                    break
                lineno += 1
                pos += len(raw)
                item = self._parse(raw, lineno, skipped=skipped)
                if item is not None:
                    items.append(item)
        return items, (f"{lineno}-{pos}" if len(items) == limit and pos < size else None), skipped

    def get(self, name: str) -> Item | None:
        validate_name(name)
        with self.path.open("rb") as f:
            offset = self._lookup(f).get(name)
            if offset is None:
                return None
            f.seek(offset)
            item = self._parse(f.readline(), 0, warn=False)
        # A mismatch means the file changed under us since the index was built: treat the item as absent.
        return item if item is not None and item["name"] == name else None

    def _decode(self, cursor: str, f: BinaryIO, size: int) -> tuple[int, int]:
        m = _CURSOR.fullmatch(cursor)
        if m is None:
            raise InvalidCursor(f"bad cursor {cursor[:64]!r}: expected '<line>-<offset>' from a previous page")
        lineno, pos = int(m[1]), int(m[2])
        if pos > size:
            raise InvalidCursor(f"bad cursor {cursor!r}: past the end of the file (was it truncated?)")
        if pos > 0:  # a valid cursor points just after a newline
            f.seek(pos - 1)
            if f.read(1) != b"\n":
                raise InvalidCursor(f"bad cursor {cursor!r}: not at the start of a line (was the file rewritten?)")
        return lineno, pos

    def _lookup(self, f: BinaryIO) -> dict[str, int]:
        """name -> byte offset, rebuilt when the file's identity, size or mtime changes."""
        st = os.fstat(f.fileno())
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key != self._index_key:
                index: dict[str, int] = {}
                pos, lineno = 0, 0
                for raw in f:
                    lineno += 1
                    item = self._parse(raw, lineno)
                    if item is not None:
                        index.setdefault(item["name"], pos)
                    pos += len(raw)
                self._index, self._index_key = index, key
            return self._index

    def _parse(self, raw: bytes, lineno: int, warn: bool = True, skipped: list[Skipped] | None = None) -> Item | None:
        item = self._parse_line(raw, lineno, warn)
        if isinstance(item, str):
            if skipped is not None:
                skipped.append(skipped_record(f"line {lineno}", "malformed", item))
            return None
        return item

    def _parse_line(self, raw: bytes, lineno: int, warn: bool) -> Item | str | None:
        """The item, None for a blank or unfinished line, or why the line is malformed."""
        text = raw.strip()
        if not text:
            return None
        try:
            obj = strict_json.loads_foreign(text)  # NaN -> "NaN" (core.strict_json's rule), never null
        except ValueError:  # also UnicodeDecodeError
            if not raw.endswith(b"\n"):  # a last line still being written: not an error yet
                return None
            return self._malformed(raw, lineno, "not valid JSON", warn)
        if not isinstance(obj, dict):
            return self._malformed(raw, lineno, "not a JSON object", warn)
        name = obj.get("name", obj.get("id"))
        if isinstance(name, int) and not isinstance(name, bool):
            name = str(name)
        if not isinstance(name, str):
            return self._malformed(raw, lineno, "no string 'name' (or 'id') field", warn)
        try:
            validate_name(name)
        except InvalidName as exc:
            return self._malformed(raw, lineno, f"bad name: {exc}", warn)
        if b"\\ud" in raw.lower() and _unencodable(obj):  # a "\\udcXX" escape decodes to a lone surrogate
            return self._malformed(raw, lineno, "a string is not valid Unicode (a lone surrogate escape)", warn)
        return {**obj, "name": name}

    def _malformed(self, raw: bytes, lineno: int, reason: str, warn: bool) -> str:
        key = (lineno, zlib.crc32(raw))
        if warn and key not in self._bad:
            self._bad.add(key)
            log.warning("skipping malformed line %d of %s: %s", lineno, self.path, reason,
                        extra={"line": lineno, "file": str(self.path), "reason": reason})
        return reason
