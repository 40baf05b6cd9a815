"""jaxnets: the classic PyTorch image models and training workflow, the JAX way."""

from jaxnets import backend as _backend
from jaxnets._version import __version__

__all__ = ["__version__"]

# Before anything starts JAX's CPU backend: keep convolutions on XLA's fast
# path (see jaxnets.backend; JAXNETS_CPU_CONV=xla turns this off).
_backend.configure()
