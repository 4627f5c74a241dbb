"""Routers (the book's ch. 11 event-driven batch): copier, filter, splitter, sharder, merger — each a stage that
reads its input stream(s) with a consumer group and publishes and acknowledges in one step, server-side in Lua
when the decision needs no Python, else through a core commit."""

from .base import ROUTERS, DropHook, Router, document, register
from .copier import Copier
from .filter import Filter
from .merger import Merger
from .run import build_router, run_router
from .scripts import Routed, RouteScript
from .sharder import Sharder, shard_hash, shard_of
from .splitter import Splitter

__all__ = [
    "ROUTERS", "Copier", "DropHook", "Filter", "Merger", "RouteScript", "Routed", "Router", "Sharder", "Splitter",
    "build_router", "document", "register", "run_router", "shard_hash", "shard_of",
]
