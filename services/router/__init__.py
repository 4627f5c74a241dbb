"""Routers (the book's ch. 11 event-driven batch): copier, filter, splitter, sharder, merger — each a stage that
reads its input stream(s) with a consumer group and publishes and acknowledges in one step, server-side in Lua
when the decision needs no Python, else through a core commit. And the barriers of ch. 12, join and reduce, which
wait for a whole batch (see barrier.py)."""

from .barrier import Barrier, BarrierPlan
from .base import ROUTERS, DropHook, Router, document, register
from .copier import Copier
from .filter import Filter
from .join import Join
from .merger import Merger
from .reduce import Reduce
from .run import build_barrier, build_router, run_barrier, run_router
from .scripts import Routed, RouteScript
from .sharder import Sharder, shard_hash, shard_of
from .splitter import Splitter

__all__ = [
    "ROUTERS", "Barrier", "BarrierPlan", "Copier", "DropHook", "Filter", "Join", "Merger", "Reduce", "RouteScript",
    "Routed", "Router", "Sharder", "Splitter", "build_barrier", "build_router", "document", "register",
    "run_barrier", "run_router", "shard_hash", "shard_of",
]
