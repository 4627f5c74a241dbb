"""Source backends, registered by name: `directory`, `jsonl`, and `memory` (a stub for tests)."""

from .base import BACKENDS, InvalidCursor, Item, Page, SourceBackend, backend_class, register_backend
from .directory import DirectoryBackend, Glob
from .jsonl import JsonlBackend
from .memory import MemoryBackend

__all__ = [
    "BACKENDS",
    "DirectoryBackend",
    "Glob",
    "InvalidCursor",
    "Item",
    "JsonlBackend",
    "MemoryBackend",
    "Page",
    "SourceBackend",
    "backend_class",
    "register_backend",
]
