"""`optsvc bench` (optsvc/bench/, cli/bench.py): its output and its honesty
checks, never its speed (speed lives in the benchmark, not in unit tests)."""

from __future__ import annotations

import itertools
import json
import math
import sys
import types
from pathlib import Path

import pytest
import typer
from optsvc_cli.bench import bench as bench_command
from typer.testing import CliRunner

import optsvc
from optsvc import SGD, Adam, RAdam, bench
from optsvc.bench import (
    IMPL_MULTI,
    IMPL_PER_KEY,
    run_bench,
    traffic_per_param,
    workload_shapes,
)
from optsvc.bench.implementations import _peers
from optsvc.bench.timing import _Device

ROW_KEYS = {
    "workload",
    "optimizer",
    "description",
    "device",
    "implementation",
    "tensors",
    "params",
    "ms",
    "ms_min",
    "ms_max",
    "gbps",
    "x_floor",
    "floor_ms",
    "floor_gbps",
    "floor_copy_bytes",
    "bytes_per_param",
    "speedup_vs_thinc",
    "same_work",
    "notes",
    "run_id",
    "threads",
    "repeat",
    "warmup",
}


def has_thinc() -> bool:
    try:
        import thinc  # noqa: F401
    except ImportError:
        return False
    return True


def has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
TORCH_IMPLS = ["torch AdamW fused", "torch AdamW foreach + clip + EMA"]


@pytest.fixture(scope="module")
def rows():
    return run_bench(workloads=("W3", "W1"), quick=True, repeat=2, warmup=1)


def test_rows_cover_every_workload_and_implementation(rows):
    impls = [IMPL_MULTI, IMPL_PER_KEY]
    if has_thinc():
        import thinc

        impls.append(f"thinc {thinc.__version__} per-key")
    if has_torch():
        impls += TORCH_IMPLS
    assert [(r["workload"], r["implementation"]) for r in rows] == [
        (w, i) for w in ("W3", "W1") for i in impls
    ]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["device"] == "cpu" and row["repeat"] == 2 and row["warmup"] == 1
        assert row["ms_min"] <= row["ms"] <= row["ms_max"]
    assert rows[0]["tensors"] == 2 and rows[0]["params"] == 2 * 64 * 64


def test_ratios_come_from_the_same_run(rows):
    assert len({r["run_id"] for r in rows}) == 1
    for workload in ("W3", "W1"):
        group = [r for r in rows if r["workload"] == workload]
        # one floor per workload, measured, and shared by its rows
        assert len({(r["floor_ms"], r["floor_gbps"]) for r in group}) == 1
        floor = group[0]
        assert floor["floor_gbps"] > 0 and math.isfinite(floor["floor_gbps"])
        assert floor["floor_copy_bytes"] >= 2 * 64 * 1024
        moved = floor["bytes_per_param"] * floor["params"]
        assert floor["floor_ms"] == pytest.approx(moved / floor["floor_gbps"] / 1e6)
        thinc = [r for r in group if r["implementation"].startswith("thinc")]
        for row in group:
            assert row["x_floor"] == pytest.approx(row["ms"] / row["floor_ms"])
            assert row["gbps"] == pytest.approx(moved / row["ms"] / 1e6)
            if thinc:
                assert row["speedup_vs_thinc"] == pytest.approx(
                    thinc[0]["ms"] / row["ms"]
                )
            else:
                assert row["speedup_vs_thinc"] is None
        if thinc:
            assert thinc[0]["speedup_vs_thinc"] == pytest.approx(1.0)


def test_the_floor_is_the_copy_timed_in_the_run(monkeypatch):
    # A stand-in copy that "moves" 1 GB in exactly 2 ms of a fake clock (and
    # an in-place rewrite that moves 1 GB in 4 ms): the floor must be derived
    # from the copy's measured time, once per workload, for that workload.
    clock = types.SimpleNamespace(now=0.0)

    def perf_counter():
        clock.now += 1e-9  # every other timed step takes 1 ns of fake time
        return clock.now

    def stand_in(seconds, moved, calls=None):
        def make(dev, nbytes):
            if calls is not None:
                calls.append(nbytes)

            def step():
                clock.now += seconds

            return step, moved

        return make

    made = []
    monkeypatch.setattr(
        bench.timing, "time", types.SimpleNamespace(perf_counter=perf_counter)
    )
    monkeypatch.setattr(bench.run, "_copy_runner", stand_in(0.002, 10**9, made))
    monkeypatch.setattr(bench.run, "_inplace_runner", stand_in(0.004, 10**9))
    rows = run_bench(workloads=["W3", "W1"], quick=True, repeat=3, warmup=0)
    assert len(made) == 2
    w3, w1 = rows[0], rows[-1]
    assert made == [w3["params"] * 20 // 2, w1["params"] * 20 // 2]  # Adam + avg
    for row in (w3, w1):
        # 1 GB over the copy's 2 ms (plus the clock's 1 ns a reading)
        assert row["floor_gbps"] == pytest.approx(500, rel=1e-5)


def test_optsvc_and_thinc_do_the_same_work(rows):
    for row in rows:
        if row["implementation"] in TORCH_IMPLS:
            continue
        assert row["same_work"] is True and row["notes"] == ""
        assert row["bytes_per_param"] == 44  # Adam + averages + clipping norm


@pytest.mark.skipif(not has_torch(), reason="torch is not installed")
def test_torch_rows_say_what_they_leave_out(rows):
    fused = [r for r in rows if r["implementation"] == "torch AdamW fused"]
    assert fused and all(r["same_work"] is False for r in fused)
    assert all("no per-tensor clipping" in r["notes"] for r in fused)
    assert all("no averages" in r["notes"] for r in fused)


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda: Adam(), 44),
        (lambda: Adam(grad_clip=0.0, use_averages=False), 32),
        (lambda: Adam(L2=0.01, L2_is_weight_decay=False), 48),
        (lambda: RAdam(), 44),
        (lambda: SGD(0.1, grad_clip=0.0, use_averages=False), 16),
        (lambda: SGD(0.1, grad_clip=0.0), 24),
        (lambda: SGD(0.1), 28),
        # one state array (m), averages, the clipping norm's read
        (lambda: optsvc.Lion(), 36),
        (lambda: optsvc.Lion(grad_clip=0.0, use_averages=False), 24),
        (lambda: optsvc.AdEMAMix(), 52),  # m, v and the slow momentum
        # z and v; x is computed when read, not kept: no averages
        (lambda: optsvc.ScheduleFreeAdamW(), 36),
        (lambda: optsvc.ScheduleFreeSGD(grad_clip=0.0), 24),
    ],
)
def test_traffic_per_parameter(make, expected):
    assert traffic_per_param(make()) == expected


def test_peers_that_do_less_say_so(monkeypatch):
    # torch is not needed to check what the rows would say about it.
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    dev = _Device(-1)
    peers = {name: (notes, same) for name, _, notes, same in _peers(Adam(), dev)}
    notes, same = peers["torch AdamW fused"]
    assert not same
    assert "no per-tensor clipping" in notes and "no averages" in notes
    notes, same = peers["torch AdamW foreach + clip + EMA"]
    assert same and "clip" in notes
    bare = Adam(grad_clip=0.0, use_averages=False)
    peers = {name: (notes, same) for name, _, notes, same in _peers(bare, dev)}
    assert peers["torch AdamW fused"] == ("", True)
    # no AdamW counterpart for SGD or RAdam
    for opt in (SGD(0.1), RAdam()):
        names = [name for name, *_ in _peers(opt, dev)]
        assert not any(name.startswith("torch") for name in names)


def test_a_failing_peer_is_reported_not_fatal(monkeypatch):
    def broken(dev, keys, weights, grads):
        raise RuntimeError("no device")

    def crashing(dev, keys, weights, grads):
        def step():
            raise RuntimeError("kernel died")

        return step, lambda: None

    peers = [("peer A", broken, "", True), ("peer B", crashing, "", True)]
    monkeypatch.setattr(bench.run, "_peers", lambda opt, dev: peers)
    rows = run_bench(workloads=["W3"], quick=True, repeat=1, warmup=0)
    by_impl = {r["implementation"]: r for r in rows}
    assert by_impl["peer A"]["notes"] == "failed: RuntimeError: no device"
    assert by_impl["peer B"]["notes"] == "failed: RuntimeError: kernel died"
    assert by_impl["peer A"]["ms"] is None and by_impl["peer B"]["x_floor"] is None
    assert by_impl[IMPL_MULTI]["ms"] > 0


def test_workloads_as_the_issue_defines_them():
    assert workload_shapes("W1")[1] == [(16 * 2**20,)]
    assert workload_shapes("W2")[1] == [(64, 128)] * 2000
    assert workload_shapes("W3")[1] == [(64, 64)] * 20
    assert workload_shapes("W1", "gpu")[1] == [(64 * 2**20,)]
    assert workload_shapes("W2", "gpu")[1] == [(16384,)] * 4000
    assert workload_shapes("W3", "gpu")[1] == [(256, 256)] * 200
    desc, shapes = workload_shapes("W2", scale=0.01)
    assert shapes == [(64, 128)] * 20 and "x0.01" in desc
    with pytest.raises(ValueError, match="unknown workload 'W9'.*W1, W2, W3"):
        run_bench(workloads=["W3", "W9"], quick=True)


CONFIGS = {
    "optimizer": """
[optimizer]
@optimizers = "SGD.v1"
learn_rate = 0.05
grad_clip = 0.0
""",
    "training.optimizer": """
[training]
max_steps = 10

[training.optimizer]
@optimizers = "Adam.v1"
use_averages = false

[training.optimizer.learn_rate]
@schedules = "warmup_linear.v1"
initial_rate = 0.001
warmup_steps = 2
total_steps = 20
""",
}


@pytest.mark.parametrize("where", list(CONFIGS))
def test_config_optimizer_blocks(tmp_path, where):
    path = tmp_path / "opt.cfg"
    path.write_text(CONFIGS[where])
    rows = run_bench(path, workloads=["W3"], quick=True, include_peers=False)
    expected = 24 if where == "optimizer" else 36  # SGD + averages; Adam + clip
    assert {r["bytes_per_param"] for r in rows} == {expected}
    assert [r["implementation"] for r in rows] == [IMPL_MULTI, IMPL_PER_KEY]


def test_config_without_an_optimizer_is_an_error(tmp_path):
    path = tmp_path / "empty.cfg"
    path.write_text("[training]\nmax_steps = 3\n")
    with pytest.raises(ValueError, match=r"no \[optimizer\]"):
        run_bench(path, workloads=["W3"], quick=True)


# --- the command, through a throwaway Typer app (cli/main.py registers it) ---------


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    app.command()(bench_command)
    return app


def test_help_shows_an_example(app):
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for text in ("Example: optsvc bench", "--workload", "--gpu", "--format"):
        assert text in result.output


def test_json_format(app):
    args = ["--quick", "--workload", "W3", "--format", "json", "--no-peers"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) == {"optsvc", "machine", "rows"}
    from importlib import metadata

    for peer in ("thinc", "torch"):  # the peers' versions, or None
        try:
            assert report["machine"][peer] == metadata.version(peer)
        except metadata.PackageNotFoundError:
            assert report["machine"][peer] is None
    assert [r["implementation"] for r in report["rows"]] == [IMPL_MULTI, IMPL_PER_KEY]
    assert set(report["rows"][0]) == ROW_KEYS


def test_table_format(app):
    result = CliRunner().invoke(app, ["--quick", "-w", "W3", "--no-peers"])
    assert result.exit_code == 0, result.output
    for text in ("x floor", "GB/s", "optsvc multi-tensor", "W3: 20 tensors", "floor"):
        assert text in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--quick", "-w", "W7"], "unknown workload 'W7'"),
        (["missing.cfg", "--quick"], "does not exist"),
    ],
)
def test_user_errors_are_one_line(app, args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_workloads_after_one_option_are_workloads_not_configs(app):
    # issue 11: `--workload W2 W3` took W3 for a config file.
    args = ["--quick", "--workload", "W2", "W3", "--format", "json", "--no-peers"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert [r["workload"] for r in rows] == ["W2", "W2", "W3", "W3"]
    result = CliRunner().invoke(app, ["--quick", "-w", "w3,W2", "--no-peers"])
    assert result.exit_code == 0, result.output
    assert "W3: 20 tensors" in result.output and "W2: 2000 tensors" in result.output
    result = CliRunner().invoke(app, ["a.cfg", "b.cfg", "--quick"])
    assert result.exit_code == 1 and "does not exist" in result.output


# The example config of each optimizer beyond Thinc's, and its bytes a
# parameter (test_traffic_per_parameter says what they are made of).
BEYOND_THINC = {"lion": ("Lion", 36), "ademamix": ("AdEMAMix", 52),
                "schedulefree_adamw": ("Schedule-Free AdamW", 36),
                "schedulefree_sgd": ("Schedule-Free SGD", 28)}  # fmt: skip


def test_one_run_times_each_new_optimizer_against_its_own_floor(app, monkeypatch):
    """`optsvc bench` with several configs: each optimizer's rows on each
    workload, with its own bytes a parameter and floor, from one run; Thinc
    and torch skipped with the reason, as neither has these optimizers."""
    configs = [str(CONFIGS_DIR / f"{name}.cfg") for name in BEYOND_THINC]
    args = [*configs, "--quick", "-w", "W3", "W1", "--repeat", "2", "--format", "json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = report["rows"]
    assert [(r["workload"], r["optimizer"], r["implementation"]) for r in rows] == [
        (w, title, impl)
        for w in ("W3", "W1")
        for title, _ in BEYOND_THINC.values()
        for impl in (IMPL_MULTI, IMPL_PER_KEY)
    ]
    assert len({r["run_id"] for r in rows}) == 1
    for (_, title), group in itertools.groupby(
        rows, key=lambda r: (r["workload"], r["optimizer"])
    ):
        group = list(group)
        expected = dict(BEYOND_THINC.values())[title]
        assert {r["bytes_per_param"] for r in group} == {expected}, title
        (floor,) = {(r["floor_ms"], r["floor_gbps"]) for r in group}
        moved = expected * group[0]["params"]
        assert floor[0] == pytest.approx(moved / floor[1] / 1e6), title
        for row in group:
            assert row["x_floor"] == pytest.approx(row["ms"] / row["floor_ms"])
    if has_thinc():
        for title, _ in BEYOND_THINC.values():
            assert f"thinc per-key: skipped, Thinc has no {title}" in report["skipped"]
    args = [*configs, "--quick", "-w", "W3", "--no-peers"]
    table = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.output
    for title, expected in BEYOND_THINC.values():
        assert (
            f"{title}: floor" in table.output
            and f"= {expected} B/param" in table.output
        )
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    for config, (title, _) in zip(configs, BEYOND_THINC.values()):  # torch imports
        skips = bench.peer_skips(bench.optimizer_from_config(config))
        assert f"torch AdamW: skipped, torch.optim has no {title}" in skips


def test_threads_option_runs_every_part_on_that_many_threads(app, monkeypatch):
    pytest.importorskip("numba", exc_type=ImportError)
    from optsvc.backends import numba_kernels

    streams = []
    real_stream = numba_kernels.stream_inplace
    monkeypatch.setattr(
        numba_kernels,
        "stream_inplace",
        lambda buf, threads: streams.append(threads) or real_stream(buf, 1),
    )
    monkeypatch.setattr(numba_kernels, "max_threads", lambda: 2)
    monkeypatch.setattr(numba_kernels, "PARALLEL_MIN", 0)
    used = []
    real_multi = numba_kernels.multi_parallel
    monkeypatch.setattr(
        numba_kernels,
        "multi_parallel",
        lambda *a: used.append(a[-1]) or real_multi(*a[:-1], 1),
    )
    rows = run_bench(workloads=["W3"], quick=True, include_peers=False, threads=2)
    assert streams and set(streams) == {2}  # the floor: a stream on 2 threads
    assert used and set(used) == {2}  # optsvc's kernels on 2 threads
    assert all("optsvc: 2" in r["threads"] for r in rows)


def test_threads_beyond_the_pool_are_refused(app):
    pytest.importorskip("numba", exc_type=ImportError)
    result = CliRunner().invoke(app, ["--quick", "-w", "W3", "--threads", "4096"])
    assert result.exit_code == 1
    assert "NUMBA_NUM_THREADS=4096" in result.output


def test_a_skipped_peer_says_why(app, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
    result = CliRunner().invoke(app, ["--quick", "-w", "W3", "--format", "json"])
    assert result.exit_code == 0, result.output
    skipped = json.loads(result.output)["skipped"]
    assert any(line.startswith("torch AdamW: skipped, torch") for line in skipped)
    result = CliRunner().invoke(app, ["--quick", "-w", "W3"])
    assert "torch AdamW: skipped" in result.output
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    torch_lines = [x for x in bench.peer_skips(SGD(0.1)) if x.startswith("torch")]
    assert torch_lines == ["torch AdamW: skipped, no AdamW counterpart of SGD"]


@pytest.mark.slow
def test_compare_optimizers_prints_every_run(tmp_path):
    """`make compare-optimizers`, small: the three optimizers on both jobs,
    with and without early stopping, one table row each."""
    import subprocess

    script = CONFIGS_DIR.parent / "bench" / "compare_optimizers.py"
    args = ["--spacy-steps", "20", "--spacy-eval", "5", "--spacy-patience", "5",
            "--quickstart-steps", "300", "--quickstart-patience", "1",
            "--corpus", str(tmp_path / "corpus")]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split(" | ") for line in done.stdout.splitlines()[2:]]
    jobs = ["spaCy tagger", "spaCy tagger, patience 5 steps", "quickstart",
            "quickstart, patience 1 evals"]  # fmt: skip
    adam = {"spaCy": "Thinc Adam.v1", "quickstart": "optsvc Adam.v1"}
    assert [(r[0].strip("| "), r[1]) for r in rows] == [
        (job, name)
        for job in jobs
        for name in (f"{adam[job.split(',')[0].split()[0]]} + warmup_linear",
                     "Schedule-Free AdamW", "Lion")
    ]  # fmt: skip
    for row in rows:
        steps, best, final = int(row[2]), float(row[3]), float(row[4])
        assert steps <= (20 if "spaCy" in row[0] else 300)
        assert 0 <= final <= best <= 1
        assert row[-1].rstrip(" |").endswith("%")
