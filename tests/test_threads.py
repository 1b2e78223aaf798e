"""The multi-threaded CPU kernels: the same numbers as one thread, bit for bit,
whatever the thread count; the thread setting honoured; small updates kept on
the calling thread (optsvc/backends/numba_kernels.py, NumpyOps(threads=N))."""

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from kernel_reference import (
    HYPER,
    NAMES,
    call,
    copy_state,
    random_state,
    split,
    state_of,
)

pytest.importorskip(
    "numba", reason="numba (the fast extra) is not installed", exc_type=ImportError
)

import numba  # noqa: E402

from optsvc.backends import (  # noqa: E402
    NumpyOps,
    TensorParams,
    UpdateKind,
    numba_kernels,
)
from optsvc.optim import (  # noqa: E402
    SGD,
    Adam,
    AdEMAMix,
    Lion,
    ParamStore,
    RAdam,
    ScheduleFreeAdamW,
    ScheduleFreeSGD,
)

CHUNK = numba_kernels.CHUNK
POOL = numba_kernels.max_threads()
SIZES = [0, 1, 7, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 37]


def same_bits(a, b):
    return a.shape == b.shape and np.array_equal(a.view(np.int32), b.view(np.int32))


@pytest.mark.parametrize(
    "kind,l2,clip,averages",
    list(
        itertools.product(list(UpdateKind), [0.0, 0.01], [0.0, 0.5, 1e9], [False, True])
    ),
)
def test_parallel_kernel_equals_the_serial_one(kind, l2, clip, averages):
    for n in SIZES:
        base = random_state(n, kind, averages, seed=n)
        serial = copy_state(base)
        hyper = dict(HYPER, kind=kind, l2=l2, clip=clip, decay=1e-3)
        call(numba_kernels.fused_update, serial, **hyper)
        tensor, host = split(hyper)
        for threads in range(1, POOL + 1):
            ours = copy_state(base)
            absent = numba_kernels.EMPTY
            numba_kernels.fused_parallel(
                *(absent if ours[k] is None else ours[k] for k in NAMES),
                *tensor.values(),
                host,
                averages,
                threads,
            )
            for name in NAMES:
                if serial[name] is not None:
                    assert same_bits(ours[name], serial[name]), (n, threads, name)


SHAPES = [(3, 5), (CHUNK + 3,), (0,), (2, CHUNK - 1), (1,), (5 * CHUNK + 11,)]
LATE = {("late", "W"): (CHUNK * 2 + 5,), ("late", "b"): (9,)}
OPTIMIZERS = {
    "sgd": lambda ops: SGD(0.1, grad_clip=1.0, ops=ops),
    "adam": lambda ops: Adam(0.01, L2=0.01, grad_clip=1.0, ops=ops),
    "adam-l2-grad-noclip": lambda ops: Adam(
        0.01, L2=0.01, grad_clip=0.0, L2_is_weight_decay=False, ops=ops
    ),
    "radam": lambda ops: RAdam(0.01, weight_decay=0.01, grad_clip=0.5, ops=ops),
    "lion": lambda ops: Lion(1e-3, weight_decay=0.1, grad_clip=1.0, ops=ops),
    "ademamix": lambda ops: AdEMAMix(0.01, weight_decay=0.01, beta3=0.999, ops=ops),
    "sf-adamw": lambda ops: ScheduleFreeAdamW(0.01, weight_decay=0.01, ops=ops),
    "sf-sgd": lambda ops: ScheduleFreeSGD(0.1, warmup_steps=3, ops=ops),
}


def arrays(shapes, seed):
    rng = np.random.default_rng(seed)
    return {
        (i, "W"): (0.1 * rng.standard_normal(s)).astype(np.float32)
        for i, s in enumerate(shapes)
    }


def fill(store, step):
    rng = np.random.default_rng(100 + step)
    grads = rng.standard_normal(store.flat_gradients.shape).astype(np.float32)
    store.flat_gradients[...] = grads * np.float32(0.1 + step)


def train(ops, make, multi):
    """Five steps on a store (update_store or per-key calls), then keys that
    arrive late, updated by per-key calls and by a second store."""
    opt = make(ops)
    store = ParamStore.from_arrays(arrays(SHAPES, 0), ops=ops)
    for step in range(5):
        fill(store, step)
        if multi:
            opt.update_store(store)
        else:
            for key in store:
                opt(key, store.weights(key), store.gradient(key))
    late = {k: np.full(s, 0.5, np.float32) for k, s in LATE.items()}
    for step in range(2):
        for key, w in late.items():
            opt(key, w, np.full_like(w, 0.3 * (step + 1)))
    second = ParamStore.from_arrays({**arrays(SHAPES[:2], 1), **late}, ops=ops)
    for step in range(3):
        fill(second, step)
        opt.update_store(second)
    return opt, store, second


def assert_same_training(a, b):
    (opt_a, *stores_a), (opt_b, *stores_b) = a, b
    for sa, sb in zip(stores_a, stores_b):
        assert same_bits(sa.flat_weights, sb.flat_weights)
    tables = {name: opt_a.state.view(name) for name in opt_a.rule.state}
    tables["averages"] = opt_a.averages
    for table, ta in tables.items():
        tb = opt_b.averages if table == "averages" else opt_b.state.view(table)
        assert set(ta) == set(tb)
        for key in ta:
            assert same_bits(np.asarray(ta[key]), np.asarray(tb[key])), (table, key)
    assert dict(opt_a.nr_update) == dict(opt_b.nr_update)


@pytest.mark.skipif(POOL < 2, reason="numba's pool has one thread here")
@pytest.mark.parametrize("multi", [True, False], ids=["update_store", "per-key"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_on_every_thread_count_equals_one_thread(monkeypatch, name, multi):
    one = train(NumpyOps(threads=1), OPTIMIZERS[name], multi)
    # Every update goes to the parallel kernel, however small.
    monkeypatch.setattr(numba_kernels, "PARALLEL_MIN", 0)
    for threads in range(2, POOL + 1):
        ops = NumpyOps(threads=threads)
        assert_same_training(train(ops, OPTIMIZERS[name], multi), one)
        assert ops.threads_used == threads


@pytest.mark.skipif(POOL < 2, reason="numba's pool has one thread here")
def test_the_thread_setting_is_honoured_and_small_updates_stay_serial():
    ops = NumpyOps(threads=2)
    assert ops.threads == 2
    opt = Adam(0.01, ops=ops)
    small = np.ones(numba_kernels.PARALLEL_MIN - 1, np.float32)
    opt("small", small, np.ones_like(small))
    assert ops.threads_used == 1
    large = np.ones(numba_kernels.PARALLEL_MIN, np.float32)
    numba.set_num_threads(1)
    opt("large", large, np.ones_like(large))
    assert ops.threads_used == 2
    assert numba.get_num_threads() == 2  # the pool was launched with 2
    # update_store: the whole buffer decides, not one tensor's size.
    half = numba_kernels.PARALLEL_MIN // 2
    store = ParamStore.from_arrays(
        {"a": np.ones(half, np.float32), "b": np.ones(half, np.float32)}, ops=ops
    )
    store.flat_gradients[...] = 1.0
    opt.update_store(store)
    assert ops.threads_used == 2
    tiny = ParamStore.from_arrays({"c": np.ones(100, np.float32)}, ops=ops)
    opt.update_store(tiny)
    assert ops.threads_used == 1
    assert NumpyOps(threads=1).threads == 1
    assert NumpyOps(threads=10_000).threads == POOL  # never beyond the pool


def test_the_default_follows_numba_then_omp(monkeypatch):
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert NumpyOps().threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1,4")
    assert numba_kernels.default_threads() == 1
    monkeypatch.setenv("NUMBA_NUM_THREADS", str(POOL))
    assert NumpyOps().threads == POOL
    monkeypatch.delenv("NUMBA_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert NumpyOps().threads == POOL


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_bad_thread_count_is_refused(bad):
    with pytest.raises(ValueError, match="positive int"):
        NumpyOps(threads=bad)


def test_more_threads_than_cores_with_the_workqueue_layer(tmp_path):
    """Four threads on numba's always-available layer (workqueue), in a fresh
    process: the same numbers as one thread, and two Python threads updating
    at once do not crash the pool."""
    script = tmp_path / "four.py"
    script.write_text(
        textwrap.dedent(
            """
            import threading
            import numba, numpy as np
            from optsvc.backends import NumpyOps, numba_kernels
            from optsvc.optim import Adam

            def run(threads):
                opt = Adam(0.01, L2=0.01, grad_clip=1.0, ops=NumpyOps(threads=threads))
                n = numba_kernels.PARALLEL_MIN + 2 * numba_kernels.CHUNK + 3
                w = np.linspace(-1, 1, n, dtype=np.float32)
                for step in range(3):
                    opt("w", w, np.sin(w * (step + 1)).astype(np.float32))
                return w, opt.mom1["w"], opt.averages["w"]

            ref = run(1)
            for threads in (2, 3, 4):
                out = run(threads)
                assert all(np.array_equal(a.view("i4"), b.view("i4"))
                           for a, b in zip(out, ref)), threads
            workers = [threading.Thread(target=run, args=(4,)) for _ in range(2)]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
            print(numba.threading_layer(), numba_kernels.max_threads())
            """
        )
    )
    env = dict(os.environ, NUMBA_NUM_THREADS="4", NUMBA_THREADING_LAYER="workqueue")
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parent,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["workqueue", "4"]


@pytest.mark.parametrize("threads", range(1, POOL + 1))
def test_the_floor_stream_rewrites_every_element_in_place(threads):
    for n in SIZES:
        buf = np.arange(n, dtype=np.float32) - np.float32(n / 2)
        before = buf.copy()
        assert numba_kernels.stream_inplace(buf, threads) == threads
        assert same_bits(buf, before)


LAYOUTS = [
    [3 * CHUNK, 0, 0, 0],
    [CHUNK + 1, 5, 0],
    [0, 7, CHUNK, 0, 2 * CHUNK + 3, 1],
    [300_000] + [0] * 18,
]


@pytest.mark.parametrize("sizes", LAYOUTS, ids=lambda s: f"{len(s)} tensors")
def test_the_work_items_cover_each_tensor_once_longest_first(sizes):
    """Every element in exactly one item of its own tensor, no item longer
    than CHUNK, each tensor's items consecutive and in order, and the items
    of tensors of several chunks ahead of all others (the norm pass runs
    over that leading run)."""
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    items, spans, n_split = numba_kernels.chunk_items(offsets, sizes)
    tensor, start, stop = items
    covered = np.zeros(sum(sizes), dtype=np.int64)
    for t, (first, count) in enumerate(spans.T):
        assert count == -(-sizes[t] // CHUNK)
        assert (tensor[first : first + count] == t).all()
        assert list(start[first : first + count]) == list(
            range(offsets[t], offsets[t] + sizes[t], CHUNK)
        )
        for a, b in zip(start[first : first + count], stop[first : first + count]):
            assert 0 < b - a <= CHUNK
            covered[a:b] += 1
    assert (covered == 1).all()
    several = spans[1][tensor] > 1
    assert several[: several.sum()].all()  # a leading run
    assert n_split == several.sum()


@pytest.mark.parametrize("sizes", LAYOUTS, ids=lambda s: f"{len(s)} tensors")
@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_the_parallel_multi_tensor_kernel_equals_the_serial_one(sizes, clip):
    """Flat buffers holding tensors of one chunk, several chunks and none,
    of every kind in turn: the clipping norm of each, on every thread
    count."""
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    n = int(sizes.sum())
    base = random_state(n, UpdateKind.ADEMAMIX, True, seed=len(sizes))
    base["g"] *= np.float32(10.0)  # norms above the clip
    params = TensorParams(len(sizes))
    params.lr[:], params.ema_rate[:], params.bc1[:], params.bc2[:] = 0.01, 0.1, 0.2, 0.3
    params.kind[:] = [list(UpdateKind)[t % len(UpdateKind)] for t in range(len(sizes))]
    _, host = split(dict(HYPER, kind=0, l2=0.01, clip=clip, decay=1e-3))
    serial = copy_state(base)
    arrays = lambda a: (a["w"], a["g"], state_of(a), a["ema"])  # noqa: E731
    numba_kernels.multi_update(
        *arrays(serial), offsets, sizes, params.packed, host=host
    )
    work = numba_kernels.chunk_items(offsets, sizes)
    for threads in range(1, POOL + 1):
        ours = copy_state(base)
        numba_kernels.multi_parallel(
            *(ours[k] for k in NAMES), *work, params.packed, host, True, threads,
        )  # fmt: skip
        for name in NAMES:
            assert same_bits(ours[name], serial[name]), (threads, name)


def train_with_threads(setting: str, out: Path) -> subprocess.CompletedProcess:
    """A 20-step quickstart through `optsvc train` with NUMBA_NUM_THREADS set."""
    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.cfg"
    return subprocess.run(
        [sys.executable, "-m", "optsvc_cli", "train", str(config), "-o", str(out),
         "--training.max_steps", "20", "--optimizer.learn_rate.warmup_steps", "2"],
        env={**os.environ, "NUMBA_NUM_THREADS": setting},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("setting", ["0", "abc", "100000"])
def test_a_thread_setting_numba_cannot_take_is_replaced_with_one_warning(
    setting, tmp_path
):
    # numba refuses 0, warns with a traceback on a word, may crash on 100000
    # (more threads than CPUs, within MAX_THREADS, stay as asked).
    cpus = os.cpu_count()
    done = train_with_threads(setting, tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    limit = max(numba_kernels.MAX_THREADS, cpus)
    warning = f"⚠ warning: NUMBA_NUM_THREADS={setting!r} is not a whole number"
    assert [line for line in done.stderr.splitlines() if "NUMBA" in line] == [
        f"{warning} from 1 to {limit}; optsvc uses {cpus} (the CPUs here)"
    ]


def test_more_threads_than_cpus_are_kept_as_asked(tmp_path):
    done = train_with_threads(str((os.cpu_count() or 1) * 2), tmp_path)
    assert done.returncode == 0 and "NUMBA_NUM_THREADS" not in done.stderr
