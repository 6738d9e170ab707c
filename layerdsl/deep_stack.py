"""Run a call on a thread with a deep stack: a flat chain of operators (`x + x + ... + x`, up to
`syntax.parser.MAX_CHAIN`) is a tree as deep as it is long, and the passes after parsing recurse over it.

`on_deep_stack(fn)` runs `fn()` on a fresh thread whose stack has room for that, with Python's recursion
limit raised meanwhile, and returns its result or raises its exception; called on such a thread already, it
simply calls `fn()`. The entry points use it: the CLI (`driver.cli`), the language server (`tools.lsp.server`)
and the library's `driver.pipeline.generate`. `threading.stack_size` is restored as soon as the thread has
started, the recursion limit when the last deep call in progress ends.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

RECURSION_LIMIT = 100_000
STACK_BYTES = 1 << 30  # reserved, not used: a thread's stack takes memory as it grows

_deep = threading.local()
_lock = threading.Lock()
_running = 0  # deep calls in progress, on any thread
_limit_before = 0  # the recursion limit before the first of them


def on_deep_stack(fn: Callable[[], T]) -> T:
    """`fn()` on a thread with a deep stack and the recursion limit raised to match, meanwhile."""
    if getattr(_deep, "active", False):
        return fn()
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        _deep.active = True
        try:
            result.append(fn())
        except BaseException as exc:  # raised again on the calling thread
            failure.append(exc)

    _raise_limit()
    try:
        with _lock:
            before = threading.stack_size(STACK_BYTES)
            try:
                worker = threading.Thread(target=target, name="layerdsl", daemon=True)
                worker.start()
            finally:
                threading.stack_size(before)
        worker.join()
    finally:
        _restore_limit()
    if failure:
        raise failure[0]
    return result[0]


def _raise_limit() -> None:
    global _running, _limit_before
    with _lock:
        if _running == 0:
            _limit_before = sys.getrecursionlimit()
            sys.setrecursionlimit(max(_limit_before, RECURSION_LIMIT))
        _running += 1


def _restore_limit() -> None:
    global _running
    with _lock:
        _running -= 1
        if _running == 0:
            sys.setrecursionlimit(_limit_before)
