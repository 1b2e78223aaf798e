"""An optimizer's state, in one owner: `OptimizerState`.

Each key the optimizer has updated has a `KeySlot`, bound to a `FlatGroup`
for the keys of a `ParamStore` updated with `update_store`. `OptimizerState`
keeps the slots and the groups, RAdam's shared memo and the backend the
arrays live on; it lays the state out for a store, moves it between devices
and turns it into host arrays and back (`to_arrays` / `from_arrays`, for
`optsvc.optim.serialize`). `optimizer.mom1`, `mom2`, `averages` and
`nr_update` are read-only views of the slots (`SlotView`), never copies.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Iterable, Iterator, Mapping
from operator import attrgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from optsvc.backends import Ops, TensorParams
from optsvc.errors import StateError
from optsvc.optim.step import new_radam_buffer

if TYPE_CHECKING:
    from optsvc.optim.params import ParamStore

KeyT = Hashable


def shape_conflict(key: KeyT, old: tuple, new: tuple, where: str = "") -> ValueError:
    """The error for a key updated with another shape than its first one."""
    return ValueError(
        f"key {key!r} was first used with shape {old}, now with {new}{where}; "
        "each parameter needs its own key"
    )


def device_mismatch(subject: str, device: str, ops: Ops, what: str) -> ValueError:
    """The error for arrays that are not where the optimizer's state is:
    `subject` "is"/"are" on `device`; the fix is to move `what`."""
    return ValueError(
        f"{subject} on {device}, but the optimizer's state is on "
        f"{ops.device_name}; move {what}, or call optimizer.to_gpu() / "
        "optimizer.to_cpu() first"
    )


class KeySlot:
    """One key's state: the shape and size of its parameter, its flat
    moments `m`, `v` and average `ema` (None until needed), its update count.

    A key of a `ParamStore` updated with `update_store` is bound to that
    store's `FlatGroup` (`group`, `index`): its arrays are views into the
    group's flat buffers and its update count lives in `group.nr`.
    """

    __slots__ = ("shape", "size", "m", "v", "ema", "_nr", "group", "index")

    def __init__(self, shape: tuple, size: int) -> None:
        self.shape = shape
        self.size = size
        self.m = None
        self.v = None
        self.ema = None
        self._nr = 0
        self.group: FlatGroup | None = None
        self.index = -1

    @property
    def nr(self) -> int:
        """How many times the key was updated."""
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
        """Keep the update count here, unbound from any FlatGroup."""
        if self.group is not None:
            self._nr = int(self.group.nr[self.index])
            self.group, self.index = None, -1


class FlatGroup:
    """The state of the keys of one `ParamStore`, in flat buffers laid out
    like the store's: the moments `m`, `v` and the averages `ema` (each
    `store.size` long, or None until needed), the update count of each key
    (`nr`, int64 on the host), and the tables the multi-tensor kernels read
    (`layout`, `params`). Only keys with parameters have an entry.
    """

    def __init__(self, store: ParamStore, ops: Ops, keys: list, offsets, sizes):
        self.store_ref = weakref.ref(store)
        self.ops = ops
        self.size = store.size
        self.keys = keys
        self.slots: list[KeySlot] = []
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.nr = np.zeros(len(keys), dtype=np.int64)
        self.m: Any = None
        self.v: Any = None
        self.ema: Any = None
        self.layout = ops.make_layout(self.offsets, self.sizes)
        self.params = TensorParams(len(keys))
        # Set when another store's group takes over one of these keys: the
        # buffers no longer hold that key's state, and the state is laid out
        # anew on the next multi-tensor step with this store.
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
        return f"<FlatGroup {len(self.keys)} keys, {self.size} parameters>"


class SlotView(Mapping):
    """A read-only mapping over the slots of an OptimizerState: key -> the
    slot's `attr` (shaped like the parameter with `shaped`), for the keys
    whose slot has one. `optimizer.mom1`, `mom2`, `averages` and `nr_update`
    are such views: the arrays are the state, never copies."""

    __slots__ = ("_slots", "_get", "_shaped")

    def __init__(
        self, slots: dict[KeyT, KeySlot], attr: str, *, shaped: bool = False
    ) -> None:
        self._slots = slots
        self._get = attrgetter(attr)
        self._shaped = shaped

    def __getitem__(self, key: KeyT):
        slot = self._slots[key]
        found = self._get(slot)
        if found is None:
            raise KeyError(key)
        return found.reshape(slot.shape) if self._shaped else found

    def __iter__(self) -> Iterator[KeyT]:
        get = self._get
        return (key for key, slot in self._slots.items() if get(slot) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return repr(dict(self))


class SlotRecord(NamedTuple):
    """What `to_arrays` says of one key besides its arrays."""

    key: KeyT
    shape: tuple
    nr: int


class OptimizerState:
    """All of an optimizer's state: per-key slots (`slots`, in the order the
    keys were first updated), their flat groups for parameter stores, RAdam's
    shared memo (`radam_buffer`) and the backend the arrays live on (`ops`,
    None until the first update). Read it through the views (`mom1`, `mom2`,
    `averages`, `nr_update`); change it through the methods.
    """

    def __init__(
        self,
        *,
        use_averages: bool,
        ops: Ops | None = None,
        radam_buffer: list[list] | None = None,
    ) -> None:
        self.ops = ops
        self.use_averages = bool(use_averages)
        self.slots: dict[KeyT, KeySlot] = {}
        self.radam_buffer = new_radam_buffer() if radam_buffer is None else radam_buffer
        # id(store) -> the group of that ParamStore's keys
        self._groups: dict[int, FlatGroup] = {}
        self.mom1 = SlotView(self.slots, "m")
        self.mom2 = SlotView(self.slots, "v")
        self.averages = self._averages_view()
        self.nr_update = SlotView(self.slots, "nr")

    def _averages_view(self) -> SlotView | None:
        return SlotView(self.slots, "ema", shaped=True) if self.use_averages else None

    @property
    def groups(self) -> Mapping[int, FlatGroup]:
        """The flat groups, by id of their ParamStore (read-only)."""
        return MappingProxyType(self._groups)

    # --- per key -----------------------------------------------------------------

    def new_slot(self, key: KeyT, shape: tuple, size: int, ops: Ops) -> KeySlot:
        """A slot for a key's first update (with its average, zero)."""
        slot = self.slots[key] = KeySlot(tuple(shape), size)
        if self.use_averages:
            slot.ema = ops.alloc((size,))
        return slot

    def add_moments(self, slot: KeySlot, ops: Ops) -> None:
        """Zero moments for a slot that has none yet."""
        slot.m = ops.alloc((slot.size,))
        slot.v = ops.alloc((slot.size,))

    # --- parameter stores ------------------------------------------------------------

    def group_for(self, store: ParamStore) -> FlatGroup | None:
        """The group laid out for `store`, if it is still current."""
        group = self._groups.get(id(store))
        if group is None or group.stale or group.store_ref() is not store:
            return None
        return group

    def lay_out(self, store: ParamStore, keys: list, ops: Ops) -> FlatGroup:
        """A FlatGroup for `store`'s `keys`, their slots bound to it and their
        state (from per-key calls, another store, or a restore) copied in."""
        for key in keys:
            slot = self.slots.get(key)
            if slot is not None and slot.shape != store.shape(key):
                raise shape_conflict(
                    key, slot.shape, store.shape(key), " in the parameter store"
                )
        offsets = [store.offset(key) for key in keys]
        sizes = [store.size_of(key) for key in keys]
        group = FlatGroup(store, ops, keys, offsets, sizes)
        if self.use_averages:
            group.ema = ops.alloc((store.size,))
        for index, key in enumerate(keys):
            slot = self.slots.get(key)
            if slot is None:
                slot = self.slots[key] = KeySlot(store.shape(key), sizes[index])
            else:
                if slot.group is not None:
                    slot.group.stale = True
                group.nr[index] = slot.nr
                slot.detach()
            if group.ema is not None:
                ema = group.view(group.ema, index)
                if slot.ema is not None:
                    ema[...] = slot.ema
                slot.ema = ema
            slot.group, slot.index = group, index
            group.slots.append(slot)
        if any(slot.m is not None for slot in group.slots):
            self.group_moments(group, ops)
        live = {k: g for k, g in self._groups.items() if g.store_ref() is not None}
        live[id(store)] = group
        self._groups = live
        return group

    def group_moments(self, group: FlatGroup, ops: Ops) -> None:
        """Flat moments for `group`, each key's moments copied in (if any)
        and its slot pointed at its part of them."""
        group.m, group.v = ops.alloc((group.size,)), ops.alloc((group.size,))
        for index, slot in enumerate(group.slots):
            m, v = group.view(group.m, index), group.view(group.v, index)
            if slot.m is not None:
                m[...], v[...] = slot.m, slot.v
            slot.m, slot.v = m, v

    def keep_averages(self, keep: bool) -> None:
        """Start keeping parameter averages (from zero, as for a new key) or
        stop and drop them."""
        for slot in self.slots.values():  # flat groups are laid out anew
            slot.detach()
            slot.ema = None
        self._groups = {}
        self.use_averages = keep
        self.averages = self._averages_view()
        if keep and self.ops is not None:
            for slot in self.slots.values():
                slot.ema = self.ops.alloc((slot.size,))

    # --- devices and host arrays --------------------------------------------------

    def move(self, target: Ops) -> None:
        """Move every array to `target`'s device."""
        source = self.ops
        if source is target:
            return
        # The flat groups stay behind: each key's arrays move on their own,
        # and the next update_store lays them out anew.
        for slot in self.slots.values():
            slot.detach()
        self._groups = {}

        def move(array):
            host = source.to_numpy(array) if source is not None else np.asarray(array)
            return target.asarray(host)

        for slot in self.slots.values():
            if slot.m is not None:
                slot.m, slot.v = move(slot.m), move(slot.v)
            if slot.ema is not None:
                slot.ema = move(slot.ema)
        self.ops = target

    def to_arrays(self) -> tuple[list[SlotRecord], dict[str, np.ndarray]]:
        """Each key's record, and its arrays on the host: for the i-th key,
        `m{i}` and `v{i}` (flat, if it has moments) and `ema{i}` (shaped like
        the parameter, with averages). `from_arrays` reads them back."""
        host = self.ops.to_numpy if self.ops is not None else np.asarray
        records, arrays = [], {}
        for i, (key, slot) in enumerate(self.slots.items()):
            records.append(SlotRecord(key, slot.shape, slot.nr))
            if slot.m is not None:
                arrays[f"m{i}"], arrays[f"v{i}"] = host(slot.m), host(slot.v)
            if slot.ema is not None:
                arrays[f"ema{i}"] = host(slot.ema.reshape(slot.shape))
        return records, arrays

    @classmethod
    def from_arrays(
        cls,
        records: Iterable[SlotRecord],
        arrays: Mapping[str, np.ndarray],
        *,
        use_averages: bool,
        ops: Ops,
        radam_buffer: list[list] | None = None,
    ) -> OptimizerState:
        """A state on `ops` from what `to_arrays` gave; StateError if an array
        is missing, has the wrong shape or dtype, holds a NaN or an infinity,
        or (a second moment) a negative value."""
        state = cls(use_averages=use_averages, ops=ops, radam_buffer=radam_buffer)
        for i, (key, shape, nr) in enumerate(records):
            slot = state.slots[key] = KeySlot(shape, int(np.prod(shape)))
            slot.nr = nr
            if f"m{i}" in arrays or f"v{i}" in arrays:
                slot.m = _restored(arrays, f"m{i}", (slot.size,), key, ops)
                slot.v = _restored(arrays, f"v{i}", (slot.size,), key, ops)
                if (slot.v < 0).any():
                    raise StateError(
                        f"optimizer state for key {key!r} has a negative second moment"
                    )
            if use_averages:
                ema = _restored(arrays, f"ema{i}", shape, key, ops, "averages")
                slot.ema = ema.reshape(-1)
        return state

    def __repr__(self) -> str:
        return f"<OptimizerState {len(self.slots)} keys, on {self.ops!r}>"


def _restored(arrays, name: str, shape: tuple, key, ops: Ops, what: str = ""):
    """Array `name` of saved state on `ops`, if it is float32 of `shape` and
    finite; StateError naming `key` and `what` (default: the name) if not."""
    array, what = arrays.get(name), what or name
    if array is None or array.shape != shape or array.dtype != np.float32:
        raise StateError(f"optimizer state for key {key!r} has a bad {what}")
    if not np.isfinite(array).all():
        raise StateError(f"optimizer state for key {key!r}: {what} is not finite")
    return ops.asarray(array)
