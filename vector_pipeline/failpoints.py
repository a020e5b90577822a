"""Named points where a crash test can make the process die, to prove the sync is crash-safe.

Off unless `VECTOR_PIPELINE_FAILPOINT=name` or `name:n` is set; then the n-th time (default 1)
the process passes `name`, it sends itself SIGKILL: no `finally`, no cleanup, no flush, as with
a power cut or the OOM killer. When off, a failpoint costs one comparison.
"""

from __future__ import annotations

import os
import signal

_ENV = "VECTOR_PIPELINE_FAILPOINT"


def _parse(value: str | None) -> tuple[str | None, int]:
    if not value:
        return None, 0
    name, _, count = value.partition(":")
    return name, int(count or 1)


_target, _remaining = _parse(os.environ.get(_ENV))


def failpoint(name: str) -> None:
    global _remaining
    if name != _target:
        return
    _remaining -= 1
    if _remaining == 0:
        os.kill(os.getpid(), signal.SIGKILL)
