"""What every role shares: settings, the work item, the stage runtime, progress, dead letters, metrics, logs."""

from .deadletter import DeadLetter, list_dead_letters, replay
from .embedded import EmbeddedRedis, redis_url
from .guard import CommitError
from .item import MalformedItem, WorkItem
from .keys import Keys
from .progress import DEAD, DONE, FAILED, QUEUED, RUNNING, STATES, Progress
from .settings import Settings
from .stage import Commit, Delivery, StreamConsumer

__all__ = [
    "DEAD", "DONE", "FAILED", "QUEUED", "RUNNING", "STATES", "Commit", "CommitError", "DeadLetter", "Delivery",
    "EmbeddedRedis", "Keys", "MalformedItem", "Progress", "Settings", "StreamConsumer", "WorkItem",
    "list_dead_letters", "redis_url", "replay",
]
