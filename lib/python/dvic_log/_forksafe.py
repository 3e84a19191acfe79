"""A module-wide lock that a forked child gets fresh."""

import os
import threading
from typing import Any


class ForkSafeLock:
    """`with lock:` like threading.Lock. Another thread may hold it at fork time, and in the child
    it would never be released: a child starts with a new lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self._lock.release()
