"""Data parallel training over every device, and over several hosts, with JAX's own runtime.

PyTorch reaches for `DistributedDataParallel`: one process per GPU, a
process group, gradients all-reduced by hooks. The JAX way is one program
over a device mesh: the batch is sharded on its batch axis
(`NamedSharding(mesh, P('data'))`), the TrainState is replicated
(`NamedSharding(mesh, P())`), and the very same `train_step` is jitted over
them. `jax.jit` has global semantics: a mean over the batch (the loss,
BatchNorm's statistics) is a mean over the *global* batch, and XLA inserts
the all-reduces. So N devices compute what one device computes for the same
global batch, up to float reordering.

    >>> mesh = data_parallel_mesh()                     # every device, one axis 'data'
    >>> check_batch_size(256, mesh)                     # or a clear ValueError
    >>> state = replicate(state, mesh)
    >>> loader = data.Loader(..., sharding=batch_sharding(mesh))

Several hosts (`jaxnets-train --distributed`): every process runs the same
program; `initialize()` joins them through `jax.distributed.initialize`
(before anything starts the backend), the mesh then spans every process's
devices, and each process's Loader reads only its own rows of each global
batch (`jax.make_array_from_process_local_data`). Only process 0 prints and
writes logs (`is_main_process`); orbax checkpoints are written by all of them
together.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxnets import backend
from jaxnets.data.pipeline import check_batch_divides
from jaxnets.errors import first_line

DATA_AXIS = "data"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join a multi-process run: `jax.distributed.initialize` with these values.

    Values left None come from the environment, as `jax.distributed.initialize`
    reads it (cluster auto-detection: SLURM, Open MPI, Kubernetes, TPU pods; or
    `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`). Calling
    it again in an initialised process does nothing.

    Raises:
      RuntimeError: JAX's backend already started in this process (it must be
        called before any array is made or any device is listed).
      ValueError: neither the arguments nor the environment say where the
        coordinator is, how many processes there are or which one this is, or
        they contradict each other (one line saying which flags to pass).
    """
    if jax.distributed.is_initialized():
        return
    if backend.backend_started():
        raise RuntimeError("jax.distributed.initialize must run before JAX starts its backend: call "
                           "jaxnets.training.distributed.initialize() (or pass --distributed) before creating "
                           "arrays or listing devices")
    # JAX itself reads only JAX_COORDINATOR_ADDRESS; these two complete it (cluster detection fills the rest).
    num_processes = _from_env(num_processes, "JAX_NUM_PROCESSES")
    process_id = _from_env(process_id, "JAX_PROCESS_ID")
    if coordinator_address is not None and not _is_host_port(coordinator_address):
        raise ValueError(f"the coordinator address must be HOST:PORT, e.g. 10.0.0.1:1234 (got "
                         f"{coordinator_address!r}); pass it with --coordinator-address")
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    except (ValueError, TypeError) as err:  # JAX checks its arguments before it connects to anything
        raise ValueError(f"cannot join a multi-process run: {first_line(err) or repr(err)} "
                         f"(coordinator {coordinator_address!r}, {num_processes!r} processes, process id "
                         f"{process_id!r}). {SETUP_HINT}") from None


SETUP_HINT = ("Pass --coordinator-address HOST:PORT (of process 0), --num-processes N and --process-id I (0 to N-1) "
              "to every process, set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, or run under a "
              "cluster JAX detects (SLURM, Open MPI, Kubernetes); without --distributed a run uses this host's "
              "devices only")


def _from_env(value: int | None, variable: str) -> int | None:
    """`value`, else the integer in environment variable `variable` (None when unset)."""
    text = os.environ.get(variable)
    if value is not None or not text:
        return value
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{variable} must be an integer (got {text!r})") from None


def _is_host_port(address: str) -> bool:
    """Whether `address` looks like HOST:PORT (a port number after the last colon, a non-empty host)."""
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit()


def is_main_process() -> bool:
    """Whether this process prints and writes logs (process 0; always True in a single-process run)."""
    return jax.process_index() == 0


def silent(*args, **kwargs) -> None:
    """The `print` / log of processes other than 0: a run speaks with one voice, process 0's."""


def data_parallel_mesh(devices=None) -> Mesh:
    """A one-axis mesh `('data',)` over `devices` (default: every device of every process).

    The axis is `AxisType.Auto`: `jax.jit` decides where to all-reduce (global
    semantics), so the models need no sharding annotations.
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays with the batch axis first, split across the mesh's `'data'` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """One full copy on every device of the mesh (parameters, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    """Raise ValueError unless `batch_size` divides evenly over the mesh's devices.

    The message names the batch, the device count and the nearest valid batch
    sizes, e.g. "batch size 30 does not divide over 4 devices ...: use 28 or 32".
    """
    check_batch_divides(batch_size, batch_sharding(mesh), what)


def padded_batch_size(batch_size: int, mesh: Mesh) -> int:
    """`batch_size` rounded up to a multiple of the mesh's device count (evaluation batches are padded anyway)."""
    return -(-batch_size // mesh.size) * mesh.size


def replicate(tree, mesh: Mesh):
    """A copy of the pytree `tree` on every device of `mesh` (the same values in every process).

    Always a copy through the host (once per run): the train step donates its
    state, which must not delete the caller's arrays, and a mesh spanning
    several processes accepts host values, not another process's device
    arrays. Typed PRNG keys go across as their key data and are wrapped again.
    """
    sharding = replicated_sharding(mesh)

    def put(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree.map(put, tree)


def is_parallel(mesh: Mesh) -> bool:
    """Whether `mesh` asks for anything but today's single-device placement."""
    return mesh.size > 1 or jax.process_count() > 1


def describe(mesh: Mesh) -> str:
    """`'4 devices (cpu), 1 process'`: for the run's first log line."""
    kinds = sorted({d.platform for d in np.asarray(mesh.devices).flat})
    processes = jax.process_count()
    return (f"{mesh.size} device{'s' * (mesh.size != 1)} ({', '.join(kinds)}), "
            f"{processes} process{'es' * (processes != 1)}")


def sync(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing to wait for in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
