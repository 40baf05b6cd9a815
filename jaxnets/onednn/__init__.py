"""jaxnets' own oneDNN kernels for XLA:CPU, as custom calls: convolutions (forward and both gradients) and
training-mode batch normalisation (forward and gradient)."""

from jaxnets.onednn.batch_norm import batch_norm
from jaxnets.onednn.batch_norm import supports as batch_norm_supports
from jaxnets.onednn.build import Unavailable, load, unavailable_reason, version
from jaxnets.onednn.convolution import conv, supports

__all__ = ["Unavailable", "batch_norm", "batch_norm_supports", "conv", "load", "supports", "unavailable_reason",
           "version"]
