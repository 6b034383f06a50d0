"""The harness's one error: a binary or image could not be built, or the cluster did not come up or go away."""

from __future__ import annotations


class HarnessError(RuntimeError):
    """Something the local cluster needs failed; the message says what and where its log is."""
