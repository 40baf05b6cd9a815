"""`.ci/device-check`, the prepared GPU-table script, dry-run on this machine (no GPU needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "device-check"


@pytest.mark.slow  # two bench processes: CI runs it, the quick lane does not
def test_each_table_is_kept_and_one_that_runs_out_of_time_fails_the_script(tmp_path):
    # The first table finishes; the second gets 1 s, too little to import JAX: the script reports it and exits
    # non-zero, and the first table's rows are still in tables.json.
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "DEVICE_MODES": "jit", "DEVICE_BATCHES": "8",
           "DEVICE_PLAN": "float32:mlp:300 float32:lenet:1", "DEVICE_BENCH_ARGS": "--steps 2"}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "== lenet, float32: did not finish (exit 124)" in done.stdout
    tables = json.loads((tmp_path / "tables.json").read_text())
    assert [[(row["model"], row["mode"], row["batch_size"]) for row in table["rows"]] for table in tables] == [
        [("mlp", "jit", 8)]]
    assert tables[0]["rows"][0]["step_s_median"] > 0
    env_txt = (tmp_path / "env.txt").read_text()
    assert "jax" in env_txt and "optax" in env_txt
    assert "| mlp | train | 8 | jit |" in (tmp_path / "tables.log").read_text()
