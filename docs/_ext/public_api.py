"""The public names of each jaxnets package, and the check that every one has a docstring.

`public_names(package)` reads a package's `__all__`; `missing_docstrings()` lists the public names
that have no docstring. Functions, classes and modules must carry their own `__doc__` (a dataclass's
generated signature does not count); a constant (a tuple, a dict, a number) cannot carry one, so its
documentation is the comment block directly above its assignment, a `#:` comment, or a string
right after it, in the module that assigns it. As a Sphinx extension this module fails the build
(a warning, fatal under `-W`) on any undocumented public name, and hands constants their comment as
autodoc's docstring.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
from functools import cache
from pathlib import Path

PACKAGES = ("jaxnets.models", "jaxnets.data", "jaxnets.training", "jaxnets.interop", "jaxnets.export",
            "jaxnets.bench")


def public_names(package: str) -> list[str]:
    """The names in `package.__all__`, in their written order."""
    module = importlib.import_module(package)
    names = getattr(module, "__all__", None)
    if names is None:
        raise ValueError(f"{package} has no __all__: list its public names there")
    return list(names)


def _is_constant(value) -> bool:
    return not (inspect.isclass(value) or inspect.ismodule(value) or callable(value))


def own_docstring(value) -> str:
    """`value`'s own docstring (not inherited, not a dataclass's generated signature); '' when none."""
    doc = value.__dict__.get("__doc__") if inspect.isclass(value) else getattr(value, "__doc__", None)
    if not isinstance(doc, str):
        return ""
    if inspect.isclass(value) and doc.startswith(f"{value.__name__}("):  # dataclasses write the signature
        return ""
    return inspect.cleandoc(doc)


@cache
def _constant_docs(package: str) -> dict[str, str]:
    """{NAME: comment} for every top-level assignment in the package's modules that carries a comment."""
    module = importlib.import_module(package)
    files = [module.__file__]
    if hasattr(module, "__path__"):  # read the submodules' sources without importing them (torch_models needs torch)
        files += [importlib.util.find_spec(info.name).origin
                  for info in pkgutil.iter_modules(module.__path__, package + ".") if not info.ispkg]
    docs: dict[str, str] = {}
    for file in files:
        source = Path(file).read_text()
        lines = source.splitlines()
        body = ast.parse(source).body
        for index, node in enumerate(body):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            for target in targets:
                if not isinstance(target, ast.Name) or target.id in docs:
                    continue
                docs[target.id] = _comment_for(node, body[index + 1] if index + 1 < len(body) else None, lines)
    return {name: doc for name, doc in docs.items() if doc}


def _comment_for(node, following, lines: list[str]) -> str:
    if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)):
        return inspect.cleandoc(following.value.value)
    first = lines[node.lineno - 1]
    if "#:" in first:
        return first.split("#:", 1)[1].strip()
    above = []
    row = node.lineno - 2
    while row >= 0 and lines[row].lstrip().startswith("#"):
        above.insert(0, lines[row].lstrip().lstrip("#").lstrip(":").strip())
        row -= 1
    return " ".join(above)


@cache
def _init_names(package: str) -> tuple[dict[str, str], dict[str, str]]:
    """From the package's `__init__`: ({alias: original} of `import X as alias`, {key: function doc} of views).

    A view is a name the module's `__getattr__` computes when read, from a module-level dict of functions
    (`{"DATASETS": catalog.names}`): it takes the function's docstring.
    """
    module = importlib.import_module(package)
    aliases, views = {}, {}
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.ImportFrom):
            aliases.update({alias.asname: alias.name for alias in node.names if alias.asname})
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    target = eval(compile(ast.Expression(value), package, "eval"), vars(module))
                    if callable(target) and own_docstring(target):
                        views[key.value] = "Computed when read: " + own_docstring(target)
    return aliases, views


def docstring_of(package: str, name: str) -> str:
    """The documentation of `package.name`: its own docstring, or for a constant its comment."""
    value = getattr(importlib.import_module(package), name)
    if not _is_constant(value):
        return own_docstring(value)
    aliases, views = _init_names(package)
    return views.get(name) or _constant_docs(package).get(aliases.get(name, name), "")


def missing_docstrings(packages=PACKAGES) -> list[str]:
    """`package.name` for every public name without documentation, sorted."""
    return sorted(f"{package}.{name}" for package in packages for name in public_names(package)
                  if not docstring_of(package, name))


# ------------------------------------------------------------------------------------------------- Sphinx
def _check(app) -> None:
    from sphinx.util import logging

    log = logging.getLogger(__name__)
    for name in missing_docstrings():
        log.warning(f"public name without a docstring: {name} (write one; constants take a comment above)",
                    type="jaxnets", subtype="docstring")


def _constant_docstring(app, what, name, obj, options, lines) -> None:
    if what not in ("data", "attribute"):
        return
    package, _, short = name.rpartition(".")
    if package in PACKAGES:  # autodoc falls back to the value's type's docstring (dict's, tuple's): replace it
        lines[:] = docstring_of(package, short).splitlines()


def api_page(package: str) -> str:
    """The MyST source of `package`'s API page: one autodoc directive per public name, in `__all__` order."""
    module = importlib.import_module(package)
    out = [f"# `{package}`", "", "<!-- generated by docs/_ext/public_api.py from __all__: do not edit -->", "",
           "```{eval-rst}", f".. automodule:: {package}", "   :no-members:", "```", ""]
    for name in public_names(package):
        value = getattr(module, name)
        target = f"{package}.{name}"
        if inspect.ismodule(value):
            out += [f"## `{name}`", "", "```{eval-rst}", f".. automodule:: {value.__name__}", "   :members:",
                    "   :no-index:" if value.__name__ != target else "", "```", ""]
            continue
        if inspect.isclass(value):
            kind = "autoexception" if issubclass(value, BaseException) else "autoclass"
            options = ["   :members:", "   :exclude-members: __init__, __new__"]
        elif callable(value):
            kind, options = "autofunction", []
        else:
            kind, options = "autodata", ["   :no-value:"]
        out += ["```{eval-rst}", f".. {kind}:: {target}", *options, "```", ""]
    return "\n".join(out)


def _write_api_pages(app) -> None:
    """Write docs/api/<package>.md for each package (only when changed, so Sphinx's cache stays valid)."""
    folder = Path(app.srcdir) / "api"
    folder.mkdir(exist_ok=True)
    for package in PACKAGES:
        path = folder / f"{package.split('.', 1)[1]}.md"
        text = api_page(package)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def _canonical_reference(app, env, node, contnode):
    """Resolve `jaxnets.training.state.TrainState` (where a class is defined) to `jaxnets.training.TrainState`.

    Type hints name an object where it is defined; the API pages document it where users import it from
    (the package, through `__all__`). This tries the target's shorter prefixes.
    """
    from sphinx.util.nodes import make_refnode

    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not target.startswith("jaxnets."):
        return None
    objects = env.get_domain("py").objects
    parts = target.split(".")
    for cut in range(len(parts) - 2, 0, -1):
        candidate = ".".join(parts[:cut] + parts[-1:])
        if candidate in objects:
            entry = objects[candidate]
            return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, candidate)
    return None


def setup(app):
    app.connect("builder-inited", _check)
    app.connect("builder-inited", _write_api_pages)
    app.connect("autodoc-process-docstring", _constant_docstring)
    app.connect("missing-reference", _canonical_reference)
    return {"parallel_read_safe": True}
