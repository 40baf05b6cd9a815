"""Does jaxnets' init train like PyTorch's? LeNet on real MNIST, side by side.

The recipe of issue #10: the first 10,000 MNIST training images, split 80/20
with a fixed seed (8,000 train, 2,000 held out, unused here), the official
10,000 test images; ToTensor + Normalize(0.5, 0.5); Adam 1e-3, batch 64,
5 epochs; seeds 0-2. jaxnets (jitted train step, its own PyTorch-style init)
and PyTorch (the reference class, PyTorch's own init) see the same batches in
the same order; only the initial weights and the framework differ.

    python -m jaxnets.bench.init_parity --data-dir ../shared/data/mnist --json init_parity.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import models, report
from jaxnets.bench import host
from jaxnets.data import Batch
from jaxnets.data.files import read_idx
from jaxnets.training import TrainState, make_steps, optimizers

SUBSET, TRAIN_FRACTION, SPLIT_SEED = 10_000, 0.8, 0


def load_mnist(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels): NHWC float32 in [-1, 1], int32 labels."""
    def images(name):
        return ((read_idx(data_dir / name).astype(np.float32) / 255.0 - 0.5) / 0.5)[..., None]

    def labels(name):
        return read_idx(data_dir / name).astype(np.int32)

    x, y = images("train-images-idx3-ubyte.gz")[:SUBSET], labels("train-labels-idx1-ubyte.gz")[:SUBSET]
    order = np.random.default_rng(SPLIT_SEED).permutation(SUBSET)  # random_split, seeded
    train = order[: int(SUBSET * TRAIN_FRACTION)]
    return x[train], y[train], images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz")


def epoch_orders(n: int, seed: int, epochs: int) -> list[np.ndarray]:
    """The shuffled example order of each epoch (shared by both frameworks)."""
    rng = np.random.default_rng(1000 + seed)
    return [rng.permutation(n) for _ in range(epochs)]


def run_jaxnets(data, seed: int, epochs: int, batch_size: int, lr: float) -> float:
    x_train, y_train, x_test, y_test = data
    model = models.create("lenet")
    state = TrainState.create(model, optimizers.adam(lr), seed=seed)
    steps = make_steps("cross_entropy", "jit")
    mask = jnp.ones(batch_size, bool)
    for order in epoch_orders(len(x_train), seed, epochs):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = Batch(jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx]), mask[: len(idx)])
            state, _ = steps.train(state, batch)
    predict = jax.jit(lambda variables, x: jnp.argmax(model.apply(variables, x), -1))
    correct = sum(int((np.asarray(predict(state.variables, x_test[i:i + 1000])) == y_test[i:i + 1000]).sum())
                  for i in range(0, len(x_test), 1000))
    return 100.0 * correct / len(x_test)


def run_pytorch(data, seed: int, epochs: int, batch_size: int, lr: float) -> float:
    import torch  # optional

    from jaxnets.interop import torch_models

    x_train, y_train, x_test, y_test = (np.ascontiguousarray(a.transpose(0, 3, 1, 2)) if a.ndim == 4 else a
                                        for a in data)
    torch.manual_seed(seed)
    net = torch_models.create("lenet")
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    for order in epoch_orders(len(x_train), seed, epochs):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(net(torch.from_numpy(x_train[idx])), torch.from_numpy(y_train[idx]).long())
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        predicted = net(torch.from_numpy(x_test)).argmax(1).numpy()
    return 100.0 * float((predicted == y_test).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxnets.bench.init_parity", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True, help="folder with the four MNIST IDX .gz files")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if not host.torch_available():
        print("init_parity: error: PyTorch is needed for the side-by-side run: pip install 'jaxnets[torch]'",
              file=sys.stderr)
        return 2
    data = load_mnist(args.data_dir)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    print(f"LeNet, MNIST {len(data[0]):,} train / {len(data[2]):,} test, Adam {args.lr:g}, batch {args.batch_size}, "
          f"{args.epochs} epochs")
    print(f"{'seed':>4}  {'jaxnets (jit) %':>16}  {'PyTorch %':>10}  {'seconds j/t':>12}")
    for seed in seeds:
        t0 = time.perf_counter()
        ours = run_jaxnets(data, seed, args.epochs, args.batch_size, args.lr)
        t1 = time.perf_counter()
        theirs = run_pytorch(data, seed, args.epochs, args.batch_size, args.lr)
        t2 = time.perf_counter()
        rows.append({"seed": seed, "jaxnets": ours, "pytorch": theirs, "jaxnets_s": t1 - t0, "pytorch_s": t2 - t1})
        print(f"{seed:>4}  {ours:>16.2f}  {theirs:>10.2f}  {t1 - t0:>5.1f}/{t2 - t1:<5.1f}")
    mean_ours = float(np.mean([r["jaxnets"] for r in rows]))
    mean_theirs = float(np.mean([r["pytorch"] for r in rows]))
    print(f"{'mean':>4}  {mean_ours:>16.2f}  {mean_theirs:>10.2f}   difference {mean_ours - mean_theirs:+.2f} points")
    results = {"machine": host.machine(), "command": " ".join(sys.argv), "recipe": vars(args) | {"data_dir": str(
        args.data_dir), "json": str(args.json)}, "rows": rows, "mean_jaxnets": mean_ours, "mean_pytorch": mean_theirs}
    if args.json:
        report.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
