"""Tests for irrm_jax.prefetch: the same batches as the iterator, the saved position, errors, closing early."""

import json
import threading
import time

import grain
import numpy as np
import pytest

from irrm_jax.parallel import make_data_mesh
from irrm_jax.prefetch import BatchPrefetcher


def numbered_batches() -> grain.DatasetIterator:
    """An endless iterator of {"hr": (2, 4, 4, 3)} batches filled with 0, 1, 2, ... (and the batch number)."""
    ds = grain.MapDataset.range(1_000_000).map(lambda i: {"hr": np.full((2, 4, 4, 3), i, np.float32), "index": i})
    return iter(ds.to_iter_dataset())


class Counting(grain.DatasetIterator):
    """Wraps an iterator, counting the batches taken from it; raises ``error`` at batch ``fail_at`` (from 1)."""

    def __init__(self, parent: grain.DatasetIterator, fail_at: int | None = None, error: Exception | None = None):
        super().__init__(parent)
        self.taken, self.fail_at, self.error = 0, fail_at, error

    def __next__(self):
        self.taken += 1
        if self.taken == self.fail_at:
            raise self.error
        return next(self._parent)

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


def values(batch) -> list[float]:
    """The number each batch of a (stacked) global batch is filled with."""
    array = np.asarray(batch)
    return [float(b[0, 0, 0, 0]) for b in (array if array.ndim == 5 else array[None])]


def test_hands_out_the_iterators_batches_per_call_stacked_or_not():
    mesh = make_data_mesh()
    calls = [range(1, 4), range(4, 7), range(7, 8)]  # 3 + 3 + 1 steps, as `train._calls` gives for 7 steps
    with BatchPrefetcher(numbered_batches(), calls, mesh, stacked=True) as batches:
        got = [next(batches) for _ in calls]
        with pytest.raises(StopIteration):
            next(batches)
    assert [values(b) for b in got] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [b.shape for b in got] == [(3, 2, 4, 4, 3), (3, 2, 4, 4, 3), (1, 2, 4, 4, 3)]
    assert got[0].sharding.mesh == mesh
    with BatchPrefetcher(numbered_batches(), [[1], [2]], mesh, stacked=False) as batches:
        single = list(batches)
    assert [b.shape for b in single] == [(2, 4, 4, 3)] * 2 and [values(b) for b in single] == [[0], [1]]


def test_position_is_after_the_batches_handed_out_while_the_iterator_runs_ahead():
    iterator = Counting(numbered_batches())
    with BatchPrefetcher(iterator, [range(2)] * 10, make_data_mesh(), stacked=True, depth=2) as batches:
        start = json.loads(batches.get_state())
        next(batches)
        deadline = time.monotonic() + 30
        while iterator.taken < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        # Assembled ahead of the loop: the call handed out, two queued and one waiting for room in the queue.
        assert iterator.taken == 8
        position = json.loads(batches.get_state())
    fresh = numbered_batches()
    assert start == json.loads(json.dumps(fresh.get_state()))
    fresh.set_state(position)
    assert next(fresh)["index"] == 2  # the first batch not handed out yet


def test_an_iterator_error_is_raised_by_the_next_that_would_return_its_call():
    iterator = Counting(numbered_batches(), fail_at=3, error=ValueError("corrupt.png: cannot identify image file"))
    with BatchPrefetcher(iterator, [range(2)] * 3, make_data_mesh(), stacked=True) as batches:
        assert values(next(batches)) == [0, 1]
        with pytest.raises(ValueError, match="corrupt.png"):
            next(batches)


def test_close_stops_a_thread_waiting_on_a_full_queue():
    batches = BatchPrefetcher(numbered_batches(), [[1]] * 1000, make_data_mesh(), stacked=False, depth=1)
    next(batches)
    started = time.monotonic()
    batches.close()
    assert time.monotonic() - started < 5
    assert not any(t.name == "batch-prefetch" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="closed"):
        next(batches)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        BatchPrefetcher(numbered_batches(), [], make_data_mesh(), stacked=False, depth=0)
