"""TensorBoard logs and the learning rate in the history (issue: real accuracy, TensorBoard)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jaxnets.cli import train as cli
from jaxnets.training import TrainConfig, fit
from jaxnets.training.tensorboard import SCALARS


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every event file under `logdir`, read with TensorBoard's own reader."""
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_cli_writes_tensorboard_scalars_config_and_lr(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = cli.main(["--model", "mlp", "--epochs", "2", "--batch-size", "64", "--schedule", "cosine", "--lr", "0.01",
                     "--no-progress", "--workdir", str(workdir)])
    assert code == 0
    history = json.loads((workdir / "history.json").read_text())
    scalars = _scalars(workdir / "tensorboard")
    assert set(SCALARS.values()) <= set(scalars), set(SCALARS.values()) - set(scalars)
    for key, tag in SCALARS.items():
        assert [step for step, _ in scalars[tag]] == [1, 2], tag
        assert [value for _, value in scalars[tag]] == pytest.approx([h[key] for h in history], rel=1e-6), tag
    # the learning rate: cosine decay from 0.01, last step of each epoch, in history, epoch line and TensorBoard
    lrs = [h["lr"] for h in history]
    assert 0 < lrs[1] < lrs[0] < 0.01
    assert "lr 0.00" in capsys.readouterr().out
    events = EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"model": "mlp"' in config_text and '"schedule": "cosine"' in config_text


def test_no_tensorboard_and_resume_purges_later_epochs(tmp_path):
    config = TrainConfig(model="mlp", epochs=2, batch_size=64, schedule="constant")  # a schedule that resumes longer
    fit(dataclasses.replace(config, epochs=1), workdir=tmp_path / "off", log=lambda _: None, tensorboard=False)
    assert not (tmp_path / "off" / "tensorboard").exists()

    run = tmp_path / "run"
    fit(config, workdir=run, log=lambda _: None)
    fit(dataclasses.replace(config, epochs=3), workdir=run, resume=True, log=lambda _: None)
    scalars = _scalars(run / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3]  # one point per epoch, none twice


@pytest.mark.slow  # fresh processes: mostly Python and JAX start-up
def test_the_writer_loads_without_pytorch_and_pytorch_still_loads_after(tmp_path):
    """tensorboardX's own `import torch` (1-2 s per run) is skipped; the user's later `import torch` works."""
    import subprocess
    import sys

    torch_installed = __import__("importlib.util").util.find_spec("torch") is not None
    code = (
        "import sys\n"
        "from jaxnets.training.tensorboard import TensorBoard\n"
        f"board = TensorBoard({str(tmp_path)!r}, {{'model': 'mlp'}})\n"
        "board.write_epoch({'epoch': 1, 'train_loss': 0.5})\n"
        "board.close()\n"
        "assert 'torch' not in sys.modules, 'tensorboardX pulled in torch'\n"
        f"if {torch_installed}:\n"
        "    import torch\n"
        "    assert torch.ones(2).sum().item() == 2.0\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    assert _scalars(tmp_path) == {"train/loss": [(1, 0.5)]}
