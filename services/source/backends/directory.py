"""Directory backend: one item per regular file under a root, matched by a glob ('*', '**/*.mp4', 'a/*/b.txt')."""

from __future__ import annotations

import base64
import binascii
import bisect
import logging
import mimetypes
import os
import stat
import threading
import time
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import quote_from_bytes

from ..names import InvalidName, contained, printable, validate_name
from .base import FullPage, InvalidCursor, Item, Page, Skipped, SourceBackend, register_backend, skipped_record

log = logging.getLogger(__name__)

WATCHED_DIRS = 64  # a scan of at most this many directories is redone as soon as one of them changes
RESCAN_FACTOR = 10  # a change-triggered scan waits this many times the last scan's duration since it
RACY_NS = 50_000_000  # a directory changed this recently before a scan (mtime ticks are coarse): scanned again


class Glob:
    """A path glob matched segment by segment: '*' stays within a segment, '**' spans zero or more segments.

    The same matcher serves listing and lookup, so `get` never serves a name that `list` would not list.
    """

    def __init__(self, pattern: str) -> None:
        if not pattern or pattern.startswith("/") or "\\" in pattern or ".." in pattern.split("/"):
            raise ValueError(f"bad glob {pattern!r}: a relative pattern without '..' or backslashes")
        self.parts = tuple(p for p in pattern.split("/") if p not in ("", "."))
        # Without '**' nothing deeper than the pattern can match, so the walk stops there.
        self.max_depth = None if "**" in self.parts else len(self.parts) - 1

    def match(self, name: str) -> bool:
        return self._match(tuple(name.split("/")), self.parts)

    def _match(self, parts: tuple[str, ...], pats: tuple[str, ...]) -> bool:
        if not pats:
            return not parts
        if pats[0] == "**":
            return any(self._match(parts[i:], pats[1:]) for i in range(len(parts) + 1))
        return bool(parts) and fnmatchcase(parts[0], pats[0]) and self._match(parts[1:], pats[1:])


def _name(pair: tuple[str, Skipped]) -> str:
    return pair[0]


def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        name = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
        return validate_name(name)
    except (binascii.Error, UnicodeDecodeError, InvalidName, ValueError):
        raise InvalidCursor(f"bad cursor {cursor[:64]!r}: not one this source handed out") from None


@register_backend("directory")
class DirectoryBackend(SourceBackend):
    """Files under `path` matching `glob`, sorted by name; the cursor is the last name returned.

    The sorted name list is cached for `cache_ttl` seconds so walking all pages costs one directory scan plus a
    binary search per page (not a scan per page). A file added, removed or renamed in a scanned directory changes
    that directory's mtime: when the scan visited at most WATCHED_DIRS directories, each request stats them and a
    changed one means a new scan (a new file is listed by the next request, not up to `cache_ttl` later; see
    `_changed` for the bounds). With more directories, files added meanwhile show up once the cache expires.
    Because the cursor is a name, not an index, no file is skipped or repeated when others appear or vanish.
    """

    def __init__(self, path: str | os.PathLike[str], glob: str = "*", cache_ttl: float = 1.0) -> None:
        self.root = Path(path).resolve()
        self._root = str(self.root)
        if not self.root.is_dir():
            raise ValueError(f"source directory {str(path)!r} does not exist or is not a directory")
        self.glob = Glob(glob)
        self.cache_ttl = cache_ttl
        self._names: list[str] = []
        self._unservable_now: list[tuple[str, Skipped]] = []  # sorted by name, from the last scan
        self._scanned_at = float("-inf")
        self._dirs: dict[str, int] | None = None  # directory -> st_mtime_ns before the scan read it (None: too many)
        self._racy, self._scan_s = False, 0.0
        self._lock = threading.Lock()
        self._unservable: set[str] = set()
        self._refused_links: set[str] = set()  # symlinks out of the root (or dangling), warned about once

    def list(self, limit: int, cursor: str | None = None) -> Page:
        items, next_cursor, _ = self.list_page(limit, cursor)
        return items, next_cursor

    def list_page(self, limit: int, cursor: str | None = None) -> FullPage:
        after = decode_cursor(cursor) if cursor is not None else None
        names, unservable = self._snapshot()
        i = bisect.bisect_right(names, after) if after is not None else 0
        items: list[Item] = []
        while i < len(names) and len(items) < limit:
            item = self._item(names[i])
            if item is not None:  # None: deleted (or replaced by something unservable) since the scan
                items.append(item)
            i += 1
        next_cursor = encode_cursor(items[-1]["name"]) if items and i < len(names) else None
        # The page covers the names in (after, its last item] (to the end for the last page): each unservable
        # name is reported by exactly one page of a walk.
        first = bisect.bisect_right(unservable, after, key=_name) if after is not None else 0
        end = bisect.bisect_right(unservable, items[-1]["name"], key=_name) if next_cursor else len(unservable)
        return items, next_cursor, [record for _, record in unservable[first:end]]

    def get(self, name: str) -> Item | None:
        validate_name(name)
        return self._item(name) if self.glob.match(name) else None

    def _snapshot(self) -> tuple[list[str], list[tuple[str, Skipped]]]:
        with self._lock:  # one scan at a time; concurrent requests share its result
            if time.monotonic() - self._scanned_at >= self.cache_ttl or self._changed():
                started = time.monotonic()
                found = self._scan()
                self._names = sorted(name for name in found if self._servable(name))
                self._unservable_now = sorted(
                    ((name, skipped_record(printable(name), "bad-name", reason))
                     for name in found if (reason := self._unservable_reason(name))), key=lambda pair: pair[0])
                self._scanned_at = time.monotonic()
                self._scan_s = self._scanned_at - started
                log.debug("scanned source directory", extra={"root": str(self.root), "files": len(self._names),
                                                             "seconds": round(self._scanned_at - started, 3)})
            return self._names, self._unservable_now

    def _changed(self) -> bool:
        """A directory of the last scan was changed (or vanished) since; False when too many to watch. At most one
        such rescan per RESCAN_FACTOR x the last scan's duration (scans take at most ~10% of the time, however busy the
        directory); a racy scan (see RACY_NS) counts as changed once RACY_NS has passed."""
        age = time.monotonic() - self._scanned_at
        if not self._dirs or age < RESCAN_FACTOR * self._scan_s:
            return False
        if self._racy and age * 1e9 >= RACY_NS:
            return True
        for directory, mtime in self._dirs.items():
            try:
                if os.stat(directory).st_mtime_ns != mtime:
                    return True
            except OSError:
                return True
        return False

    def _scan(self) -> list[str]:
        found: list[str] = []
        dirs: dict[str, int] | None = {}
        racy = False  # a directory changed just before the scan: a change in the same mtime tick would not show
        stack: list[tuple[str, str, int]] = [(str(self.root), "", 0)]  # (directory, its name prefix, depth)
        while stack:
            directory, prefix, depth = stack.pop()
            try:
                if dirs is not None:  # before reading it: a change during the scan shows as changed next time
                    mtime = os.stat(directory).st_mtime_ns
                    racy |= time.time_ns() - mtime <= RACY_NS
                    dirs[directory] = mtime
                    dirs = dirs if len(dirs) <= WATCHED_DIRS else None
                entries = list(os.scandir(directory))
            except OSError as exc:
                log.warning("cannot read source directory", extra={"directory": directory, "error": str(exc)})
                continue
            for entry in entries:
                name = prefix + entry.name
                try:
                    # Symlinked directories are not descended (no loops, no escapes); symlinked files are
                    # checked below and by _item against the resolved root.
                    if entry.is_dir(follow_symlinks=False):
                        if self.glob.max_depth is None or depth < self.glob.max_depth:
                            stack.append((entry.path, name + "/", depth + 1))
                    elif (entry.is_file(follow_symlinks=False) or entry.is_symlink()) and self.glob.match(name):
                        found.append(name)
                except OSError:
                    continue
        self._dirs, self._racy = dirs, racy
        return found

    def _unservable_reason(self, name: str) -> str | None:
        try:
            validate_name(name)
            return None
        except InvalidName as exc:
            return str(exc)

    def _servable(self, name: str) -> bool:
        """Files whose names the API would refuse (backslash, control character, bytes that are not UTF-8) are
        left out of the listing, warned once, and reported as skipped by the page covering them."""
        reason = self._unservable_reason(name)
        if reason is not None and name not in self._unservable:
            self._unservable.add(name)
            log.warning("skipping a file whose name cannot be served",
                        extra={"file": printable(name), "reason": reason})
        return reason is None

    def _refused(self, name: str, path: Path) -> None:
        """Warn once per name (up to a bound) about a symlink that leads out of the root, or nowhere."""
        if name in self._refused_links or len(self._refused_links) >= 100_000 or not path.is_symlink():
            return
        self._refused_links.add(name)
        log.warning("skipping a symlink that leads out of the source directory (or to nothing)",
                    extra={"file": printable(name), "root": str(self.root),
                           "reason": "symlink target is outside the source root or missing"})

    def _item(self, name: str) -> Item | None:
        if "/" not in name:  # right under the resolved root: one lstat says all (~10x cheaper than resolving)
            full = os.path.join(self._root, name)
            try:
                st = os.lstat(full)
            except OSError:
                return None
            if stat.S_ISREG(st.st_mode):  # not a symlink, and no directory on the way that could be one
                return _record(name, full, st)
            if not stat.S_ISLNK(st.st_mode):
                return None
        path = self.root / name
        real = contained(self.root, path)  # follows symlinks: a link out of the root is not served
        if real is None:
            self._refused(name, path)
            return None
        try:
            st = real.stat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return _record(name, str(path), st)


def _record(name: str, path: str, st: os.stat_result) -> Item:
    """The listing's record of a regular file; `path` absolute (the uri is Path(path).as_uri())."""
    return {
        "name": name,
        "size": st.st_size,
        "mtime": st.st_mtime,
        "content_type": mimetypes.guess_type(name)[0] or "application/octet-stream",
        "uri": "file://" + quote_from_bytes(os.fsencode(path)),
        "version": f"{st.st_size}-{st.st_mtime_ns}",
    }

