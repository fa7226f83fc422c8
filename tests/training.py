"""The engine the tests' fixtures train with: `hashrec train`'s default, a pool of one
process a usable core (loky's workers start once and serve every fit of the session), or
under pytest-xdist a worker's share of them. tests/test_engine.py checks that a pool
writes the serial engine's bytes."""

from __future__ import annotations

from functools import cache

from commands.engine import LocalEngine


@cache
def pool() -> LocalEngine:
    """Under pytest-xdist, each worker's share of the cores: two workers each with a pool
    of two processes would put four fits on two cores."""
    import os

    from shared.batching import usable_cores

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return LocalEngine(max(1, usable_cores() // workers))
