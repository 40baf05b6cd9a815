"""Whole models (`save_model` / `load_model`): checksums, interrupted saves, dtype errors, the input contract."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import models
from jaxnets.contract import InputContract
from jaxnets.data import catalog
from jaxnets.models.saving import InterruptedSaveWarning, UnverifiedModelWarning, read_contract
from jaxnets.training import CheckpointError, load_model, save_model

REPO = Path(__file__).resolve().parents[1]


def _mlp(seed: int = 0) -> dict:
    return models.init(models.create("mlp"), jax.random.key(seed))


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _array_file(folder: Path) -> Path:
    """The largest file under `variables/`: the one holding the weights."""
    return max((p for p in (folder / "variables").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_a_flipped_byte_in_a_saved_model_is_caught_by_its_checksum(tmp_path):
    """One byte of the arrays changed after saving: load_model raises CheckpointError naming the folder."""
    path = save_model(tmp_path / "net", "mlp", _mlp())
    info = json.loads((path / "model.json").read_text())
    assert info["checksum"]["algorithm"] == "sha256-of-arrays/1" and len(info["checksum"]["value"]) == 64
    target = _array_file(path)
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    target.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"{path}.*corrupt"):
        load_model(path)


def test_a_changed_checksum_is_caught_and_a_missing_one_warns(tmp_path):
    """Arrays that differ from the saved checksum are refused; an older folder without a checksum loads with
    a warning.
    """
    variables = _mlp()
    path = save_model(tmp_path / "net", "mlp", variables)
    info = json.loads((path / "model.json").read_text())
    (path / "model.json").write_text(json.dumps({**info, "checksum": {**info["checksum"], "value": "0" * 64}}))
    with pytest.raises(CheckpointError, match="do not match the checksum saved with them"):
        load_model(path)
    del info["checksum"]
    (path / "model.json").write_text(json.dumps(info))
    with pytest.warns(UnverifiedModelWarning, match="no checksum"):
        _, loaded = load_model(path)
    assert _same(loaded, variables)


def test_save_model_names_a_wrong_dtype_as_the_dtype(tmp_path):
    """float16 variables: the error says it is the dtype (which variable, which dtype, how to cast), not keys/shapes."""
    half = jax.tree.map(lambda a: a.astype(jnp.float16), _mlp())
    with pytest.raises(ValueError, match=r"wrong dtype: .*hidden\.0.* is float16, mlp's variables are float32.*astype"):
        save_model(tmp_path / "net", "mlp", half)
    with pytest.raises(ValueError, match=r"wrong keys: .*conv1.* is missing"):
        save_model(tmp_path / "net", "lenet", _mlp())
    assert not (tmp_path / "net").exists()


def test_an_exception_between_the_two_renames_puts_the_old_model_back(tmp_path, monkeypatch):
    """The second rename fails (not a kill): the old model is back at the path, nothing is left beside it."""
    old, new = _mlp(0), _mlp(1)
    path = save_model(tmp_path / "net", "mlp", old)
    real = __import__("os").replace
    calls = []

    def failing_replace(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("simulated failure of the second rename")
        return real(src, dst)

    monkeypatch.setattr("jaxnets.models.saving.os.replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        save_model(path, "mlp", new, overwrite=True)
    monkeypatch.undo()
    assert _same(load_model(path)[1], old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net"]


_KILLED_SAVE = textwrap.dedent("""
    import os, sys
    import jax
    from jaxnets import models
    from jaxnets.models import saving
    real, calls = os.replace, []
    def replace(src, dst):
        calls.append(src)
        if len(calls) == int(sys.argv[2]):
            os._exit(9)  # killed at this rename: no exception handler, no finally
        return real(src, dst)
    saving.os.replace = replace
    saving.save_model(sys.argv[1], "mlp", models.init(models.create("mlp"), jax.random.key(1)), overwrite=True)
""")


@pytest.mark.parametrize(("kill_at", "expect_new"), [(2, True), (1, False)], ids=["between-renames", "first-rename"])
def test_save_model_killed_midway_is_recovered_by_the_next_load(tmp_path, kill_at, expect_new):
    """A child process dies at save_model's second (or first) rename; load_model completes or rolls it back.

    Killed between the renames, nothing is at the path and the old and new models lie in hidden folders: the
    next load_model moves the complete new model into place and removes the old one. Killed at the first
    rename, the old model is intact and the new one's folder is named with the commands to use or drop it.
    """
    path = save_model(tmp_path / "net", "mlp", _mlp(0))
    result = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(path), str(kill_at)], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 9, result.stderr
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert hidden and all(".net.saving-" in h or ".net.replaced-" in h for h in hidden)
    assert path.exists() != expect_new  # between the renames: nothing at the path
    with pytest.warns(InterruptedSaveWarning) as caught:
        _, loaded = load_model(path)
    assert _same(loaded, _mlp(1) if expect_new else _mlp(0))
    text = " ".join(str(w.message) for w in caught)
    if expect_new:
        assert "finished a save_model" in text
        assert sorted(p.name for p in tmp_path.iterdir()) == ["net"]
    else:
        assert "rm -r" in text and "mv" in text  # the complete new model is named with the exact commands
        with pytest.warns(InterruptedSaveWarning) as caught:
            save_model(path, "mlp", _mlp(2), overwrite=True)  # a later save replaces both
        assert "superseded by this save" in " ".join(str(w.message) for w in caught)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["net"]


def test_a_dead_savers_old_model_is_put_back_when_the_new_one_is_incomplete(tmp_path):
    """Only the moved-aside old model survives (the new one never completed): load_model puts it back."""
    variables = _mlp(0)
    saved = save_model(tmp_path / "keep", "mlp", variables)
    saved.rename(tmp_path / ".net.replaced-999999")  # an old-style name, a pid that is not running
    (tmp_path / ".net.saving-999999").mkdir()  # incomplete: no model.json
    with pytest.warns(InterruptedSaveWarning) as caught:
        _, loaded = load_model(tmp_path / "net")
    assert _same(loaded, variables)
    text = " ".join(str(w.message) for w in caught)
    assert "put back" in text and "removed" in text and ".net.saving-999999" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net"]


# ---------------------------------------------------------------- the input contract

def test_save_model_stores_the_input_contract_asked_of_the_data_catalog(tmp_path):
    """`dataset=` asks the catalog for shape, normalisation and class names; load gives the same contract back."""
    kwargs = {"num_classes": 10}
    model = models.create("lenet5", **kwargs)
    variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
    path = save_model(tmp_path / "m", "lenet5", variables, dataset="cifar10", **kwargs)
    contract = read_contract(path)
    entry = catalog.get("cifar10")
    assert contract.image_shape == entry.image_shape and contract.class_names == entry.class_names
    assert (contract.mean, contract.std) == entry.normalization
    with pytest.raises(ValueError, match="names 100 classes"):
        save_model(tmp_path / "bad", "lenet5", variables, dataset="cifar100", **kwargs)
    with pytest.raises(ValueError, match=r"images \[28, 28, 1\] do not fit"):
        save_model(tmp_path / "bad", "lenet5", variables, dataset="mnist", **kwargs)
    assert read_contract(save_model(tmp_path / "none", "lenet5", variables, **kwargs)) is None


def test_input_contract_json_round_trip_and_errors():
    """A contract survives JSON; a malformed one names the field."""
    contract = InputContract.for_dataset("mnist", "half")
    assert InputContract.from_json(json.loads(json.dumps(contract.to_json()))) == contract
    assert contract.mean == (0.5,) and contract.class_names == catalog.get("mnist").class_names
    assert InputContract.for_dataset("digits").mean is None  # not tabled: only the run's images say it
    with pytest.raises(ValueError, match="lacks mean"):
        InputContract.from_json({"image_shape": [2]})
    with pytest.raises(ValueError, match="one value per channel"):
        InputContract((28, 28, 1), (0.1, 0.2), (0.3, 0.3))


def test_a_runs_contract_reaches_the_model_folder_and_every_export(tmp_path, capsys):
    """fit returns its contract (digits: normalisation computed from the run's own training images); it goes into
    the checkpoints' metadata and, via save_model(contract=...), into the model folder; exports from the run
    folder and from the model folder record that same normalisation and the class names, with no note."""
    from jaxnets import export
    from jaxnets.cli import export as export_cli
    from jaxnets.training import TrainConfig, fit

    config = TrainConfig(model="mlp", dataset="digits", epochs=1, batch_size=64, seed=3)
    result = fit(config, workdir=tmp_path / "run", log=lambda _: None)
    contract = result.contract
    assert contract.dataset == "digits" and contract.image_shape == (28, 28, 1) and contract.mean is not None
    assert catalog.get("digits").normalization is None  # so the run's numbers are the only source
    folder = save_model(tmp_path / "model", "mlp", result.state.variables, contract=contract,
                        **result.config.model_kwargs)
    assert read_contract(folder) == contract
    for source, out in ((tmp_path / "run", tmp_path / "run.jaxexport"), (folder, tmp_path / "model.jaxexport")):
        assert export_cli.main(["--from", str(source), "-o", str(out), "--no-stablehlo"]) == 0
        info = export.read_info(out)
        assert info["normalization"]["mean"] == list(contract.mean) and info["note"] is None
        assert info["input_contract"]["class_names"] == list(catalog.get("digits").class_names)
    assert "warning" not in capsys.readouterr().err


def test_the_cli_reports_a_repaired_save_in_one_line(tmp_path, capsys):
    """jaxnets-export on a path a killed save left empty: the repair is one `warning:` line, then the export runs."""
    from jaxnets.cli import export as export_cli

    save_model(tmp_path / "keep", "mlp", _mlp(0)).rename(tmp_path / ".net.replaced-999999")
    assert export_cli.main(["--from", str(tmp_path / "net"), "-o", str(tmp_path / "m.jaxexport"),
                            "--no-stablehlo"]) == 0
    err = capsys.readouterr().err
    assert "jaxnets-export: warning: put back the model a killed save_model" in err and "Warning:" not in err
