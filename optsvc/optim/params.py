"""Many parameters in one flat buffer, for the multi-tensor optimizer step.

A `ParamStore` holds the weights and gradients of many keys as views into two
flat float32 arrays, in the order the keys were added, so that an optimizer
can update all of them in one pass (`Optimizer.update_store`) while code that
uses the parameters keeps working with ordinary arrays. An optimizer's state
for one store is laid out the same way (`optsvc.optim.state.FlatGroup`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping

import numpy as np

from optsvc.backends import Ops, get_current_ops


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
