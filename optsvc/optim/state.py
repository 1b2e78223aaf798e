"""An optimizer's state, in one owner: `OptimizerState`.

Each key the optimizer has updated has a `KeySlot`, bound to a `FlatGroup`
for the keys of a `ParamStore` updated with `update_store`. A slot holds the
arrays its optimizer's rule keeps (`Rule.state`: Adam's m and v, Lion's m,
Schedule-Free's z, ...), its average and, for a rule whose averages are an
evaluation point, where its weights are. `OptimizerState` keeps the slots
and the groups, the rule's running scalars (RAdam's shared memo,
Schedule-Free's sums) and the backend the arrays live on; it lays the state
out for a store, moves it between devices and turns it into host arrays and
back (`to_arrays` / `from_arrays`, for `optsvc.optim.serialize`).
`optimizer.mom1`, `mom2`, `averages` and `nr_update` are read-only views of
the slots (`SlotView`, `EvaluationPoint`), never copies.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from operator import attrgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from optsvc.backends import Ops, TensorParams
from optsvc.errors import StateError
from optsvc.optim.step import new_radam_buffer

if TYPE_CHECKING:
    from optsvc.optim.params import ParamStore
    from optsvc.optim.rules import Rule

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
    """One key's state: the shape and size of its parameter, the flat arrays
    its rule keeps (`state`, a tuple in `Rule.state` order, None until an
    update needs them), its average `ema` (None until needed), its update
    count, and its flat weights as last updated (`weights`: what a rule's
    evaluation point is computed from; None after a restore or a move
    until an update or `Optimizer.attach` says where they are).

    A key of a `ParamStore` updated with `update_store` is bound to that
    store's `FlatGroup` (`group`, `index`): its arrays are views into the
    group's flat buffers and its update count lives in `group.nr`.
    """

    __slots__ = ("shape", "size", "state", "ema", "weights", "_nr", "group", "index")

    def __init__(self, shape: tuple, size: int) -> None:
        self.shape = shape
        self.size = size
        self.state: tuple | None = None
        self.ema = None
        self.weights = None
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
    like the store's: the rule's arrays `state` (a tuple) and the averages
    `ema` (each `store.size` long, or None until needed), the update count
    of each key (`nr`, int64 on the host), and the tables the multi-tensor
    kernels read (`layout`, `params`). Only keys with parameters have an
    entry.
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
        self.state: tuple | None = None
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
    """A read-only mapping over the slots of an OptimizerState: key -> what
    `get` reads of the slot (shaped like the parameter with `shaped`), for
    the keys whose slot has one. `optimizer.mom1`, `mom2`, `averages` and
    `nr_update` are such views: the arrays are the state, never copies."""

    __slots__ = ("_slots", "_get", "_shaped")

    def __init__(
        self, slots: dict[KeyT, KeySlot], get: Callable, *, shaped: bool = False
    ) -> None:
        self._slots = slots
        self._get = get
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


def _state_array(index: int) -> Callable:
    """A `SlotView` getter: the slot's `index`-th state array, if any."""
    return lambda slot: None if slot.state is None else slot.state[index]


class EvaluationPoint(SlotView):
    """The averages of a rule with an evaluation point (Schedule-Free's x):
    key -> ``lerp(y, z, weight)``, computed when read from the key's weights
    y and its state array z, shaped like the parameter (a new array each
    time: it is not state). A key whose weights the optimizer does not know
    (after a restore, before its next update) is a StateError on reading."""

    __slots__ = ("_weight",)

    def __init__(self, slots: dict[KeyT, KeySlot], weight: float) -> None:
        super().__init__(slots, _state_array(0), shaped=True)
        self._weight = weight

    def __getitem__(self, key: KeyT):
        z = super().__getitem__(key)
        slot = self._slots[key]
        if slot.weights is None:
            raise StateError(
                f"the evaluation point of key {key!r} needs its weights, which "
                "the optimizer does not know since it was restored or moved; "
                "update the key once or call optimizer.attach(store) first"
            )
        return lerp(slot.weights.reshape(slot.shape), z, self._weight)


def lerp(a, b, weight: float):
    """torch.lerp(a, b, weight) of float32 arrays (numpy or cupy), as
    `optsvc.backends.elements.lerp` computes it element by element: one
    rounding, in the form the weight picks."""
    w = np.float32(weight)
    base = a
    if not abs(w) < 0.5:
        w, base = w - np.float32(1.0), b
    wide = base.astype(np.float64) + np.float64(w) * (b - a).astype(np.float64)
    return wide.astype(np.float32)


class SlotRecord(NamedTuple):
    """What `to_arrays` says of one key besides its arrays."""

    key: KeyT
    shape: tuple
    nr: int


class OptimizerState:
    """All of an optimizer's state: per-key slots (`slots`, in the order the
    keys were first updated), their flat groups for parameter stores, the
    rule's running scalars (RAdam's shared memo `radam_buffer`, the `sums`
    of a rule that keeps some, such as Schedule-Free's weight sum and
    largest rate) and the backend the arrays live on (`ops`, None until the
    first update). `rule` says which arrays a slot holds. Read it through
    the views (`mom1`, `mom2`, `averages`, `nr_update`, `view`); change it
    through the methods.
    """

    def __init__(
        self,
        rule: Rule,
        *,
        use_averages: bool,
        ops: Ops | None = None,
        radam_buffer: list[list] | None = None,
        sums: tuple[float, ...] | None = None,
    ) -> None:
        self.rule = rule
        self.ops = ops
        self.use_averages = bool(use_averages)
        self.slots: dict[KeyT, KeySlot] = {}
        self.radam_buffer = new_radam_buffer() if radam_buffer is None else radam_buffer
        self.sums = rule.initial_sums if sums is None else sums
        # id(store) -> the group of that ParamStore's keys
        self._groups: dict[int, FlatGroup] = {}
        self.mom1 = self.view("m")
        self.mom2 = self.view("v")
        self.averages = self._averages_view()
        self.nr_update = SlotView(self.slots, attrgetter("nr"))

    def view(self, name: str) -> SlotView:
        """Each key's state array `name` (one of `rule.state`), flat; empty
        for a name the rule does not keep."""
        names = self.rule.state
        index = names.index(name) if name in names else None
        get = (lambda slot: None) if index is None else _state_array(index)
        return SlotView(self.slots, get)

    def _averages_view(self) -> SlotView | None:
        if not self.use_averages:
            return None
        return SlotView(self.slots, attrgetter("ema"), shaped=True)

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

    def add_state(self, slot: KeySlot, ops: Ops, weights) -> None:
        """The rule's arrays for a slot that has none yet: zeros, or a copy
        of the key's flat `weights` for those the rule starts from them."""
        slot.state = tuple(
            ops.asarray(weights).copy() if name in self.rule.from_weights
            else ops.alloc((slot.size,))
            for name in self.rule.state
        )  # fmt: skip

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
            slot.weights = store.weights(key).reshape(-1)
            group.slots.append(slot)
        if any(slot.state is not None for slot in group.slots):
            self.group_state(group, ops, store)
        live = {k: g for k, g in self._groups.items() if g.store_ref() is not None}
        live[id(store)] = group
        self._groups = live
        return group

    def group_state(self, group: FlatGroup, ops: Ops, store: ParamStore) -> None:
        """The rule's flat arrays for `group`, each key's arrays copied in
        (if any; else zeros, or its weights for those the rule starts from
        them) and its slot pointed at its part of them."""
        group.state = tuple(
            ops.asarray(store.flat_weights).copy() if name in self.rule.from_weights
            else ops.alloc((group.size,))
            for name in self.rule.state
        )  # fmt: skip
        for index, slot in enumerate(group.slots):
            views = tuple(group.view(flat, index) for flat in group.state)
            if slot.state is not None:
                for view, own in zip(views, slot.state):
                    view[...] = own
            slot.state = views

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
            if slot.state is not None:
                slot.state = tuple(move(a) for a in slot.state)
            if slot.ema is not None:
                slot.ema = move(slot.ema)
            slot.weights = None  # on the old device: attach() or an update tells
        self.ops = target

    def to_arrays(self) -> tuple[list[SlotRecord], dict[str, np.ndarray]]:
        """Each key's record, and its arrays on the host: for the i-th key,
        each of the rule's arrays as `{name}{i}` (flat, if it has them: `m0`,
        `v0`, `z0`, ...) and `ema{i}` (shaped like the parameter, with
        averages). `from_arrays` reads them back."""
        host = self.ops.to_numpy if self.ops is not None else np.asarray
        records, arrays = [], {}
        for i, (key, slot) in enumerate(self.slots.items()):
            records.append(SlotRecord(key, slot.shape, slot.nr))
            if slot.state is not None:
                for name, array in zip(self.rule.state, slot.state):
                    arrays[f"{name}{i}"] = host(array)
            if slot.ema is not None:
                arrays[f"ema{i}"] = host(slot.ema.reshape(slot.shape))
        return records, arrays

    @classmethod
    def from_arrays(
        cls,
        rule: Rule,
        records: Iterable[SlotRecord],
        arrays: Mapping[str, np.ndarray],
        *,
        use_averages: bool,
        ops: Ops,
        radam_buffer: list[list] | None = None,
        sums: tuple[float, ...] | None = None,
    ) -> OptimizerState:
        """A state on `ops` from what `to_arrays` gave; StateError if an array
        is missing, has the wrong shape or dtype, holds a NaN or an infinity,
        or (a second moment) a negative value."""
        state = cls(
            rule, use_averages=use_averages, ops=ops, radam_buffer=radam_buffer,
            sums=sums,
        )  # fmt: skip
        for i, (key, shape, nr) in enumerate(records):
            slot = state.slots[key] = KeySlot(shape, int(np.prod(shape)))
            slot.nr = nr
            if any(f"{name}{i}" in arrays for name in rule.state):
                slot.state = tuple(
                    _restored(arrays, f"{name}{i}", (slot.size,), key, ops)
                    for name in rule.state
                )
                for name, array in zip(rule.state, slot.state):
                    if name in rule.nonnegative and (array < 0).any():
                        raise StateError(
                            f"optimizer state for key {key!r} has a negative "
                            "second moment"
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
