"""jaxnets: the classic PyTorch image models and training workflow, the JAX way."""

__version__ = "0.1.0"
