"""The source ambassador (work queue, ch. 10): lists work items over REST for the manager.

Backends (`directory`, `jsonl`, ...) are plug-ins registered by name; a filter wraps any of them.
"""

from .app import create_app
from .backends import InvalidCursor, SourceBackend, register_backend
from .filter import FilteredBackend
from .names import InvalidName, validate_name
from .server import build_backend, serve

__all__ = [
    "FilteredBackend",
    "InvalidCursor",
    "InvalidName",
    "SourceBackend",
    "build_backend",
    "create_app",
    "register_backend",
    "serve",
    "validate_name",
]
