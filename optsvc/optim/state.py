"""Where an optimizer keeps its state, key by key, as plain data.

Each key the optimizer has updated has a `_Slot`: its shape, its first and
second moments and its average (flat arrays, None until needed) and its
update count. `optimizer.mom1`, `mom2` and `averages` hold the same arrays by
key, and `optimizer.nr_update` is a read-only view of the counts
(`_UpdateCounts`). For the keys of a `ParamStore` updated with
`update_store` (optsvc.optim.multi_tensor), the state lives in flat buffers laid out
like the store (`FlatState`), and each key's slot is bound to them: its
arrays are views into the buffers and its count is an entry of `FlatState.nr`.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from optsvc.backends import Ops
from optsvc.backends.ops import TensorParams

if TYPE_CHECKING:
    from optsvc.optim.optimizer import Optimizer
    from optsvc.optim.params import ParamStore

KeyT = Hashable


class _Slot:
    """Per-key state: flat moments and average, the shape, the update count.

    A key of a `ParamStore` updated with `update_store` is bound to that
    store's `FlatState` (`group`, `index`): its arrays are views into the
    state's flat buffers and its update count lives in `group.nr`.
    """

    __slots__ = ("shape", "m", "v", "ema", "_nr", "group", "index")

    def __init__(self, shape: tuple) -> None:
        self.shape = shape
        self.m = None
        self.v = None
        self.ema = None
        self._nr = 0
        self.group: FlatState | None = None
        self.index = -1

    @property
    def nr(self) -> int:
        group = self.group
        return self._nr if group is None else int(group.nr[self.index])

    @nr.setter
    def nr(self, value: int) -> None:
        group = self.group
        if group is None:
            self._nr = value
        else:
            group.nr[self.index] = value

    def detach(self) -> None:
        """Keep the update count here, unbound from any FlatState."""
        if self.group is not None:
            self._nr = int(self.group.nr[self.index])
            self.group, self.index = None, -1


class _UpdateCounts(Mapping):
    """`optimizer.nr_update`: key -> number of updates so far (read-only)."""

    __slots__ = ("_opt",)

    def __init__(self, opt: Optimizer) -> None:
        self._opt = opt

    def __getitem__(self, key: KeyT) -> int:
        return self._opt._slots[key].nr

    def __iter__(self) -> Iterator[KeyT]:
        return iter(self._opt._slots)

    def __len__(self) -> int:
        return len(self._opt._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._opt._slots

    def __repr__(self) -> str:
        return repr(dict(self))


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
