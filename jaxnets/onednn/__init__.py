"""jaxnets' own oneDNN convolutions for XLA:CPU (forward and both gradients as custom calls)."""

from jaxnets.onednn.build import Unavailable, load, unavailable_reason, version
from jaxnets.onednn.convolution import conv, supports

__all__ = ["Unavailable", "conv", "load", "supports", "unavailable_reason", "version"]
