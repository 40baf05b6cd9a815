"""What a PyTorch source holds: files, containers and wrapper prefixes unwrapped to one state_dict, and
the checks on its values (no meta tensors, no NaN or Inf)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxnets.errors import describe, first_line
from jaxnets.interop.errors import NonFiniteWeights, StateDictMismatch, UnsafeCheckpoint
from jaxnets.interop.layout import LayoutRow
from jaxnets.paths import expand_path

# Keys under which training scripts store the state_dict in a checkpoint dict.
CONTAINER_KEYS = ("state_dict", "model", "net", "model_state_dict")
# Prefixes added by wrappers: nn.DataParallel / DDP, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _is_meta(value: Any) -> bool:
    """A torch tensor with no data (built under `torch.device('meta')`)."""
    return bool(getattr(value, "is_meta", False))


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device; bfloat16 as float32) or array-like as a numpy array, without importing torch."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def is_tensor(value: Any) -> bool:
    """A torch tensor or numpy array (anything with a shape and a dtype that is not text)."""
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (str, bytes))


def _load_file(path: Path) -> Any:
    """`torch.load(path, weights_only=True)`, its failures as our errors."""
    try:
        import torch  # torch is optional
    except ImportError as err:
        raise ImportError("reading a .pt/.pth file needs PyTorch: pip install 'jaxnets[torch]'") from err
    import pickle

    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # garbage, not a refused Python object
            raise StateDictMismatch(f"{path} is not a readable PyTorch checkpoint ({first_line(err)})") from err
        detail = next((line for line in str(err).strip().splitlines() if "GLOBAL" in line), "")
        raise UnsafeCheckpoint(
            f"{path} holds pickled Python objects that would run code when loaded, so it was refused and nothing "
            f"in it was executed ({first_line(detail)}). A whole model saved with torch.save(model) is such a "
            "file: save model.state_dict() instead, or, only if you trust the file, load it yourself with "
            "torch.load(path, weights_only=False) and pass the model or its state_dict()") from err
    except Exception as err:  # zip/pickle corruption surfaces as many types
        raise StateDictMismatch(f"{path} is not a readable PyTorch checkpoint ({describe(err)})") from err


def unwrap(source: Any, where: str = "checkpoint") -> dict[str, Any]:
    """A flat {key: tensor} from a state_dict, an nn.Module, a container or a path."""
    if isinstance(source, (str, os.PathLike)):
        path = expand_path(source)
        return unwrap(_load_file(path), where=str(path))
    if not isinstance(source, Mapping) and callable(getattr(source, "state_dict", None)):  # an nn.Module
        return unwrap(source.state_dict(), where=type(source).__name__)
    if not isinstance(source, Mapping):
        raise StateDictMismatch(
            f"expected a state_dict, an nn.Module, a checkpoint dict or a .pt/.pth path; got {type(source).__name__}")
    if not source:
        raise StateDictMismatch(f"the {where} is empty: no tensors to convert")
    if all(is_tensor(v) for v in source.values()):
        bad = [k for k in source if not isinstance(k, str)]
        if bad:
            raise StateDictMismatch(f"state_dict keys must be strings; got {bad[0]!r}")
        return dict(source)
    found = [k for k in CONTAINER_KEYS if k in source and (isinstance(source[k], Mapping)
                                                           or callable(getattr(source[k], "state_dict", None)))]
    if found:
        return unwrap(source[found[0]], where=f"{where}[{found[0]!r}]")
    keys = ", ".join(repr(k) for k in list(source)[:20])
    raise StateDictMismatch(
        f"the {where} is neither a state_dict (not every value is a tensor) nor a checkpoint dict holding one "
        f"under {', '.join(repr(k) for k in CONTAINER_KEYS)}; keys found: {keys}. Pass the state_dict itself, "
        "e.g. from_torch(name, checkpoint['your_key'])")


def strip_wrappers(keys: list[str]) -> dict[str, str]:
    """{original key: key without the wrapper prefixes every key shares}."""
    stripped = {key: key for key in keys}
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if stripped and all(k.startswith(prefix) for k in stripped.values()):
                stripped = {orig: k[len(prefix):] for orig, k in stripped.items()}
                changed = True
    return stripped


def load_state_dict(source: Any) -> dict[str, Any]:
    """The state_dict inside `source`, wrapper prefixes stripped.

    Args:
      source: a state_dict (torch tensors or numpy arrays), an `nn.Module`,
        a checkpoint dict holding one under `state_dict`, `model`, `net` or
        `model_state_dict`, or a `.pt`/`.pth` path (`torch.load(...,
        weights_only=True)`).

    Returns:
      `{key: tensor}` in the source's order, without `module.`/`_orig_mod.`.

    Raises:
      UnsafeCheckpoint: the file needs code execution to load (not run).
      StateDictMismatch: anything else that holds no usable state_dict.
      FileNotFoundError: the path does not exist.
    """
    state_dict = unwrap(source)
    return {new: state_dict[old] for old, new in strip_wrappers(list(state_dict)).items()}


def find_module(source: Any) -> Any:
    """The `nn.Module` in `source` (itself, or a checkpoint dict's entry), or None (a state_dict or a path)."""
    if hasattr(source, "register_forward_pre_hook") and hasattr(source, "named_modules"):
        return source
    if isinstance(source, Mapping) and not all(is_tensor(v) for v in source.values()):
        for key in CONTAINER_KEYS:
            if key in source and not isinstance(source[key], Mapping):
                return find_module(source[key])
    return None


def check_tensors_have_data(name: str, state_dict: Mapping[str, Any]) -> None:
    """Raise `StateDictMismatch` naming tensors on the meta device (shapes only, no values)."""
    meta = [key for key, value in state_dict.items() if _is_meta(value)]
    if meta:
        raise StateDictMismatch(
            f"{name}: {len(meta)} tensor(s) are on the 'meta' device and hold no values, e.g. {meta[0]!r}: the "
            "model was built under torch.device('meta') (or with init=False) and never loaded. Load its weights "
            "first (model.to_empty(device='cpu'), then model.load_state_dict(...)) and convert that")


def check_finite(name: str, variables: dict, by_ours: dict[str, str], layout: list[LayoutRow]) -> None:
    """Raise `NonFiniteWeights` naming every tensor holding NaN or Inf (by the checkpoint's key)."""
    bad = []
    for row in layout:
        value = row.lookup(variables)
        if not np.all(np.isfinite(value)):
            count = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            bad.append(f"{by_ours[row.torch_key]} ({count} of {np.size(value)} values)")
    if bad:
        raise NonFiniteWeights(f"{name}: the checkpoint holds NaN or Inf values in {len(bad)} tensor(s): "
                               f"{', '.join(bad[:10])}{', ...' if len(bad) > 10 else ''}. Such weights give NaN "
                               "outputs; convert a checkpoint saved before training diverged")
