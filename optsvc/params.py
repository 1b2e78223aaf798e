"""Many parameters in one flat buffer, for the multi-tensor optimizer step.

A `ParamStore` holds the weights and gradients of many keys as views into two
flat float32 arrays, in the order the keys were added, so that an optimizer
can update all of them in one pass (`Optimizer.update_store`) while code that
uses the parameters keeps working with ordinary arrays. `FlatState` is an
optimizer's state for one store, laid out the same way.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

import numpy as np

from .backends import Ops, get_current_ops
from .backends.ops import TensorParams


class ParamStore:
    """Weights and gradients of many keys, laid out in two flat buffers.

    >>> import numpy as np
    >>> store = ParamStore.from_arrays({(0, "W"): np.ones((2, 3), "f"),
    ...                                 (0, "b"): np.zeros(3, "f")})
    >>> store.weights((0, "W")).shape, store.size, store.offset((0, "b"))
    ((2, 3), 9, 6)
    """

    def __init__(self, shapes: Mapping[Hashable, tuple], ops: Ops | None = None):
        self.ops = ops or get_current_ops()
        self._keys = list(shapes)
        self._shapes = {key: tuple(int(d) for d in shapes[key]) for key in self._keys}
        self._offsets: dict[Hashable, int] = {}
        total = 0
        for key in self._keys:
            self._offsets[key] = total
            total += int(np.prod(self._shapes[key], dtype=np.int64))
        self.size = total
        self.flat_weights = self.ops.alloc((total,))
        self.flat_gradients = self.ops.alloc((total,))
        self._weights = {k: self._view(self.flat_weights, k) for k in self._keys}
        self._gradients = {k: self._view(self.flat_gradients, k) for k in self._keys}

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[Hashable, object], ops: Ops | None = None
    ) -> ParamStore:
        """A store holding copies of `arrays` as its weights (zero gradients)."""
        store = cls({key: np.shape(a) for key, a in arrays.items()}, ops=ops)
        for key, array in arrays.items():
            store._weights[key][...] = store.ops.asarray(array)
        return store

    def _view(self, flat, key):
        start = self._offsets[key]
        size = int(np.prod(self._shapes[key], dtype=np.int64))
        return flat[start : start + size].reshape(self._shapes[key])

    def keys(self) -> list[Hashable]:
        """The keys, in buffer order."""
        return list(self._keys)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._offsets

    def weights(self, key: Hashable):
        """The weights of `key`: a view into `flat_weights`."""
        return self._weights[key]

    def gradient(self, key: Hashable):
        """The gradient of `key`: a view into `flat_gradients`."""
        return self._gradients[key]

    def shape(self, key: Hashable) -> tuple:
        return self._shapes[key]

    def size_of(self, key: Hashable) -> int:
        """The number of parameters of `key`."""
        return int(np.prod(self._shapes[key], dtype=np.int64))

    def offset(self, key: Hashable) -> int:
        """Where `key` starts in the flat buffers."""
        return self._offsets[key]

    def __repr__(self) -> str:
        return f"<ParamStore {len(self._keys)} keys, {self.size} parameters>"


class FlatState:
    """An optimizer's state for the keys of one `ParamStore`, in flat buffers
    laid out like the store's: the moments `m`, `v` and the averages `ema`
    (each `store.size` long, or None until needed), the update count of each
    key (`nr`, int64 on the host), and the tables the multi-tensor kernels
    read (`layout`, `params`). Only keys with parameters have an entry.

    The optimizer's per-key view of a store key (`opt.mom1[key]`,
    `opt.averages[key]`, its update count) points into these buffers, so the
    per-key call and the multi-tensor step share the state.
    """

    def __init__(self, store: ParamStore, ops: Ops, keys: list, offsets, sizes):
        self.store_ref = weakref.ref(store)
        self.ops = ops
        self.size = store.size
        self.keys = keys
        self.slots: list[Any] = []
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.nr = np.zeros(len(keys), dtype=np.int64)
        self.m: Any = None
        self.v: Any = None
        self.ema: Any = None
        self.layout = ops.make_layout(self.offsets, self.sizes)
        self.params = TensorParams(len(keys))
        # Set when another store's state takes over one of these keys: the
        # buffers no longer hold that key's state, and the optimizer lays the
        # state out anew on the next multi-tensor step with this store.
        self.stale = False

    def view(self, flat, index: int):
        """Tensor `index`'s part of one of the flat buffers (1-D)."""
        start = int(self.offsets[index])
        return flat[start : start + int(self.sizes[index])]

    def runs(self, nr) -> list[tuple[int, int]]:
        """[start, stop) ranges of consecutive tensors with equal `nr`."""
        n = len(nr)
        if n == 0:
            return []
        if nr[0] == nr[-1] and (n < 3 or bool((nr == nr[0]).all())):
            return [(0, n)]
        bounds = (np.flatnonzero(nr[1:] != nr[:-1]) + 1).tolist()
        return list(zip([0, *bounds], [*bounds, n]))

    def __repr__(self) -> str:
        return f"<FlatState {len(self.keys)} keys, {self.size} parameters>"
