"""Reading ahead and writing behind: the file work of a tiled prediction in background threads.

GDAL decodes and encodes without holding Python's lock, so while the network runs one tile, the next windows are
read and the finished ones written. Both queues are bounded: memory holds at most ``depth`` windows waiting on each
side, whatever the scene's size. An error in a background thread is raised again in the caller's thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from cnnkit._checks import check_int

__all__ = ["BackgroundWriter", "prefetch"]

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterable[T], load: Callable[[T], R], depth: int = 2) -> Iterator[tuple[T, R]]:
    """``(item, load(item))`` for each item in order, loaded by a background thread at most ``depth`` items ahead.

    Args:
        items: What to load, in the order it is needed (tiles' windows).
        load: Called in the background thread for each item.
        depth: Loaded items waiting at most (the memory bound).

    Examples:
        >>> [value for _, value in prefetch(range(5), lambda i: i * i)]
        [0, 1, 4, 9, 16]
    """
    check_int(depth, "depth")
    waiting: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                value = load(item)
                while not stop.is_set():
                    try:
                        waiting.put((item, value), timeout=0.1)
                        break
                    except queue.Full:
                        continue
            waiting.put(_DONE)
        except BaseException as error:  # raised again in the consumer's thread
            waiting.put(_Failure(error))

    thread = threading.Thread(target=work, name="cnnkit-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            entry = waiting.get()
            if entry is _DONE:
                return
            if isinstance(entry, _Failure):
                raise entry.error
            yield entry
    finally:
        stop.set()
        while thread.is_alive():  # let a blocked producer see the stop
            try:
                waiting.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class BackgroundWriter:
    """Calls submitted functions one at a time, in order, in a background thread; at most ``depth`` wait.

    Use it as a context manager: leaving the block waits for every call and raises the first error (if the block
    itself raised, the calls not yet run are dropped).

    Args:
        depth: Calls waiting at most (:meth:`submit` blocks when the queue is full).

    Examples:
        >>> done = []
        >>> with BackgroundWriter() as writer:
        ...     for i in range(3):
        ...         writer.submit(done.append, i)
        >>> done
        [0, 1, 2]
    """

    def __init__(self, depth: int = 2):
        check_int(depth, "depth")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="cnnkit-write-behind", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is _DONE:
                return
            if self._error is not None:
                continue  # drain: the first error is reported
            fn, args = entry
            try:
                fn(*args)
            except BaseException as error:
                self._error = error

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; raises at once the error of an earlier call, if one failed."""
        if self._error is not None:
            raise self._error
        self._queue.put((fn, args))

    def close(self) -> None:
        """Wait for every queued call; raise the first error."""
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            self._error = self._error or error  # the calls left are skipped
            self._queue.put(_DONE)
            self._thread.join()
            return
        self.close()
