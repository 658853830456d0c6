"""ContextFlag: a flag that is on for the duration of a with-block, per thread and per asyncio task."""
from __future__ import annotations

import contextlib
import contextvars


class ContextFlag:
    """Off outside `with flag.raised():`, on inside. It lives in a ContextVar, so a compile on one thread does not
    change what another thread sees."""

    __slots__ = ("_var", "is_set")

    def __init__(self, name: str):
        self._var = contextvars.ContextVar(name, default=False)
        self.is_set = self._var.get  # (a C call, no Python frame: launches read it on the hot path)

    @contextlib.contextmanager
    def raised(self):
        token = self._var.set(True)
        try:
            yield
        finally:
            self._var.reset(token)
