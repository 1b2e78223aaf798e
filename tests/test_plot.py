"""`optsvc plot`: the metrics of several runs on one picture (matplotlib)
or in the terminal (plotext), from real run folders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from optsvc_cli.main import app
from runs_helpers import CYCLIC, make_run, metrics
from typer.testing import CliRunner

from optsvc.analysis import load_runs, make_figure
from optsvc.errors import ConfigError, MissingExtraError, OptsvcError

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"
DECAYING_L2 = {"@schedules": "decaying.v1", "base_rate": 1e-4, "decay": 0.01}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two runs with different learning-rate schedules, one that also
    schedules L2, a sweep of two trials, and a run that failed at step 2."""
    root = tmp_path_factory.mktemp("plot")
    out = {
        "cosine": make_run(root / "cosine"),
        "cyclic": make_run(root / "cyclic", {"learn_rate": CYCLIC}),
        "l2": make_run(root / "l2", {"L2": DECAYING_L2}),
    }
    for name, rate in (("0-lr0.01", 0.01), ("1-lr0.003", 0.003)):
        trial = root / "sweep" / "trials" / name
        make_run(trial, **{"optimizer.learn_rate.initial_rate": rate})
    out["sweep"] = root / "sweep"
    out["failed"] = root / "failed"
    with pytest.raises(OptsvcError):
        make_run(out["failed"], {"learn_rate": 1e300})
    return out


def panels(fig) -> dict[str, list]:
    """Each visible panel's title and its lines."""
    return {ax.get_title(): ax.get_lines() for ax in fig.axes if ax.get_visible()}


def test_one_panel_per_metric_one_line_per_run(runs):
    fig = make_figure(load_runs([runs["cosine"], runs["cyclic"]]), [])
    shown = panels(fig)
    assert list(shown) == ["loss", "score", "learn_rate"]
    for metric, lines in shown.items():
        assert [line.get_label() for line in lines] == ["cosine", "cyclic"]
        for line, name in zip(lines, ("cosine", "cyclic")):
            logged = metrics(runs[name])
            assert list(line.get_xdata()) == [r["step"] for r in logged]
            assert list(line.get_ydata()) == [r[metric] for r in logged]
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == ["cosine", "cyclic"]
    # the schedules differ, and so do the drawn learning rates
    cosine, cyclic = shown["learn_rate"]
    assert list(cosine.get_ydata()) != list(cyclic.get_ydata())


def test_other_scheduled_hyperparameters_get_a_panel(runs):
    fig = make_figure(load_runs([runs["cosine"], runs["l2"]]), [])
    shown = panels(fig)
    assert list(shown) == ["loss", "score", "learn_rate", "L2"]
    assert [line.get_label() for line in shown["L2"]] == ["l2"]  # only it logs L2
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["cosine", "l2"]


def test_chosen_metrics_only(runs):
    fig = make_figure(load_runs([runs["cosine"]]), ["score", "steps_per_sec"])
    assert list(panels(fig)) == ["score", "steps_per_sec"]


def test_sweep_trials_are_labelled_by_the_values_that_differ(runs):
    for given in ([runs["sweep"]], sorted((runs["sweep"] / "trials").iterdir())):
        fig = make_figure(load_runs(given), ["loss"])
        labels = ["initial_rate=0.01", "initial_rate=0.003"]  # only what was swept
        assert [line.get_label() for line in panels(fig)["loss"]] == labels


def test_a_sweeps_legend_fits_the_picture(runs, tmp_path):
    # Four trials with long labels: the legend stays inside the figure.
    points = [(0.8, 0.003), (0.8, 0.01), (0.9, 0.003), (0.9, 0.01)]
    for i, (b1, rate) in enumerate(points):
        trial = tmp_path / "wide" / "trials" / f"{i}-initial_rate={rate}-beta1={b1}"
        make_run(trial, {"beta1": b1}, **{"optimizer.learn_rate.initial_rate": rate})
    fig = make_figure(load_runs([tmp_path / "wide"]), ["loss"])
    fig.canvas.draw()
    box = fig.legends[0].get_window_extent()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
    text = runner.invoke(app, ["plot", str(tmp_path / "wide"), "--metric", "loss"])
    assert text.exit_code == 0 and "beta1=0.8, initial_rate=0.003" in text.output
    assert max(len(line) for line in text.output.splitlines()) <= 100


@pytest.mark.parametrize("suffix, magic", [("png", PNG), ("svg", b"<?xml"),
                                           ("pdf", b"%PDF")])  # fmt: skip
def test_the_cli_writes_the_file(runs, tmp_path, suffix, magic):
    out = tmp_path / f"two.{suffix}"
    args = ["plot", str(runs["cosine"]), str(runs["cyclic"]), "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(magic)
    assert f"wrote {out} (2 runs)" in result.output


def test_the_png_shows_both_runs(runs, tmp_path):
    """The file from the CLI and the figure from the library are the same
    picture, of the same size, with both runs' colours in it."""
    out = tmp_path / "two.png"
    args = ["plot", str(runs["cosine"]), str(runs["cyclic"]), "-o", str(out),
            "--metric", "loss", "--metric", "learn_rate"]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    import matplotlib.image

    pixels = matplotlib.image.imread(out)
    fig = make_figure(load_runs([runs["cosine"], runs["cyclic"]]),
                      ["loss", "learn_rate"])  # fmt: skip
    width, height = fig.get_size_inches() * 120
    assert pixels.shape[:2] == (round(height), round(width))
    # both runs' colours are drawn (matplotlib's first two cycle colours)
    colors = {tuple((p[:3] * 255).round().astype(int)) for p in pixels.reshape(-1, 4)}
    assert (31, 119, 180) in colors and (255, 127, 14) in colors


def test_a_terminal_chart_without_output(runs):
    args = ["plot", str(runs["cosine"]), str(runs["cyclic"]), "-m", "loss", "-m",
            "learn_rate"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "• cosine  x cyclic"
    titles = [line.strip() for line in lines if line.strip() in ("loss", "learn_rate")]
    assert titles == ["loss", "learn_rate"]
    body = "\n".join(lines[1:])
    assert "•" in body and "x" in body and "step" in body
    assert "\x1b[" not in result.output  # plain in a pipe


def test_unknown_metric_names_the_ones_there_are(runs):
    result = runner.invoke(app, ["plot", str(runs["cosine"]), "-m", "los"])
    assert result.exit_code == 1
    assert "no run logged a metric named 'los'" in result.output
    assert "loss" in result.output and "Traceback" not in result.output


def test_refusals_are_one_sentence(runs, tmp_path):
    cases = [
        (["plot", str(runs["cosine"]), "-o", str(tmp_path / "a.jpg")], "ending in"),
        (["plot", str(tmp_path / "nope")], "does not exist"),
        (["plot", str(tmp_path)], "holds no run"),
        (["plot", str(runs["failed"])], "no evaluations logged yet"),
        (["plot", str(runs["cosine"]), "-o", str(tmp_path / "x" / "a.png")],
         "does not exist"),
    ]  # fmt: skip
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_without_matplotlib_the_error_names_the_extra(runs, monkeypatch, tmp_path):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtraError, match=r"pip install 'optsvc\[plot\]'"):
        make_figure(load_runs([runs["cosine"]]), [])
    result = runner.invoke(app, ["plot", str(runs["cosine"]), "-o", "x.png"])
    assert result.exit_code == 1
    assert "pip install 'optsvc[plot]'" in result.output
    # the terminal chart does not need it
    assert runner.invoke(app, ["plot", str(runs["cosine"])]).exit_code == 0


def test_plot_error_is_a_user_error():
    assert issubclass(ConfigError, OptsvcError)
    assert issubclass(MissingExtraError, ImportError)
