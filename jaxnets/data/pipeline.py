"""Batches on the device: seeded shuffling, jitted augmentation, prefetch.

Conversion to float, random crop, flip and normalisation run as one jitted
function on the device, with PRNG keys derived from (seed, epoch, step), so a
resumed run sees the same batches and the same augmentations as an
uninterrupted one. Where the batch is cut depends on `resident`: on an
accelerator the whole uint8 data set is copied to the device once and each
batch is gathered there (only the epoch's index table crosses per epoch); on
the CPU, where host and device share one memory, numpy gathers the rows.
Both give the same batches, bit for bit.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Iterator
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import backend
from jaxnets.data import catalog


class Batch(NamedTuple):
    """One batch on the device."""

    image: jax.Array  # [B, H, W, C] float32, normalised (and augmented when training)
    label: jax.Array  # [B] int32
    mask: jax.Array  # [B] bool; False marks padding in the last evaluation batch


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Static (hashable) preprocessing config: normalisation and augmentation.

    `mean`/`std` are per channel on [0, 1] pixels (the texts' `Normalize`);
    `crop_padding` > 0 enables `RandomCrop(size, padding)`; `flip` enables
    `RandomHorizontalFlip()`. Augmentation applies to training batches only.
    """

    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    crop_padding: int = 0
    flip: bool = False

    NORMALIZE: ClassVar[tuple[str, ...]] = ("dataset", "half", "none")  # what `for_dataset` takes

    @classmethod
    def for_dataset(cls, name: str, images: np.ndarray, normalize: str = "dataset", augment: bool = False):
        """Normalisation for data set `name`: `'dataset'` (its catalog mean/std,
        computed from `images` when the catalog has none), `'half'` (the texts' (0.5, 0.5)) or `'none'`;
        `augment` turns on crop (4-pixel padding) + horizontal flip."""
        channels = images.shape[-1]
        if normalize == "half":
            mean, std = (0.5,) * channels, (0.5,) * channels
        elif normalize == "none":
            mean, std = (0.0,) * channels, (1.0,) * channels
        elif normalize == "dataset":
            tabled = catalog.normalizations().get(name)
            mean, std = tabled if tabled is not None else channel_stats(images)
        else:
            raise ValueError(f"normalize must be 'dataset', 'half' or 'none'; got {normalize!r}")
        return cls(tuple(mean), tuple(std), 4 if augment else 0, augment)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 `[N, H, W, C]` images, on [0, 1]."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return tuple(pixels.mean(0).tolist()), tuple(np.maximum(pixels.std(0), 1e-3).tolist())


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
    """`RandomCrop(size, padding)`: zero-pad by `padding`, cut a random window per image.

    `[B, H, W, C] -> [B, H, W, C]`, any float dtype.
    """
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """`RandomHorizontalFlip()`: mirror each image with probability 1/2. `[B, H, W, C]`."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def preprocess(key: jax.Array, images: jax.Array, config: Preprocess, train: bool) -> jax.Array:
    """uint8 `[B, H, W, C]` -> float32 normalised (and augmented when `train`)."""
    x = images.astype(jnp.float32) / 255.0
    if train and config.crop_padding:
        key, sub = jax.random.split(key)
        x = random_crop(sub, x, config.crop_padding)
    if train and config.flip:
        x = random_flip(key, x)
    channels = x.shape[-1]
    mean = jnp.broadcast_to(jnp.asarray(config.mean, jnp.float32), (channels,))
    std = jnp.broadcast_to(jnp.asarray(config.std, jnp.float32), (channels,))
    return (x - mean.reshape(1, 1, 1, channels)) / std.reshape(1, 1, 1, channels)


def batch_shards(sharding: jax.sharding.Sharding) -> int:
    """Into how many pieces `sharding` cuts an array's first (batch) axis."""
    devices = sharding.num_devices
    return devices // sharding.shard_shape((devices,))[0]


def check_batch_divides(batch_size: int, sharding: jax.sharding.Sharding, what: str = "batch size") -> None:
    """Raise ValueError unless a batch of `batch_size` splits evenly under `sharding`.

    The message names the batch, the device count and the nearest valid sizes.
    """
    shards = batch_shards(sharding)
    if batch_size % shards:
        lower, upper = batch_size // shards * shards, (batch_size // shards + 1) * shards
        nearest = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(f"{what} {batch_size} does not divide over {shards} devices (each device takes an equal "
                         f"slice of every global batch): use a multiple of {shards}, e.g. {nearest}, or fewer devices")


def process_rows(sharding: jax.sharding.Sharding, batch_size: int) -> slice:
    """The rows of a global batch of `batch_size` that this process's devices hold (all rows in one process).

    Raises:
      ValueError: this process's rows are not one contiguous block (a mesh whose
        device order interleaves processes).
    """
    index_map = sharding.addressable_devices_indices_map((batch_size,))
    rows = sorted({index[0].indices(batch_size)[:2] for index in index_map.values()})
    start, stop = rows[0][0], rows[-1][1]
    if sum(b - a for a, b in rows) != stop - start:
        raise ValueError(f"this process's devices hold rows {rows} of each batch, not one block: build the mesh "
                         "over jax.devices() in their order (process by process)")
    return slice(start, stop)



# The largest data set a Loader keeps on an accelerator by default (all 50,000 CIFAR-10 images are 154 MB).
RESIDENT_MAX_BYTES = 2 << 30


def keeps_data_on_device(platform: str, nbytes: int, sharding: jax.sharding.Sharding | None) -> bool:
    """Whether a `Loader` keeps its whole data set on the device when `resident=None` (the default).

    Yes on accelerators (`platform` not `'cpu'`) for data sets up to
    `RESIDENT_MAX_BYTES` whose devices all belong to this process. No on the
    CPU: host and device share one memory, so a resident copy only doubles
    it; the loader is thousands of times faster than the steps it feeds there
    either way (BENCHMARKS.md, input pipeline), and `resident=True` is there
    for whoever wants it.
    """
    return platform != "cpu" and nbytes <= RESIDENT_MAX_BYTES and (sharding is None or sharding.is_fully_addressable)


def replicated(sharding: jax.sharding.Sharding | None) -> jax.sharding.Sharding | None:
    """Where a resident data set lives: a full copy on every device of `sharding` (`None`: the default device).

    Raises:
      ValueError: `sharding` spans other processes' devices (each process then
        loads only its own rows; `resident=True` is not for that case).
    """
    if sharding is None:
        return None
    if not sharding.is_fully_addressable:
        raise ValueError("resident=True needs every device of the sharding in this process; with several "
                         "processes leave resident=None (each process then loads its own rows)")
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    if len(sharding.device_set) == 1:
        return sharding
    raise ValueError(f"resident=True takes a NamedSharding or a one-device sharding; got {type(sharding).__name__}")


def prepare(key, epoch, step, images, labels, mask, config: Preprocess, train: bool) -> Batch:
    """uint8 batch -> `Batch`, augmented with the key `fold_in(fold_in(key, epoch), step)`.

    The one rule for a batch's augmentation key: the Loader runs it jitted per
    batch, and `jaxnets.training.steps.scan_epoch` inside its scan, so both
    see the same crops and flips.
    """
    key = jax.random.fold_in(jax.random.fold_in(key, epoch), step)
    return Batch(preprocess(key, images, config, train), labels, mask)


_prepare = backend.jit(prepare, static_argnames=("config", "train"))


def cut_and_prepare(key, epoch, step, images, labels, index, mask, config: Preprocess, train: bool) -> Batch:
    """Batch `step` of an epoch cut from a data set held on the device, then `prepare`d.

    Args:
      images: uint8 `[N, H, W, C]`, the whole data set (on the device).
      labels: int32 `[N]`.
      index: int32 `[S, B]`, the epoch's example indices (`Loader.indices`).
      mask: bool `[S, B]`.
    """
    rows = index[step]
    return prepare(key, epoch, step, images[rows], labels[rows], mask[step], config, train)


def cut_epoch(images, labels, index):
    """A whole epoch `(images [S, B, ...], labels [S, B])` cut from a data set held on the device by `index [S, B]`."""
    return images[index], labels[index]


@functools.cache
def _jitted_cuts(sharding: jax.sharding.Sharding | None):
    """`(cut_and_prepare, cut_epoch)` jitted to leave their results with `sharding` (batch axis first)."""
    if sharding is None:  # where the data set is
        return (backend.jit(cut_and_prepare, static_argnames=("config", "train")), backend.jit(cut_epoch))
    per_epoch = epoch_sharding(sharding)
    return (backend.jit(cut_and_prepare, static_argnames=("config", "train"), out_shardings=sharding),
            backend.jit(cut_epoch, out_shardings=per_epoch))


def epoch_sharding(sharding: jax.sharding.Sharding | None) -> jax.sharding.Sharding | None:
    """A batch sharding `[B, ...]` -> the same for a whole epoch `[S, B, ...]` (steps not sharded)."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(None, *sharding.spec))
    return sharding  # one device (or none): the same for any shape


class Loader:
    """Iterate `(images, labels)` in batches on the device, like `torch.utils.data.DataLoader`.

    Training loaders (`train=True`) shuffle with a permutation seeded by
    (seed, epoch), drop the last incomplete batch (fixed shapes: no
    recompiles) and augment. Evaluation loaders keep order and pad the last
    batch to full size, with `Batch.mask` False on the padding, so every
    example is seen exactly once with one compiled shape.

    Args:
      images: uint8 `[N, H, W, C]` (host numpy).
      labels: int `[N]`.
      batch_size: examples per batch.
      preprocess: normalisation/augmentation config.
      train: training (shuffle, drop last, augment) or evaluation behaviour.
      seed: shuffling and augmentation seed.
      sharding: optional `jax.sharding.Sharding` to place each batch with
        (batch axis first), e.g. `NamedSharding(mesh, PartitionSpec('data'))`.
        When it spans several processes, each process gathers only its own
        rows of every global batch (`process_rows`), from the same seeded
        order, and `jax.make_array_from_process_local_data` joins them.
      prefetch: batches dispatched ahead of the one being consumed.
      resident: copy the whole data set to the device(s) once and cut every
        batch there (`True`), gather rows on the host and send each batch
        (`False`), or decide by `keeps_data_on_device` (`None`: resident on
        accelerators, host gathers on the CPU). The batches are the same.

    Raises:
      ValueError: bad arrays or sizes, or `batch_size` does not split evenly
        under `sharding` (the message names the nearest valid sizes), or
        `resident=True` with a sharding over other processes' devices.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, *, preprocess: Preprocess,
                 train: bool, seed: int = 0, sharding: jax.sharding.Sharding | None = None, prefetch: int = 2,
                 resident: bool | None = None):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, H, W, C]; got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if train and len(images) < batch_size:
            raise ValueError(f"training set of {len(images)} examples is smaller than one batch of {batch_size}; "
                             "lower the batch size")
        if sharding is not None:
            check_batch_divides(batch_size, sharding, "training batch size" if train else "evaluation batch size")
        self.images, self.labels = images, labels.astype(np.int32)
        self.batch_size, self.preprocess, self.train = batch_size, preprocess, train
        self.seed, self.sharding, self.prefetch = seed, sharding, max(1, prefetch)
        self._key = jax.random.key(seed)
        if resident is None:
            resident = keeps_data_on_device(jax.default_backend(), images.nbytes, sharding)
        # The data set's one copy on the device(s): (images, labels), or None when batches are cut on the host.
        self._on_device = jax.device_put((self.images, self.labels), replicated(sharding)) if resident else None

    @property
    def resident(self) -> bool:
        """Whether the data set lives on the device and batches are cut there."""
        return self._on_device is not None

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """Example indices of one epoch: a seeded permutation when training."""
        n = len(self.images)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.train else np.arange(n)

    @property
    def key(self) -> jax.Array:
        """The typed PRNG key (from `seed`) that augmentation keys are folded from."""
        return self._key

    def indices(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """`(index [S, B] int, mask [S, B] bool)`: which examples each batch of epoch `epoch` holds.

        Evaluation loaders pad the last batch with example 0, masked False.
        """
        order = self.order(epoch)
        size = len(self) * self.batch_size
        mask = np.arange(size) < len(order)
        index = np.concatenate([order, np.zeros(max(size - len(order), 0), order.dtype)])[:size]
        return index.reshape(len(self), self.batch_size), mask.reshape(len(self), self.batch_size)

    def _host_batches(self, epoch: int):
        index, mask = self.indices(epoch)
        rows = slice(None) if self.sharding is None else process_rows(self.sharding, self.batch_size)
        for step in range(len(self)):
            step_index = index[step, rows]
            yield step, self.images[step_index], self.labels[step_index], mask[step, rows]

    def epoch_arrays(self, epoch: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The whole epoch at once, on the device: uint8 images `[S, B, H, W, C]`, labels `[S, B]`, mask `[S, B]`.

        What `epoch(epoch)` yields before preprocessing, stacked (for a scanned
        epoch, `jaxnets.training.steps.scan_epoch`); cut on the device when the
        data set lives there.
        """
        index, mask = self.indices(epoch)
        sharding = epoch_sharding(self.sharding)
        if not self.resident:
            return jax.device_put((self.images[index], self.labels[index], mask), sharding)
        _, cut_epoch_ = _jitted_cuts(self.sharding)
        images, labels = cut_epoch_(*self._on_device, jax.device_put(index.astype(np.int32), replicated(self.sharding)))
        return images, labels, jax.device_put(mask, sharding)

    def _place(self, arrays: tuple) -> tuple:
        """Host rows -> device arrays of the whole global batch (this process's rows on its devices)."""
        if self.sharding is None or self.sharding.is_fully_addressable:
            return jax.device_put(arrays, self.sharding)
        return tuple(jax.make_array_from_process_local_data(self.sharding, x, (self.batch_size, *x.shape[1:]))
                     for x in arrays)

    def _dispatch(self, epoch: int) -> Iterator[Batch]:
        """Each batch of the epoch, dispatched (asynchronously: each call enqueues work and returns at once)."""
        if self.resident:
            images, labels = self._on_device
            index, mask = self.indices(epoch)
            index, mask = jax.device_put((index.astype(np.int32), mask), replicated(self.sharding))
            cut_and_prepare_, _ = _jitted_cuts(self.sharding)
            for step in range(len(self)):
                yield cut_and_prepare_(self._key, epoch, step, images, labels, index, mask, self.preprocess, self.train)
            return
        for step, images, labels, mask in self._host_batches(epoch):
            images, labels, mask = self._place((images, labels, mask))
            yield _prepare(self._key, epoch, step, images, labels, mask, self.preprocess, self.train)

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        """The batches of epoch `epoch` (deterministic in seed and epoch)."""
        queue: collections.deque[Batch] = collections.deque()
        for batch in self._dispatch(epoch):
            queue.append(batch)
            if len(queue) > self.prefetch:
                yield queue.popleft()
        while queue:
            yield queue.popleft()

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)
