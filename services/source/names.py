"""Item-name validation: the one gate between a name from the network and a path on disk.

A name is a relative POSIX path in canonical form (no '.', '..' or empty segments), so one file has exactly one
name and a name can never climb out of the source root. `contained` re-checks after resolving symlinks.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

MAX_NAME_LENGTH = 1024


class InvalidName(ValueError):
    """A name that is not a safe, canonical relative path: the API answers 400."""


def validate_name(name: object) -> str:
    """Return `name` unchanged if it is safe, else raise InvalidName saying why."""
    if not isinstance(name, str):
        raise InvalidName("name must be a string")
    if not name:
        raise InvalidName("name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"name is longer than {MAX_NAME_LENGTH} characters")
    if "\\" in name:
        raise InvalidName("name contains a backslash")
    # Category Cc covers NUL, the C0/C1 controls and DEL: none belongs in a file name sent over HTTP.
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise InvalidName("name contains a control character")
    # Cs: a lone surrogate, which is how Python spells a file name's bytes that are not UTF-8 (surrogateescape).
    if any(unicodedata.category(ch) == "Cs" for ch in name):
        raise InvalidName("name is not valid UTF-8")
    if name.startswith("/"):
        raise InvalidName("name is an absolute path")
    for segment in name.split("/"):
        if segment == "":
            raise InvalidName("name has an empty segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise InvalidName(f"name has a {segment!r} segment")
    return name


def printable(name: str) -> str:
    """A name for a report: bytes that are not UTF-8 as \\xNN, control characters escaped (never raises)."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(ch if unicodedata.category(ch) != "Cc" else ch.encode("unicode_escape").decode() for ch in text)


def contained(root: Path, path: Path) -> Path | None:
    """The resolved `path` if it stays inside the resolved `root` (symlinks followed), else None."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, permission denied, or a symlink loop
        return None
    return resolved if resolved.is_relative_to(root) else None
