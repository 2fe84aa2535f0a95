"""Standard normal noise drawn one sample ahead, on a worker thread: the same numbers, earlier.

A variational optimizer on the CPU spends a large share of a step drawing ε ~ N(0, I) for
every weight (torch's CPU generator is sequential). :class:`PrefetchedNoise` draws the
next sample's ε while the current sample's forward and backward passes run (torch
releases the GIL inside its kernels), into a second set of buffers, when torch's
intra-op threads leave a core free (with every core busy it would only slow them down:
IVON / SGD step time 2.43 with it against 2.20 without, two threads on two cores).

Exact by construction: the worker consumes the generator in the same order and amounts
as drawing on demand, and nothing else touches the generator while a draw is in flight.
:meth:`PrefetchedNoise.settle` waits for the worker and rewinds the generator to its
state before the drawn-ahead block (which is dropped): every other use of the generator
(``optimizer.generator``, ``state_dict``, a draw for other parameters) settles first, so
it sees exactly the state it would have seen without prefetching.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import Tensor

__all__ = ["PrefetchedNoise"]

_EXECUTOR: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _EXECUTOR  # one worker thread for every optimizer of the process
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tacitbayes-noise")
    return _EXECUTOR


def _spare_core() -> bool:
    """Whether a core is left over by torch's intra-op threads (drawing ahead needs one)."""
    return torch.get_num_threads() < (os.cpu_count() or 1)


def _fill(buffers: Sequence[Tensor], generator: torch.Generator) -> None:
    with torch.no_grad():
        for buf in buffers:
            buf.normal_(generator=generator)


class PrefetchedNoise:
    """ε for the parameters ``params`` of a CPU generator, the next block drawn in the background."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self._sets: list[list[Tensor]] | None = None  # two buffer sets, alternating
        self._key: tuple | None = None  # shapes and dtypes the buffers were made for
        self._current = 0
        self._future: Future | None = None
        self._rewind: Tensor | None = None  # generator state before the block in flight

    def take(self, params: Sequence[Tensor]) -> list[Tensor]:
        """ε ~ N(0, I) shaped like each of ``params`` (the next draws of the generator)."""
        key = tuple((tuple(p.shape), p.dtype) for p in params)
        if key != self._key:
            self.settle()
            self._key = key
            self._sets = [[torch.empty(p.shape, dtype=p.dtype) for p in params] for _ in range(2)]
        assert self._sets is not None
        if self._future is not None:  # the block drawn ahead is this sample's
            self._future.result()
            self._future, self._rewind = None, None
            self._current = 1 - self._current
        else:
            self._current = 1 - self._current
            _fill(self._sets[self._current], self.generator)
        if _spare_core():  # else the worker would slow torch's own threads down
            self._rewind = self.generator.get_state()
            self._future = _executor().submit(_fill, self._sets[1 - self._current], self.generator)
        return self._sets[self._current]

    def settle(self) -> None:
        """Wait for a draw in flight, drop it and rewind the generator to before it."""
        if self._future is None:
            return
        try:
            self._future.result()
        finally:
            assert self._rewind is not None
            self.generator.set_state(self._rewind)
            self._future, self._rewind = None, None

    def reset(self) -> None:
        """Settle and free the buffers (after the parameters or the generator changed)."""
        self.settle()
        self._sets, self._key = None, None
