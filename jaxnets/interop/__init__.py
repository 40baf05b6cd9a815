"""Convert weights between PyTorch checkpoints and jaxnets variables.

    >>> variables = from_torch("resnet18", torch_model.state_dict())
    >>> variables = from_torch("lenet-cifar", "checkpoint.pth")    # a file
    >>> variables = from_torch("mlp", their_model)                  # an nn.Module
    >>> state_dict = to_torch("resnet18", variables)                # our key names
    >>> their_model.load_state_dict(to_torch("mlp", variables, like=their_model))

`from_torch` takes what a PyTorch user has: a `state_dict`, an `nn.Module`,
a checkpoint container holding one state_dict (under `state_dict`, `model`,
`net` or `model_state_dict`, beside entries such as `epoch` or `acc`), or the
path of a `.pt`/`.pth` file. Files are opened with
`torch.load(path, weights_only=True)`: a file that needs code execution to
load (a pickled Python object) is refused with `UnsafeCheckpoint`, never
run. Wrapper prefixes (`module.` from DataParallel/DDP, `_orig_mod.` from
`torch.compile`) are stripped.

Module names in jaxnets mirror PyTorch's (`layer1.0.conv1`, `features.3`),
so a state_dict of our reference classes maps key for key. A state_dict
with other names (say the texts' `self.net = nn.Sequential(...)`, keys
`net.0.weight`, `net.2.weight`, ...) is matched by structure instead: its
layers in the order they run against ours in module order, by role (conv,
linear, BatchNorm) and shape; every tensor must be used exactly once, or
`StateDictMismatch` names the first pair that differs. The order they run:

  * given an `nn.Module`, its forward is traced once (forward pre-hooks, on
    zeros of the jaxnets model's input shape, in eval mode, no gradients), so
    a module that registers `fc1, fc3, fc2` but calls `fc1 -> fc2 -> fc3`
    converts right;
  * given only a state_dict (or a file), its order is the order the layers
    were registered in, which is usually, not always, the order they run.
    When two layers of the same role and shapes are stored in one order but
    numbered the other way (`fc3` before `fc2`), either order fits and the
    state_dict cannot say which is right: `AmbiguousMapping` names them and
    asks for the module or an explicit `mapping=` (`jaxnets-convert --map`).
    Names that carry no numbering are taken in stored order.

`mapping={'fc2': 'hidden.1', 'fc3': 'hidden.2'}` (their module or tensor key ->
ours) pins layers by hand; the rest are matched by structure. The mapping
used is logged (logger `jaxnets.interop`, level INFO) and returned with
`return_mapping=True`. A tensor holding NaN or Inf is refused
(`NonFiniteWeights`, naming it), as are tensors with no data (the `meta`
device). What changes is the layout::

  | PyTorch                         | jaxnets                               |
  |---------------------------------|---------------------------------------|
  | Conv2d `weight` [O, I, kh, kw]  | `kernel` [kh, kw, I, O]               |
  | Linear `weight` [out, in]       | `kernel` [in, out]                    |
  | Linear after a conv stack, whose input is an NCHW flatten | rows permuted from (C, H, W) to (H, W, C) order |
  | BatchNorm `weight`, `bias`      | `scale`, `bias` (params)              |
  | BatchNorm `running_mean/var`    | `mean`, `var` (batch_stats)           |
  | BatchNorm `num_batches_tracked` | dropped (`to_torch` writes 0)         |

Torch is imported only where it is needed (`to_torch`, reading a file, tracing
a module, and `jaxnets.interop.torch_models`); `from_torch` takes torch
tensors or numpy arrays alike.

The package's modules: `conversion` (the three entry points), `layout` (our
variables as PyTorch sees them), `matching` (by name, by structure, call
order), `state_dict` (files, containers, prefixes, value checks), `errors`.
"""

from jaxnets.interop.conversion import convert, from_torch, to_torch
from jaxnets.interop.errors import (
                                    AmbiguousMapping,
                                    NonFiniteWeights,
                                    StateDictMismatch,
                                    TorchCheckpointError,
                                    UnsafeCheckpoint,
)
from jaxnets.interop.state_dict import CONTAINER_KEYS, load_state_dict

__all__ = [
    "AmbiguousMapping", "CONTAINER_KEYS", "NonFiniteWeights", "StateDictMismatch", "TorchCheckpointError",
    "UnsafeCheckpoint", "convert", "from_torch", "load_state_dict", "to_torch",
]
