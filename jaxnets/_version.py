"""The version of jaxnets: the one place it is written (pyproject.toml and `jaxnets.__version__` read it)."""

__version__ = "0.1.0"
