"""`batchmesh run -v`: the roles' logs live on the run's stderr — a worker's own stderr (an in-process worker's
prints, a command's stderr tail as each item finishes: core.command keeps it even when the command succeeds), the
roles' lifecycle events — one line each, prefixed with the role. Lines already in the logs before the run are
not repeated (the logs are appended to, run after run)."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import TextIO

POLL_S = 0.2


def render(role: str, line: str) -> list[str]:
    """One log line as shown: a JSON event as `role: level msg`, a worker's stderr line by line, text as is."""
    try:
        event = json.loads(line)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        return [f"{role}: {line}"]
    if event.get("event") == "worker.stderr":
        head = f"{role}: {event.get('item')}: stderr of {event.get('command')}:"
        return [head, *(f"{role}:   {text}" for text in str(event.get("stderr", "")).splitlines())]
    extra = {k: v for k, v in event.items() if k not in ("ts", "level", "logger", "msg")}
    detail = " ".join(f"{k}={v}" for k, v in extra.items())
    return [f"{role}: {event.get('level', '')} {event.get('msg', '')}" + (f" {detail}" if detail else "")]


class LogTail:
    """Follows every `*.log` under `log_dir` from where it ends now (files created later: from their start)."""

    def __init__(self, log_dir: Path, out: TextIO | None = None) -> None:
        self.log_dir, self.out = log_dir, out
        self.offsets: dict[Path, int] = {p: p.stat().st_size for p in log_dir.glob("*.log")} if log_dir.is_dir() \
            else {}
        self._partial: dict[Path, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-tail", daemon=True)

    def start(self) -> LogTail:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.pump()  # what the roles wrote while stopping

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self.pump()

    def pump(self) -> int:
        """Print what was appended since the last call; returns the number of lines printed."""
        printed = 0
        if not self.log_dir.is_dir():
            return 0
        out = self.out or sys.stderr  # looked up now: a live progress display redirects sys.stderr
        for path in sorted(self.log_dir.glob("*.log")):
            start = self.offsets.get(path, 0)
            try:
                with path.open("rb") as f:
                    f.seek(start)
                    data = f.read()
            except OSError:
                continue
            if not data:
                continue
            self.offsets[path] = start + len(data)
            *lines, rest = (self._partial.pop(path, b"") + data).split(b"\n")
            if rest:
                self._partial[path] = rest
            for raw in lines:
                if raw.strip():
                    for text in render(path.stem, raw.decode(errors="replace")):
                        out.write(text + "\n")
                        printed += 1
        if printed:
            out.flush()
        return printed
