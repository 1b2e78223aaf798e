"""The public surface: every exported name imports, and every docstring
example runs."""

import doctest
import importlib
import pkgutil

import pytest

import optsvc


@pytest.mark.parametrize("name", optsvc.__all__)
def test_every_public_name_imports(name):
    assert getattr(optsvc, name) is not None


def test_all_lists_the_contract():
    contract = {
        "Optimizer", "SGD", "Adam", "RAdam", "Schedule", "constant", "constant_then",
        "decaying", "compounding", "warmup_linear", "slanted_triangular",
        "cyclic_triangular", "plateau", "registry", "NumpyOps", "CupyOps",
        "get_current_ops", "use_ops", "require_gpu", "prefer_gpu",
    }  # fmt: skip
    assert contract <= set(optsvc.__all__)


MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(optsvc.__path__, "optsvc.")
    if m.name != "optsvc.backends.cuda_kernels"
)


@pytest.mark.parametrize("module", ["optsvc", *MODULES])
def test_docstring_examples_run(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_public_callables_have_docstrings():
    missing = [
        name
        for name in optsvc.__all__
        if callable(getattr(optsvc, name)) and not getattr(optsvc, name).__doc__
    ]
    assert missing == []


def test_only_the_registry_imports_confection():
    # registry.py is the glue and config.py reads config files; the optimizer,
    # schedules, state and backends do not depend on confection.
    import pathlib

    root = pathlib.Path(optsvc.__file__).parent
    importers = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "import confection" in p.read_text() or "from confection" in p.read_text()
    )
    assert importers == ["config/parse.py", "config/registry.py"]
