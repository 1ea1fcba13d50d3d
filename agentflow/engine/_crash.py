"""Named crash points for crash tests.

`AGENTFLOW_CRASH_AT=name:n` makes the n-th time the process reaches `crash_point(name)` kill the
process with SIGKILL (no cleanup, no flush: what a power cut or OOM kill does to a worker). Without
the variable, `crash_point` is a single global test and returns.

The engine's points, in the order a step reaches them:

    after_intent     a side-effecting step's intent is committed; the effect has not run
    after_effect     the activity returned; its result is not committed yet
    after_result     the step's result is committed
    while_waiting    the run was parked (timer, signal, child) and committed as waiting
    during_recovery  a worker took over a run whose owner died, before replaying it
"""

from __future__ import annotations

import os
import signal

_ENV = "AGENTFLOW_CRASH_AT"


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return name, int(count or "1")


_target = _parse(os.environ.get(_ENV))
_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if `AGENTFLOW_CRASH_AT` names this point and hit count."""
    if _target is None:
        return
    if name != _target[0]:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _target[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def configure(spec: str | None) -> None:
    """Set the crash point in this process (tests; the env var is read at import)."""
    global _target
    _target = _parse(spec)
    _hits.clear()
