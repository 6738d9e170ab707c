"""Shared fixtures: the shipped specs generated once per session into a temporary package; the shipped specs
under `@function`, surveyed and generated once per session (`function_derivation`); a raw stdio session of
`layerdsl lsp` (`stdio_lsp`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from layerdsl.driver.pipeline import check as check_specs
from layerdsl.testing import function_coverage
from layerdsl.testing import layer_checks as checks
from tests.lsp_session import StdioServer, initialised_stdio_server

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
PACKAGE = "layerdsl_generated_under_test"

_sources, _files, _program = check_specs([str(SPECS)])
# by name; `folder/Name` where a shallower folder's layer has the name too (specs/torch_nn/'s RMSNorm)
CASES = {_program.key(c.layer): c for c in checks.cases(_files, _sources)}


@pytest.fixture(scope="session")
def package(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("gen")
    checks.generate_package([str(SPECS)], root, PACKAGE)
    return PACKAGE


@pytest.fixture(scope="session")
def gen(package):
    """The generated package, imported."""
    import importlib

    return importlib.import_module(package)


@pytest.fixture(scope="session")
def function_derivation(tmp_path_factory) -> function_coverage.Derivation:
    """Every layer of the shipped specs compiled with `@function` (function_coverage.derive): the survey and
    the derived layers' generated package, which tests/test_function_coverage.py compares with autograd and
    tests/test_function_prelude.py reads."""
    return function_coverage.derive(SPECS, tmp_path_factory.mktemp("function_coverage"))


@pytest.fixture
def stdio_lsp() -> Iterator[StdioServer]:
    """A `layerdsl lsp` subprocess spoken to in raw frames, initialised without a workspace folder
    (tests/lsp_session.py)."""
    yield from initialised_stdio_server()
