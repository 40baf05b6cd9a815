"""The documentation's checks that need no Sphinx: every public name is documented."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def public_api():
    spec = importlib.util.spec_from_file_location("public_api", ROOT / "docs" / "_ext" / "public_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_has_a_docstring(public_api):
    """Each name in the `__all__` of models, data, training, interop, export and bench has its own docstring
    (a constant: the comment above its assignment); the docs build fails on the same list."""
    assert public_api.missing_docstrings() == []


def test_the_check_sees_a_missing_docstring(public_api, tmp_path, monkeypatch):
    """The check is not vacuous: in a package of its own, a function and a dataclass without docstrings and a
    constant without a comment are reported; their documented twins are not."""
    package = tmp_path / "undocumented_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        '"""A package."""\n'
        "import dataclasses\n\n"
        "def bare(): pass\n\n"
        'def told():\n    """Has one."""\n\n'
        "@dataclasses.dataclass\nclass Generated:\n    x: int = 0\n\n"
        "LIMIT = 3\n"
        "# The splits.\nSPLITS = ('a',)\n"
        '__all__ = ["bare", "told", "Generated", "LIMIT", "SPLITS"]\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert public_api.missing_docstrings(["undocumented_pkg"]) == [
        "undocumented_pkg.Generated", "undocumented_pkg.LIMIT", "undocumented_pkg.bare"]
    assert public_api.docstring_of("undocumented_pkg", "SPLITS") == "The splits."
