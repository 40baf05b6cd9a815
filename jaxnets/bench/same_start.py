"""Same start, same batches: a model's first training steps in jaxnets and in PyTorch, loss by loss.

Tells a bug from a recipe. jaxnets initialises the model; PyTorch's twin
(`interop.torch_models.create`) gets those very weights (`interop.to_torch`);
both then take the same shuffled, normalised batches (no augmentation) with
torch-semantics SGD (`optimizers.sgd`) against `torch.optim.SGD`, and the
per-step training losses are printed side by side. Equal early losses, then a
slow chaotic drift (float32 training amplifies rounding), mean the two train
alike, whatever the losses do.

    python -m jaxnets.bench.same_start --model vgg16_bn --dataset cifar10 --data-dir /tmp/cifar10jpg \\
        --steps 30 --lr 0.1 --json same-start.json
"""

from __future__ import annotations

import argparse
import sys

import jax.numpy as jnp
import numpy as np

from jaxnets import data, models, report
from jaxnets.bench import host
from jaxnets.data import Batch
from jaxnets.training import TrainState, make_steps, optimizers


def batches(dataset: str, data_dir: str | None, steps: int, batch_size: int, seed: int = 0) -> list[tuple]:
    """`steps` batches `(images NHWC float32 normalised, labels int32)` drawn without replacement, seeded.

    Normalised with the data set's catalog statistics (`data.Preprocess.for_dataset`), as training does.
    """
    split = data.load(dataset, "train", data_dir=data_dir)
    if steps * batch_size > len(split.labels):
        raise ValueError(f"{steps} steps of {batch_size} need {steps * batch_size} images; "
                         f"{dataset} has {len(split.labels)}")
    order = np.random.default_rng(seed).permutation(len(split.labels))[: steps * batch_size]
    config = data.Preprocess.for_dataset(dataset, split.images)
    mean, std = np.asarray(config.mean, np.float32), np.asarray(config.std, np.float32)
    images = (split.images[order].astype(np.float32) / 255.0 - mean) / std
    labels = split.labels[order].astype(np.int32)
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(order), batch_size)]


def run(model_name: str, data_batches: list[tuple], lr: float = 0.1, momentum: float = 0.9,
        weight_decay: float = 5e-4, seed: int = 0) -> dict:
    """Train both frameworks from jaxnets' initial weights; returns per-step losses (floats) for each.

    Returns:
      `{"model", "lr", "momentum", "weight_decay", "jaxnets": [...], "torch": [...]}`, one loss per batch.
    """
    import torch  # optional

    from jaxnets import interop
    from jaxnets.interop import torch_models

    model = models.create(model_name)
    state = TrainState.create(model, optimizers.sgd(lr, momentum=momentum, weight_decay=weight_decay), seed=seed)
    net = torch_models.create(model_name)
    net.load_state_dict(interop.to_torch(model_name, state.variables))
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    train = make_steps(mode="jit").train
    losses: dict[str, list[float]] = {"jaxnets": [], "torch": []}
    for images, labels in data_batches:
        state, metrics = train(state, Batch(jnp.asarray(images), jnp.asarray(labels), jnp.ones(len(labels), bool)))
        losses["jaxnets"].append(float(metrics["loss_sum"] / metrics["count"]))
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())),
                                                 torch.from_numpy(labels).long())
        loss.backward()
        optimizer.step()
        losses["torch"].append(float(loss.detach()))
    return {"model": model_name, "lr": lr, "momentum": momentum, "weight_decay": weight_decay, **losses}


def table(result: dict) -> str:
    """Markdown: step, both losses, their difference."""
    cells = [[str(i + 1), f"{a:.4f}", f"{b:.4f}", f"{abs(a - b):.1e}"]
             for i, (a, b) in enumerate(zip(result["jaxnets"], result["torch"], strict=True))]
    return report.markdown_table(["step", "jaxnets loss", "PyTorch loss", "|diff|"], cells, "rrrr")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxnets.bench.same_start", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg16_bn")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not host.torch_available():
        print("same_start needs PyTorch: pip install 'jaxnets[torch]'", file=sys.stderr)
        return 2
    result = run(args.model, batches(args.dataset, args.data_dir, args.steps, args.batch_size), args.lr,
                 args.momentum, args.weight_decay)
    print(table(result))
    if args.json:
        report.write_json(args.json, {"machine": host.machine(), "command": " ".join(sys.argv), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
