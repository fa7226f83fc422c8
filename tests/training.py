"""The engine the tests' fixtures train with: `hashrec train`'s default, a pool of one
process a usable core (loky's workers start once and serve every fit of the session).
Under pytest-xdist too: a worker's pool fills the core the other worker leaves idle while
it waits on a serve tree (a pool of one a worker measured slower, 415 s against 386-394 s
on a clean clone). tests/test_engine.py checks that it writes the serial engine's bytes."""

from __future__ import annotations

from functools import cache

from commands.engine import LocalEngine


@cache
def pool() -> LocalEngine:
    from shared.batching import usable_cores

    return LocalEngine(usable_cores())
