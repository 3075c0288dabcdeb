"""
Micro-batching: one worker thread owns the model, and each backbone pass takes the sequences of as many waiting
requests as fit in it.

Callers (the server's request handlers, or the threads OpenRLHF and verl call reward functions from) submit jobs and
wait on a `concurrent.futures.Future`. While the worker runs a pass, new jobs queue up; the next pass takes them all, up
to `max_sequences` sequences. No job waits for others to arrive: a lone request is scored at once, and under load the
passes fill by themselves. Exclusive operations (adding a user) run on the same thread, in submission order, so a
pass never sees a user half-added and every job submitted after an addition has completed sees the new user.
"""

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field


logger = logging.getLogger(__name__)


@dataclass
class ScoreJob:
    """One request's token sequences and their users (`None`: the population), and the future of its result."""

    sequences: list[list[int]]
    user_ids: list[str | None]
    future: Future = field(default_factory=Future)


@dataclass
class _Exclusive:
    function: Callable
    future: Future = field(default_factory=Future)


_STOP = object()


class MicroBatcher:
    """
    Runs `run_batch(jobs)` on a worker thread for groups of queued [`ScoreJob`]s (at most `max_sequences` sequences
    per group, unless a single job holds more); `run_batch` sets each job's future. [`run_exclusive`] runs a function
    alone on the same thread.
    """

    def __init__(self, run_batch: Callable[[list[ScoreJob]], None], max_sequences: int, name: str = "trl-rfm-scoring"):
        self.run_batch = run_batch
        self.max_sequences = max_sequences
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()  # closing and submitting do not interleave: nothing is queued after the stop
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, sequences: list[list[int]], user_ids: list[str | None]) -> Future:
        """Queues a job; its future gets what `run_batch` sets."""
        return self._put(ScoreJob(sequences, user_ids)).future

    def run_exclusive(self, function: Callable) -> Future:
        """Queues `function()` to run alone on the worker thread, after the jobs queued before it."""
        return self._put(_Exclusive(function)).future

    def _put(self, item):
        with self._lock:
            if self._closed:
                raise RuntimeError("The reward engine is closed.")
            self._queue.put(item)
        return item

    def close(self, timeout: float | None = None) -> None:
        """Finishes the queued work, then stops the worker thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    def _loop(self) -> None:
        held = None  # an item taken while filling a batch that must run after it
        while True:
            item = held if held is not None else self._queue.get()
            held = None
            if item is _STOP:
                return
            if isinstance(item, _Exclusive):
                _run_exclusive(item)
                continue
            batch, size = [item], len(item.sequences)
            while size < self.max_sequences:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(following, ScoreJob):
                    held = following
                    break
                batch.append(following)
                size += len(following.sequences)
            self._run(batch)

    def _run(self, batch: list[ScoreJob]) -> None:
        # A job whose caller has gone (cancelled) is dropped; the others are marked running so they cannot be.
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            self.run_batch(batch)
        except BaseException as error:  # the worker must survive whatever one pass raises
            logger.exception("A scoring pass failed")
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)


def _run_exclusive(item: _Exclusive) -> None:
    if not item.future.set_running_or_notify_cancel():
        return
    try:
        item.future.set_result(item.function())
    except BaseException as error:
        item.future.set_exception(error)
