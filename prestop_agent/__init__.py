"""prestop-agent: take a pod out of Nacos and its load balancers, prove it, and exit within the budget."""

__version__ = "0.1.0"

import time as _time

# The budget counts from here, the first of our modules the interpreter loads: slow
# imports on a busy node must not push the exit past terminationGracePeriodSeconds.
PROCESS_STARTED = _time.monotonic()
