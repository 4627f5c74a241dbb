"""Launcher code shared by the router crash tests: with ROUTER_PACE_S=s a router process waits s seconds after each
step that routed something (its next call already in flight under a backlog), so it is still routing when a test
kills it however fast routing is. Prepended to a test's `python -c` launcher."""

PACE = """
import os, time
from services.router.base import Router
pace = float(os.environ.get("ROUTER_PACE_S", "0"))
real_step = Router.step
def step(self, block_ms=0):
    taken = real_step(self, block_ms)
    if taken and pace:
        time.sleep(pace)
    return taken
Router.step = step
"""
