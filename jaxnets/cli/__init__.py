"""Command-line entry points (`jaxnets-train`, `python -m train`), thin over `jaxnets`."""
