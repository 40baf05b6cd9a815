"""Static-graph export: a model's inference function as one serialized program, the JAX counterpart of TorchScript/ONNX.

    >>> from jaxnets import export, models
    >>> model = models.create("lenet5")
    >>> variables = models.init(model, jax.random.key(0))
    >>> export.save("lenet5.jaxexport", "lenet5", variables)
    >>> run = export.load("lenet5.jaxexport")   # no model code needed from here on
    >>> logits = run(images)                     # [N, 32, 32, 3] float32 -> [N, 10] float32, any N

`save` traces `model.apply(variables, x, train=False)` (eval mode: BatchNorm
running statistics, no dropout) once, with a symbolic batch dimension
(`jax.export.symbolic_shape`), and writes `jax.export`'s serialized
StableHLO program. The variables are baked into the program as constants, so
the artifact is self-contained, like a TorchScript file or an ONNX model: the
one file is everything needed to run it, and a caller cannot pair it with the
wrong weights. The cost is size (the weights are inside: ResNet-18 is about
45 MB, the float32 bytes of its 11.2M parameters) and a new artifact per set
of weights. Beside it go:

  * `<path>.json`, the sidecar: model name and arguments, input shape and
    dtype, class count, the input contract (`jaxnets.contract`: image shape,
    the normalisation the images need, class names) and, when that is not
    known, a `note` saying so; platforms, jax version and a SHA-256 of the
    artifact;
  * `<path>.mlir` (optional), the StableHLO text for reading, with large
    constants (the weights) elided.

`load` reads them back with `jax.export.deserialize` and nothing else of
jaxnets: `jaxnets.models` is never imported. The program runs on any of the
platforms it was lowered for (`platforms=('cpu', 'cuda', 'tpu')` lowers once
per platform; no GPU is needed to export for one). A multi-platform export
traces the model under `jaxnets.backend.portable()`, so no CPU-only lowering
choice (the tiny-map matmuls of `jaxnets.convolution`) ends up in the GPU/TPU
program; a CPU-only export keeps it. jaxnets' XLA options
(`jaxnets.backend.compiler_options`, `XLA_FLAGS`) are compile-time settings of
the process that runs the artifact, not part of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import backend, errors
from jaxnets.paths import expand_path

#: The format tag written in every sidecar; `load` refuses any other.
FORMAT = "jaxnets-export/1"
SIDECAR_SUFFIX = ".json"
STABLEHLO_SUFFIX = ".mlir"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
_ELIDE_ABOVE = 16  # constants with more elements than this are printed as `__elided__` in the text


class ExportError(RuntimeError):
    """An exported model is missing, corrupt, or was written by something else."""


def sidecar_path(path: str | Path) -> Path:
    """`<path>.json`: the sidecar of the artifact at `path`."""
    path = expand_path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def stablehlo_path(path: str | Path) -> Path:
    """`<path>.mlir`: the StableHLO text beside the artifact at `path`."""
    path = expand_path(path)
    return path.with_name(path.name + STABLEHLO_SUFFIX)


def normalization_for(dataset: str | None, normalize: str = "dataset",
                      channels: int | None = None) -> dict | None:
    """The per-channel `{'dataset', 'normalize', 'mean', 'std'}` (on [0, 1] pixels) a model trained on `dataset` needs.

    Asked of the data catalog (`InputContract.for_dataset`); None when it is
    not known without the training images (a data set without tabled
    statistics, with `normalize='dataset'`) or no data set is given.
    """
    from jaxnets.contract import InputContract

    if dataset is None:
        return None
    shape = (channels,) if channels else None
    try:
        return InputContract.for_dataset(dataset, normalize, shape).normalization
    except ValueError:  # no image shape known for it
        return None


# Fields every sidecar has, and their JSON types (`read_info` checks them).
_SIDECAR_FIELDS = {"format": str, "model": str, "model_kwargs": dict, "input_shape": list, "input_dtype": str,
                   "output_shape": list, "output_dtype": str, "num_classes": int, "parameters": int, "platforms": list,
                   "jax_version": str, "artifact_bytes": int, "artifact_sha256": str}
#: The sidecar's `note` for a model whose input contract is not known (and the warning printed with it).
NO_CONTRACT_NOTE = ("no input contract: how the images this model was trained on were normalised, and its class "
                    "names, are not known. Inputs preprocessed otherwise than in training give wrong predictions. "
                    "Export from the training run, or from a model folder saved with its contract "
                    "(save_model(..., contract=result.contract) or dataset=..., jaxnets-convert --dataset), or pass "
                    "--dataset")


def contract_note(contract) -> str | None:
    """What the sidecar's `note` says about `contract` (an `InputContract` or None): None when it is complete."""
    if contract is None:
        return NO_CONTRACT_NOTE
    if contract.mean is None:
        return (f"the normalisation of {contract.dataset or 'the training data'} is not known (no tabled "
                "statistics; the run computed them from its training images): export from the training run to "
                "record it")
    return None


def _check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    platforms = (platforms,) if isinstance(platforms, str) else tuple(platforms)
    unknown = [p for p in platforms if p not in PLATFORMS]
    if not platforms or unknown or len(set(platforms)) != len(platforms):
        raise ValueError(f"platforms must be distinct names from {PLATFORMS}; got {platforms!r}")
    return platforms


def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    for p in paths:
        if p.is_dir():
            raise FileExistsError(f"{p} is a folder; choose another path for the exported model")
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); choose another path or pass "
                              "overwrite=True (--overwrite)")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path` (never a half-written file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def stablehlo_text(exported: jax.export.Exported, elide_above: int = _ELIDE_ABOVE) -> str:
    """The exported program as StableHLO text, constants larger than `elide_above` elements elided (for reading)."""
    from jax.interpreters import mlir

    with mlir.make_ir_context():
        module = exported.mlir_module(serialized=False)
        return module.operation.get_asm(large_elements_limit=elide_above, enable_debug_info=False)


def save(path: str | Path, name: str, variables: dict, *, model_kwargs: dict | None = None, batch: str = "b",
         platforms: Sequence[str] = ("cpu",), input_shape: Sequence[int] | None = None,
         normalization: dict | None = None, contract=None, write_stablehlo: bool = True,
         overwrite: bool = False) -> Path:
    """Export `models.create(name, **model_kwargs)` with `variables`, in eval mode, to the file `path`.

    Args:
      path: the artifact file to write (e.g. `resnet18.jaxexport`); the sidecar
        `<path>.json` and, with `write_stablehlo`, `<path>.mlir` go beside it.
      name: a `jaxnets.models` name.
      variables: `{'params', ['batch_stats']}` of that model (as `models.init`,
        `load_model` or a checkpoint give them).
      model_kwargs: the arguments given to `models.create` (num_classes, width_divisor, ...).
      batch: the name of the symbolic batch dimension; the artifact takes any batch size >= 1.
      platforms: where the artifact may run, any of `PLATFORMS`, e.g.
        `('cpu', 'cuda', 'tpu')`; lowering for GPU/TPU needs no GPU/TPU.
      input_shape: one image's shape `[H, W, C]` (or `[D]` for the MLP);
        default the model's own (`model.input_shape`). Models that pool
        adaptively (the `*_imagenet` ones) take other sizes.
      normalization: what the sidecar says about preprocessing (see
        `normalization_for`); None: the contract's, or unknown.
      contract: the model's `jaxnets.contract.InputContract` (image shape,
        normalisation, class names), as `read_contract` or
        `FitResult.contract` give it. Without one (and without
        `normalization`) the sidecar's `note` says that the preprocessing is
        not known.
      write_stablehlo: also write the StableHLO text beside it.
      overwrite: replace an existing artifact (and its sidecar and text).

    Returns:
      The artifact's path.

    Raises:
      FileExistsError: the artifact, its sidecar or its text exists and `overwrite` is False.
      ValueError: unknown model or platforms, variables that do not fit the model, or
        an input shape the model refuses.
    """
    from jaxnets import models  # only saving needs model code
    from jaxnets.models import saving

    path = expand_path(path).absolute()
    platforms = _check_platforms(platforms)
    model_kwargs = dict(model_kwargs or {})
    files = [path, sidecar_path(path)] + ([stablehlo_path(path)] if write_stablehlo else [])
    _refuse_existing(files, overwrite)
    model = saving.check_variables(name, variables, model_kwargs)
    if contract is not None:
        contract.check_model(model, name)
        normalization = normalization if normalization is not None else contract.normalization
    variables = jax.tree.map(jnp.asarray, dict(variables))
    input_shape = tuple(int(d) for d in (model.input_shape if input_shape is None else input_shape))
    (batch_dim,) = jax.export.symbolic_shape(batch)
    spec = jax.ShapeDtypeStruct((batch_dim, *input_shape), jnp.float32)

    def infer(images: jax.Array) -> jax.Array:  # [B, *input_shape] float32 -> [B, classes] logits
        return model.apply(variables, images, train=False)

    # Several platforms: trace without CPU-only choices. One CPU platform: keep jaxnets' CPU lowerings that are
    # plain XLA operations (not its oneDNN custom calls: a serialized program cannot carry them).
    context = backend.portable() if platforms != ("cpu",) else contextlib.nullcontext()
    with context, backend.serializable():
        exported = jax.export.export(jax.jit(infer), platforms=platforms)(spec)
    artifact = exported.serialize()
    (out,) = exported.out_avals
    info = {
        "format": FORMAT,
        "model": name,
        "model_kwargs": saving.encode_kwargs(model_kwargs),
        "input_shape": [batch, *input_shape],
        "input_dtype": "float32",
        "output_shape": [batch, int(out.shape[-1])],
        "output_dtype": str(out.dtype),
        "num_classes": int(out.shape[-1]),
        "normalization": normalization,
        "input_contract": None if contract is None else contract.to_json(),
        "note": contract_note(contract) if normalization is None else None,
        "parameters": models.count_params(variables),
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        "calling_convention_version": exported.calling_convention_version,
        "artifact_bytes": len(artifact),
        "artifact_sha256": hashlib.sha256(artifact).hexdigest(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, bytes(artifact))
    if not write_stablehlo and overwrite and stablehlo_path(path).is_file():
        stablehlo_path(path).unlink()  # it described the program just replaced
    if write_stablehlo:
        header = (f"// {name} exported by jaxnets for {', '.join(exported.platforms)} (jax {jax.__version__}).\n"
                  f"// For reading: constants over {_ELIDE_ABOVE} elements (the weights) are elided.\n")
        _write_atomic(stablehlo_path(path), (header + stablehlo_text(exported)).encode())
    _write_atomic(sidecar_path(path), json.dumps(info, indent=2).encode())  # last: its presence marks a complete save
    return path


class ExportedModel:
    """A loaded artifact: call it on a batch of images to get logits. No model code involved.

    Attributes:
      info: the sidecar (model name, input shape/dtype, normalisation, class count, ...).
      exported: the `jax.export.Exported` itself.
    """

    def __init__(self, exported: jax.export.Exported, info: dict, path: Path):
        self.exported, self.info, self.path = exported, info, path
        # The model's compute dtype picks jaxnets' CPU compiler options for this program (`backend.jit`).
        kwargs = info.get("model_kwargs")
        self._call = backend.jit(exported.call, dtype=kwargs.get("dtype") if isinstance(kwargs, dict) else None)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape (without the batch axis)."""
        return tuple(self.info["input_shape"][1:])

    def __call__(self, images) -> jax.Array:
        """`[N, *input_shape]` float32 -> `[N, num_classes]` float32 logits, on the default device.

        Raises:
          ValueError: `images` has another shape or dtype than the sidecar says
            (the message says which), or an empty batch.
        """
        shape = tuple(np.shape(images))
        dtype = np.dtype(getattr(images, "dtype", np.asarray(images).dtype))
        expected = f"[N, {', '.join(map(str, self.input_shape))}] {self.info['input_dtype']}"
        if len(shape) != len(self.input_shape) + 1 or shape[1:] != self.input_shape or shape[0] < 1:
            raise ValueError(f"{self.path.name} ({self.info['model']}) expects images of shape {expected} "
                             f"(N >= 1); got shape {list(shape)}")
        if dtype != np.dtype(self.info["input_dtype"]):
            raise ValueError(f"{self.path.name} ({self.info['model']}) expects {expected}; got dtype {dtype}: "
                             f"convert with images.astype('{self.info['input_dtype']}')")
        return self._call(images)

    def __repr__(self) -> str:
        return (f"ExportedModel({self.info['model']}, input {self.info['input_shape']} {self.info['input_dtype']}, "
                f"{self.info['num_classes']} classes, platforms {self.info['platforms']})")


def read_info(path: str | Path) -> dict:
    """The sidecar of the artifact at `path`.

    Raises:
      ExportError: it is missing or not a jaxnets export sidecar.
    """
    where = sidecar_path(path)
    try:
        info = json.loads(where.read_text())
    except FileNotFoundError as err:
        raise ExportError(f"{where} is missing: {path} was not written by jaxnets.export.save "
                          "(or only in part)") from err
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot read {where}: {err}") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ExportError(f"{where} is not a jaxnets export sidecar (format {FORMAT!r} expected)")
    missing = [field for field in _SIDECAR_FIELDS if field not in info]
    if missing:
        raise ExportError(f"{where} lacks {', '.join(missing)}: it was cut or edited; export the model again")
    for field, kind in _SIDECAR_FIELDS.items():
        if not isinstance(info[field], kind) or isinstance(info[field], bool):
            raise ExportError(f"{where}: {field} must be a {kind.__name__}, got {info[field]!r}; export the model "
                              "again")
    shape = info["input_shape"]
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape[1:]):
        raise ExportError(f"{where}: input_shape must be [batch, positive sizes...], got {shape!r}; export the "
                          "model again")
    norm = info.get("normalization")
    if norm is not None and not (isinstance(norm, dict) and isinstance(norm.get("mean"), list)
                                 and isinstance(norm.get("std"), list)):
        raise ExportError(f"{where}: normalization must be null or have mean and std lists, got {norm!r}")
    return info


def load(path: str | Path) -> ExportedModel:
    """Read an artifact written by `save`; returns a callable `images -> logits`. Imports no model code.

    Raises:
      FileNotFoundError: no file at `path`.
      ExportError: the sidecar is missing or malformed, or the artifact is
        corrupt (its SHA-256 differs from the sidecar's) or unreadable.
    """
    path = expand_path(path).absolute()
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    info = read_info(path)
    artifact = path.read_bytes()
    if hashlib.sha256(artifact).hexdigest() != info.get("artifact_sha256"):
        raise ExportError(f"{path} is corrupt: its SHA-256 differs from the one in {sidecar_path(path).name} "
                          "(the file changed after it was written); export it again")
    try:
        exported = jax.export.deserialize(bytearray(artifact))
    except Exception as err:  # flatbuffers/MLIR raise many types
        raise ExportError(f"cannot deserialize {path} ({errors.describe(err)}); was it written by a newer jax "
                          f"than {jax.__version__}? The sidecar says {info.get('jax_version')}") from err
    return ExportedModel(exported, info, path)


def describe(info: dict) -> str:
    """One line about an exported model, from its sidecar."""
    norm = info.get("normalization")
    norm_text = f", normalise with mean {norm['mean']} std {norm['std']}" if norm else \
        ", normalisation NOT KNOWN (see the sidecar's note)"
    return (f"{info['model']}: input {info['input_shape']} {info['input_dtype']} -> {info['num_classes']} classes, "
            f"{info['parameters']:,} parameters, {info['artifact_bytes'] / 1e6:.1f} MB, platforms "
            f"{', '.join(info['platforms'])}{norm_text}")


__all__ = ["ExportError", "ExportedModel", "FORMAT", "NO_CONTRACT_NOTE", "contract_note", "describe", "load",
           "normalization_for", "read_info", "save",
           "sidecar_path", "stablehlo_path"]
