"""`python -m train`: the project's top-level `train/` entry, kept thin.

The command itself lives with the other commands in `jaxnets.cli`
(`jaxnets.cli.train`); this package only forwards to it.
"""
