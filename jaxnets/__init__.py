"""jaxnets: the classic PyTorch image models and training workflow, the JAX way."""

from jaxnets import backend as _backend
from jaxnets import host_memory as _host_memory
from jaxnets._version import __version__

__all__ = ["__version__"]

# Before anything starts JAX's CPU backend and its threads: keep large host buffers in the heap
# (jaxnets.host_memory; JAXNETS_HOST_MEMORY=system turns this off) and convolutions on XLA's fast path
# (jaxnets.backend; JAXNETS_CPU_CONV=xla turns this off).
_host_memory.configure(_backend.backend_started())
_backend.configure()
