"""The training loop's batches, assembled on a background thread while the device runs the current call.

    calls = [range(1, 11), range(11, 21)]                       # the steps of each jitted call
    with BatchPrefetcher(train_iterator, calls, mesh, stacked=True) as batches:
        for steps in calls:
            hr = next(batches)                                   # (len(steps), global batch, H, W, 3) on the mesh
            ...
            checkpointer.save(step, state, batches, config)      # saves the position after the batches taken

A thread pulls each call's local batches from the grain iterator, stacks them (``stacked``: for
`irrm_jax.train.make_multi_step`) and puts them on the mesh (`input_pipeline.to_global_batch(es)`): ``depth``
calls queued ahead of the loop and one more waiting for room. A call of several steps returns only when its
loop has finished, so without the thread the next call's batches would be assembled while the device waits.

The iterator is then ahead of training, so `get_state` gives the position after the batches handed out so far:
pass the prefetcher, not the iterator, to `irrm_jax.checkpointing.Checkpointer.save`. An error of the iterator
(a corrupt image, say) is raised by the ``next`` that would have returned its call's batches.
"""

import json
import queue
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import grain
import jax

from irrm_jax import input_pipeline

_POLL_S = 0.1  # how often a thread waiting on a full queue looks whether it should stop


class BatchPrefetcher:
    """Global ``"hr"`` batches for each call in ``calls`` (step ranges), assembled ahead; see the module doc."""

    def __init__(
        self,
        iterator: grain.DatasetIterator,
        calls: Iterable[Sequence[int]],
        mesh: jax.sharding.Mesh,
        *,
        stacked: bool,
        depth: int = 2,
    ):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}.")
        self._iterator, self._mesh, self._stacked = iterator, mesh, stacked
        self._position = iterator.get_state()  # taken before the thread touches the iterator
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(list(calls),), name="batch-prefetch", daemon=True)
        self._thread.start()

    def _fill(self, calls: list[Sequence[int]]) -> None:
        try:
            for steps in calls:
                local = [next(self._iterator)["hr"] for _ in steps]
                if self._stacked:
                    batch = input_pipeline.to_global_batches(local, self._mesh)
                else:
                    batch = input_pipeline.to_global_batch(local[0], self._mesh)
                if not self._put((batch, self._iterator.get_state())):
                    return
        except Exception as error:  # handed to the consumer, which raises it
            self._put(error)

    def _put(self, item: Any) -> bool:
        """Queues ``item`` unless the prefetcher is closed first; returns whether it was queued."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> "BatchPrefetcher":
        return self

    def __next__(self) -> jax.Array:
        if self._stop.is_set():
            raise RuntimeError("The BatchPrefetcher is closed.")
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise StopIteration from None  # every call's batches were handed out
        if isinstance(item, Exception):
            raise item
        batch, self._position = item
        return batch

    def get_state(self) -> bytes:
        """The iterator's position after the batches handed out so far, as grain's checkpoint handler stores it
        (JSON; it restores into the iterator with ``set_state``)."""
        return json.dumps(self._position).encode()

    def close(self) -> None:
        """Stops the thread (it finishes the call it is assembling, so close the iterator only after this)."""
        self._stop.set()
        while True:  # unblocks a thread waiting on a full queue at once
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> "BatchPrefetcher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
