"""Sphinx configuration of the jaxnets documentation.

Why Sphinx + myst-nb: it is the convention of the libraries jaxnets is built on (jax, flax and optax
write their docs this way), so a JAX user finds the same layout; myst-nb renders the project's own
notebooks as pages and lets the guides be Markdown; autodoc + napoleon read the Google-style
docstrings that are already in the code; sphinx-argparse builds the CLI reference from the real
argparse parsers, so it cannot drift from the code.

Build (what .ci/run does):  python -m sphinx -W --keep-going -n -b html docs docs/_build/html
"""

import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # build from the checkout without installing it

import jaxnets  # noqa: E402

project = "jaxnets"
author = "the jaxnets authors"
copyright = "the jaxnets authors"
version = release = jaxnets.__version__

extensions = [
    "myst_nb",                  # Markdown pages and notebooks
    "sphinx.ext.autodoc",       # the API reference from docstrings
    "sphinx.ext.napoleon",      # Google-style docstrings
    "sphinx.ext.viewcode",      # [source] links
    "sphinxarg.ext",            # the CLI reference from the argparse parsers
    "public_api",               # the API pages from __all__, and the docstring check
    "bench_plot",               # the eager vs jit plot, from the README's benchmark table
]

# Notebooks are rendered unexecuted: tests/test_notebooks.py executes every one in CI already, and
# executing them here would double that time.
nb_execution_mode = "off"
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "notebooks/*.png"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"show-inheritance": False}
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# jaxnets' "Returns:" sections are prose ("`{'params': ...}`: the variables"), not "type: text": read as
# a plain section, napoleon would take the text before the first colon for a type.
napoleon_custom_sections = ["Returns", "Yields"]
# `x` in a docstring is code, as it is in Markdown (reStructuredText would set it in italics).
default_role = "literal"
# Keep "--flag" as typed (the CLI reference and code-like text), not turned into an en dash.
smartquotes = False

# -n: every cross-reference must resolve. Types of other libraries cannot: the build runs offline (CI has no
# network for intersphinx inventories), so references into the standard library and the libraries jaxnets'
# signatures name (jax, flax, optax, numpy) are not checked. Any reference into jaxnets still has to resolve.
_THIRD_PARTY = ("jax", "flax", "optax", "numpy", "np", "pathlib", "os", "collections", "typing")
nitpick_ignore_regex = [
    (r"py:.*", rf"({'|'.join(map(re.escape, _THIRD_PARTY))})(\..+)?"),
    # A "Raises:" entry written as prose ("CorruptDataFile / UnsafePickle: ...") is no Python name.
    (r"py:.*", r".*[\s/].*"),
    # Type variables and private base classes in signatures are not part of the API reference.
    (r"py:.*", r"jaxnets(\.\w+)*\.(T|_\w+)"),
]

html_theme = "sphinx_book_theme"
html_title = f"jaxnets {release}"
html_theme_options = {"show_toc_level": 2, "navigation_with_keys": False}
html_static_path = ["_static"]
html_css_files = ["jaxnets.css"]
os.environ.setdefault("JAXNETS_COMPILE_CACHE", "0")


NOTEBOOK_NOTE = ("This notebook is shown unexecuted (the repository keeps it without outputs). CI runs every "
                 "notebook top to bottom in tests/test_notebooks.py; run it yourself to see its output and plots.")


def _note_on_notebooks(app, doctree) -> None:
    """Put NOTEBOOK_NOTE under the title of every notebook page."""
    from docutils import nodes

    if not app.env.docname.startswith("notebooks/"):
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is not None:
        section.insert(1, nodes.note("", nodes.paragraph(text=NOTEBOOK_NOTE)))


def setup(app):
    app.connect("doctree-read", _note_on_notebooks)
