"""jaxnets' own oneDNN kernels for XLA:CPU, as custom calls: convolutions (forward and both gradients),
training-mode batch normalisation (forward and gradient) and dense layers' matrix products (forward and both
gradients)."""

from jaxnets.onednn.batch_norm import batch_norm
from jaxnets.onednn.batch_norm import supports as batch_norm_supports
from jaxnets.onednn.build import Unavailable, load, unavailable_reason, version
from jaxnets.onednn.convolution import conv, supports
from jaxnets.onednn.matmul import dense
from jaxnets.onednn.matmul import supports as dense_supports

__all__ = ["Unavailable", "batch_norm", "batch_norm_supports", "conv", "dense", "dense_supports", "load", "supports",
           "unavailable_reason", "version"]
