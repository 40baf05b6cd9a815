"""A model's input contract: what its inputs must be, from the run (or data set) that trained it.

    >>> contract = InputContract.for_dataset("cifar10")          # asked of the data catalog
    >>> contract.image_shape, contract.mean, contract.class_names[:2]
    ((32, 32, 3), (0.4914, 0.4822, 0.4465), ('airplane', 'automobile'))

A model folder (`save_model(..., contract=...)`) and every export made from
it carry this, so whoever feeds the model images knows how: the shape of one
image, the per-channel mean/std to normalise `[0, 1]` pixels with
(`(pixels - mean) / std`), and the name of each output class. `fit` returns
the contract of its run (`FitResult.contract`), with the normalisation it
actually used (for a data set without tabled statistics, the ones computed
from the run's training images).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

NORMALIZE = ("dataset", "half", "none")  # as `jaxnets.data.Preprocess.NORMALIZE` and `jaxnets-train --normalize`


@dataclasses.dataclass(frozen=True)
class InputContract:
    """What a model's inputs must be.

    Attributes:
      image_shape: one example as the data gives it, `(H, W, C)` (the MLP
        flattens it).
      mean, std: per channel, on `[0, 1]` pixels; None when not known.
      class_names: output `i` is `class_names[i]`; None when not known.
      dataset: the data set's name (`jaxnets.data` catalog), if any.
      normalize: how the run normalised (`'dataset'`, `'half'`, `'none'`), if known.
    """

    image_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] | None = None
    dataset: str | None = None
    normalize: str | None = None

    def __post_init__(self):
        shape = tuple(self.image_shape)
        if not shape or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in shape):
            raise ValueError(f"image_shape must be positive integers; got {self.image_shape!r}")
        object.__setattr__(self, "image_shape", shape)
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.mean is not None:
            mean, std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
            if len(mean) != len(std) or len(mean) != shape[-1]:
                raise ValueError(f"mean and std need one value per channel ({shape[-1]}); got {len(mean)} and "
                                 f"{len(std)}")
            if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
                raise ValueError(f"mean must be finite and std positive; got mean {mean}, std {std}")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if self.normalize is not None and self.normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}; got {self.normalize!r}")

    @classmethod
    def for_dataset(cls, dataset: str, normalize: str = "dataset",
                    image_shape: Sequence[int] | None = None) -> InputContract:
        """The contract of a model trained on catalog data set `dataset` (its shape, classes, normalisation).

        Everything is asked of `jaxnets.data.catalog`. A data set without
        tabled statistics, normalised `'dataset'`, has mean/std None: only
        the run's training images say them (use `FitResult.contract`).

        Raises:
          DataError: `dataset` is not in the catalog.
          ValueError: `normalize` is unknown, or the catalog has no image
            shape for it and `image_shape` is not given.
        """
        from jaxnets.data import catalog  # keeps this module light

        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}; got {normalize!r}")
        entry = catalog.get(dataset)
        shape = tuple(image_shape) if image_shape is not None else entry.image_shape
        if shape is None:
            raise ValueError(f"the catalog has no image shape for {dataset!r} (it depends on the data): "
                             "give image_shape")
        mean = std = None
        if normalize == "dataset" and entry.normalization is not None:
            mean, std = entry.normalization
        elif normalize in ("half", "none"):
            mean, std = ((0.5,) * shape[-1], (0.5,) * shape[-1]) if normalize == "half" else \
                ((0.0,) * shape[-1], (1.0,) * shape[-1])
        return cls(shape, mean, std, entry.class_names, dataset, normalize)

    @property
    def normalization(self) -> dict | None:
        """`{'dataset', 'normalize', 'mean', 'std'}` (the export sidecar's field), or None when not known."""
        if self.mean is None:
            return None
        return {"dataset": self.dataset, "normalize": self.normalize, "mean": list(self.mean), "std": list(self.std)}

    def check_model(self, model: Any, name: str = "the model") -> None:
        """Raise `ValueError` when the contract cannot be the model's: other input size or class count."""
        want = tuple(getattr(model, "input_shape", ()))
        if want and math.prod(want) != math.prod(self.image_shape):
            raise ValueError(f"the input contract's images {list(self.image_shape)} do not fit {name}'s input "
                             f"{list(want)}")
        classes = getattr(model, "num_classes", None) or getattr(model, "output_dim", None)
        if self.class_names is not None and classes is not None and len(self.class_names) != classes:
            raise ValueError(f"the input contract names {len(self.class_names)} classes"
                             f"{f' ({self.dataset})' if self.dataset else ''}; {name} has {classes} outputs")

    def to_json(self) -> dict:
        """A JSON-able dict (`from_json` reads it back)."""
        return {"image_shape": list(self.image_shape), "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std),
                "class_names": None if self.class_names is None else list(self.class_names),
                "dataset": self.dataset, "normalize": self.normalize}

    @classmethod
    def from_json(cls, value: Any) -> InputContract:
        """The inverse of `to_json`.

        Raises:
          ValueError: not such a dict, a missing field, or a wrong value (naming it).
        """
        if not isinstance(value, dict):
            raise ValueError(f"an input contract must be an object; got {type(value).__name__}")
        fields = ("image_shape", "mean", "std", "class_names", "dataset", "normalize")
        missing = [f for f in fields if f not in value]
        if missing:
            raise ValueError(f"the input contract lacks {', '.join(missing)}")
        for field in ("image_shape", "mean", "std", "class_names"):
            if value[field] is not None and not isinstance(value[field], list):
                raise ValueError(f"the input contract's {field} must be a list; got {value[field]!r}")
        for field in ("dataset", "normalize"):
            if value[field] is not None and not isinstance(value[field], str):
                raise ValueError(f"the input contract's {field} must be a string; got {value[field]!r}")
        if value["image_shape"] is None:
            raise ValueError("the input contract's image_shape must be a list")
        return cls(tuple(value["image_shape"]), value["mean"], value["std"], value["class_names"], value["dataset"],
                   value["normalize"])


__all__ = ["InputContract", "NORMALIZE"]
