"""Sidecar mode: the agent as a small HTTP server that the app container's ``preStop.httpGet`` calls."""

from prestop_agent.serve.operations import *  # noqa: F403 - one step: the module becomes a package
