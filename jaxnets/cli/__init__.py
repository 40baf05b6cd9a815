"""The command-line entry points, side by side, each thin over the library.

| command | module |
|---|---|
| `jaxnets-train` | `jaxnets.cli.train` (`python -m jaxnets.cli.train`) |
| `jaxnets-bench` | `jaxnets.cli.bench` |
| `jaxnets-convert` | `jaxnets.cli.convert` |
| `jaxnets-export` | `jaxnets.cli.export` |
"""
