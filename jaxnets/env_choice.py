"""Read a jaxnets switch from the environment: one of a few words, checked, with the default when unset."""
from __future__ import annotations

import os


def env_choice(variable: str, choices: tuple[str, ...], hint: str, environ: dict | None = None) -> str:
    """The value of `variable` (stripped, lower case), or `choices[0]` when it is unset or empty.

    Raises:
      ValueError: the variable holds something not in `choices`; the message lists them and adds `hint`.
    """
    value = (os.environ if environ is None else environ).get(variable, "").strip().lower() or choices[0]
    if value not in choices:
        raise ValueError(f"{variable}={value!r} is not understood; use one of {choices} ({hint})")
    return value
