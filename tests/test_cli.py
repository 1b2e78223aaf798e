"""The command line through Typer's CliRunner and one real subprocess."""

import subprocess
import sys

from optsvc_cli.main import app
from typer.testing import CliRunner

import optsvc

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"optsvc {optsvc.__version__}"


def test_help_explains():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Thinc-compatible" in result.output and "registry" in result.output


def test_registry_help_and_listing():
    assert "Example" in runner.invoke(app, ["registry", "--help"]).output
    result = runner.invoke(app, ["registry"])
    assert result.exit_code == 0
    assert "Adam.v1" in result.output and "warmup_cosine.v1" in result.output


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "optsvc_cli.main", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("optsvc ")
