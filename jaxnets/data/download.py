"""Fetch the canonical published files of MNIST, Fashion-MNIST and CIFAR-10/100.

The files, URLs and md5 checksums are the ones torchvision downloads and
checks (`torchvision/datasets/mnist.py`, `cifar.py`); the files land where
torchvision puts them, so the file loaders in `jaxnets.data.files` read them
unchanged and a torchvision data root works here as is:

    <data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <data_dir>/FashionMNIST/raw/...            (same four names)
    <data_dir>/cifar-10-python.tar.gz  -> <data_dir>/cifar-10-batches-py/
    <data_dir>/cifar-100-python.tar.gz -> <data_dir>/cifar-100-python/

`data_dir` defaults to `default_data_dir()` (`~/.cache/jaxnets/data`, or
`$JAXNETS_CACHE/data`). A mirror replaces the published base URLs: pass
`mirror=` or set `$JAXNETS_DATA_MIRROR` to a base URL laid out as
`<mirror>/<data set name>/<file name>` (`mirror=''` forces the published URLs), e.g.
`$JAXNETS_DATA_MIRROR/mnist/train-images-idx3-ubyte.gz` or
`$JAXNETS_DATA_MIRROR/cifar10/cifar-10-python.tar.gz`.

Why `requests` and not tfds's download manager: `tfds.download.DownloadManager`
does work without TensorFlow, but it hard-codes 10 connection retries with
exponential backoff and no timeout, so offline it takes 204 s (measured) to
fail and a stalled server hangs it for ever; it also renames files after a
hash of their URL and checks sha256 only against its own registered tables,
not the published md5 sums. `requests` (already installed with tfds, and what
tfds itself downloads with) gives bounded timeouts and retries; around it this
module adds only what the data path needs: a tqdm bar, the md5 check, and
atomic placement (a file is written as a hidden `.part` file and renamed into
place only once complete and verified, so a cut connection or a bad checksum
never leaves a file the loaders would read). Archives are unpacked with the
standard library's `tarfile` under its `'data'` filter (no absolute paths,
no `..`, no links out of the folder, no devices), into a temporary folder
renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

from tqdm.auto import tqdm

from jaxnets.data import cache, files
from jaxnets.data.errors import CorruptDataFile, DataNotFound
from jaxnets.paths import expand_path

#: The environment variable naming a mirror: files are fetched from `$JAXNETS_DATA_MIRROR/<name>/<file>`.
MIRROR_ENV = "JAXNETS_DATA_MIRROR"


class ChecksumMismatch(CorruptDataFile):
    """A downloaded file does not have its published md5 checksum (it was not kept)."""


@dataclasses.dataclass(frozen=True)
class Remote:
    """Where a data set's published files live and where they go in `data_dir`."""

    urls: tuple[str, ...]  # base URLs, tried in order (torchvision's mirrors)
    folder: str  # sub-folder of data_dir that receives the files ('' = data_dir itself)
    files: dict[str, tuple[tuple[str, str], ...]]  # split -> ((file name, md5), ...)
    extracts_to: str | None = None  # an archive: the folder it unpacks to


_CIFAR = ("https://www.cs.toronto.edu/~kriz/",)
_CIFAR10_ARCHIVE = (("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),)
_CIFAR100_ARCHIVE = (("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),)

# torchvision's resources and md5 sums, verbatim.
REMOTES: dict[str, Remote] = {
    "mnist": Remote(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"), "MNIST/raw",
        {"train": (("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                   ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432")),
         "test": (("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
                  ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"))}),
    "fashion_mnist": Remote(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",), "FashionMNIST/raw",
        {"train": (("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                   ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe")),
         "test": (("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
                  ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"))}),
    "cifar10": Remote(_CIFAR, "", {"train": _CIFAR10_ARCHIVE, "test": _CIFAR10_ARCHIVE}, "cifar-10-batches-py"),
    "cifar100": Remote(_CIFAR, "", {"train": _CIFAR100_ARCHIVE, "test": _CIFAR100_ARCHIVE}, "cifar-100-python"),
}

#: The data sets whose published files `download_files` can fetch.
DOWNLOADABLE = tuple(REMOTES)
_TIMEOUT_S = (10.0, 60.0)  # (connect, read between bytes)


def default_data_dir() -> Path:
    """Where downloads go when no data_dir is given: `<user cache dir>/data`."""
    return cache.user_cache_dir() / "data"


def mirror_from_env() -> str | None:
    """`$JAXNETS_DATA_MIRROR`, or None when unset or empty."""
    return os.environ.get(MIRROR_ENV) or None


def urls(name: str, filename: str, mirror: str | None = None) -> list[str]:
    """The URLs `filename` of data set `name` is fetched from, in order.

    With a mirror (argument; None means `$JAXNETS_DATA_MIRROR`) only
    `<mirror>/<name>/<filename>`; otherwise (or with `mirror=''`) the
    published base URLs.
    """
    if mirror is None:
        mirror = mirror_from_env()
    if mirror:
        return [f"{mirror.rstrip('/')}/{name}/{filename}"]
    return [base + filename for base in REMOTES[name].urls]


def target_folder(name: str, data_dir: Path) -> Path:
    """The folder in `data_dir` that receives `name`'s downloaded files."""
    return data_dir / REMOTES[name].folder if REMOTES[name].folder else data_dir


def instructions(name: str, split: str, data_dir: Path, mirror: str | None = None) -> str:
    """One line: which files to fetch by hand, with md5, and where to put them."""
    remote = REMOTES[name]
    wanted = ", ".join(f"{urls(name, f, mirror)[0]} (md5 {md5})" for f, md5 in remote.files[split])
    extract = f" and unpack it there (it holds {remote.extracts_to}/)" if remote.extracts_to else ""
    return (f"Download {wanted} and put {'it' if len(remote.files[split]) == 1 else 'them'} in "
            f"{target_folder(name, data_dir)}{extract}; or point data_dir= (--data-dir) at a folder that already "
            f"holds {files.expected_files(name, split)}; or set {MIRROR_ENV} to a mirror laid out as "
            f"<mirror>/{name}/<file name>.")


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, destination: Path, md5: str, *, retries: int = 2, progress: bool = True) -> Path:
    """Download `url` to `destination` if its md5 is `md5`; keep nothing otherwise.

    The bytes go to a hidden `.part` file beside `destination`, renamed into
    place only when the transfer completed and the checksum matched. A
    connection cut mid-file is retried `retries` times from scratch;
    connection failures are retried by urllib3 with a short backoff.

    Returns:
      `destination`.

    Raises:
      ChecksumMismatch: the file arrived but its md5 differs (nothing kept).
      OSError (requests.RequestException): the server could not be reached,
        answered with an error status, or kept cutting the transfer.
    """
    import requests  # noqa: PLC0415 - only needed on the download path
    from requests.adapters import HTTPAdapter  # noqa: PLC0415
    from urllib3.util.retry import Retry  # noqa: PLC0415

    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.parent / f".{destination.name}.{uuid.uuid4().hex[:8]}.part"
    retry = Retry(total=retries, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=("GET",), raise_on_status=True)
    try:
        with requests.Session() as session:
            session.mount("http://", HTTPAdapter(max_retries=retry))
            session.mount("https://", HTTPAdapter(max_retries=retry))
            for attempt in range(retries + 1):
                try:
                    digest = _stream(session, url, part, destination.name, progress)
                    break
                except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as err:
                    # A cut mid-body is not retried by urllib3 (the headers had arrived): start again.
                    part.unlink(missing_ok=True)
                    if attempt == retries or not _cut_mid_body(err):
                        raise
                    time.sleep(0.5 * (attempt + 1))
        if digest != md5:
            raise ChecksumMismatch(f"{url}: md5 {digest}, but the published file has md5 {md5}; the download was "
                                   "refused and deleted (a damaged transfer or a wrong mirror)")
        os.replace(part, destination)
        return destination
    finally:
        part.unlink(missing_ok=True)


def _cut_mid_body(err: Exception) -> bool:
    import requests  # noqa: PLC0415

    return isinstance(err, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in str(err) or \
        "Read timed out" in str(err)


def _stream(session, url: str, part: Path, label: str, progress: bool) -> str:
    digest = hashlib.md5()
    with session.get(url, stream=True, timeout=_TIMEOUT_S) as response:
        response.raise_for_status()
        total = int(response.headers.get("Content-Length", 0)) or None
        with open(part, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                            desc=f"download {label}", disable=not progress, leave=False) as bar:
            for block in response.iter_content(chunk_size=1 << 16):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
    return digest.hexdigest()


def safe_extract(archive: Path, destination: Path) -> None:
    """Unpack a tar archive into `destination`, refusing members that would land outside it.

    Raises:
      CorruptDataFile: the archive is unreadable, or holds an absolute path,
        a `..` path, a link out of the folder or a device file.
    """
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            root = destination.resolve()
            for member in members:
                target = (root / member.name).resolve()
                if member.name.startswith("/") or not target.is_relative_to(root) or member.isdev() or (
                        (member.issym() or member.islnk())
                        and not (target.parent / member.linkname).resolve().is_relative_to(root)):
                    raise CorruptDataFile(f"{archive}: refusing to unpack {member.name!r}: it would write outside "
                                          f"{destination} (delete the archive and fetch it again)")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(destination, members=members, filter="data")
            else:  # Python < 3.10.12: the checks above are the guard
                tar.extractall(destination, members=members)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise CorruptDataFile(f"{archive}: cannot unpack ({type(err).__name__}: {err}); delete it and fetch it "
                              "again") from err


def download_files(name: str, split: str, data_dir: str | os.PathLike | None = None, *, mirror: str | None = None,
             progress: bool = True) -> Path:
    """Make sure `data_dir` holds `name`/`split` in the published format, fetching what is missing.

    Files already present with the right md5 are not fetched again. Archives
    are kept beside what they unpack to (as torchvision does).

    Args:
      name: one of `DOWNLOADABLE` ('mnist', 'fashion_mnist', 'cifar10', 'cifar100').
      split: 'train' or 'test'.
      data_dir: where the files go; `~` and `$VARS` expand. Default `default_data_dir()`.
      mirror: base URL replacing the published ones (`<mirror>/<name>/<file>`);
        None: `$JAXNETS_DATA_MIRROR` when set, else the published URLs;
        '': the published URLs whatever the variable says.
      progress: show tqdm bars.

    Returns:
      the data directory, ready for `files.load_files(name, split, data_dir)`.

    Raises:
      DataNotFound: no URL could deliver a file (e.g. offline); the message
        says what to download and where to put it.
      ChecksumMismatch: a file arrived with the wrong md5 (nothing kept).
      CorruptDataFile: an archive cannot be unpacked safely.
    """
    if name not in REMOTES:
        raise DataNotFound(f"{name} has no published files to download; downloadable: {', '.join(DOWNLOADABLE)}")
    data_dir = expand_path(data_dir) if data_dir is not None else default_data_dir()
    if files.has_files(name, split, data_dir):
        return data_dir
    remote = REMOTES[name]
    folder = target_folder(name, data_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataNotFound(f"{name} ({split}): cannot create {folder} ({err}); pass a writable data_dir") from err
    for filename, md5 in remote.files[split]:
        destination = folder / filename
        if destination.is_file() and md5sum(destination) == md5:
            continue
        _fetch_first(name, split, filename, md5, destination, data_dir, mirror, progress)
    if remote.extracts_to:
        _unpack(folder / remote.files[split][0][0], folder, remote.extracts_to)
    if not files.has_files(name, split, data_dir):
        raise CorruptDataFile(f"{name} ({split}): downloaded and verified, yet {data_dir} does not hold "
                              f"{files.expected_files(name, split)}; please report this")
    return data_dir


def _fetch_first(name, split, filename, md5, destination, data_dir, mirror, progress) -> None:
    errors = []
    mismatch = None
    for url in urls(name, filename, mirror):
        try:
            fetch(url, destination, md5, progress=progress)
            return
        except ChecksumMismatch as err:
            mismatch = err
        except OSError as err:  # requests' errors are OSErrors
            errors.append(f"{url}: {_describe(err)}")
    if mismatch is not None:
        raise mismatch
    raise DataNotFound(f"{name} ({split}): could not download {filename} ({'; '.join(errors)}). "
                       f"{instructions(name, split, data_dir, mirror)}")


def _describe(err: Exception) -> str:
    """`Type: reason`, without urllib3's 'Max retries exceeded' wrapping around the reason."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    text = str(reason or err).splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _unpack(archive: Path, folder: Path, extracts_to: str) -> None:
    """Unpack into a temporary folder beside the result, then rename it into place."""
    staging = Path(tempfile.mkdtemp(prefix=".jaxnets-unpack-", dir=folder))
    try:
        safe_extract(archive, staging)
        unpacked = staging / extracts_to
        if not unpacked.is_dir():
            raise CorruptDataFile(f"{archive}: expected a {extracts_to}/ folder inside; delete it and fetch it again")
        final = folder / extracts_to
        if final.exists():  # an incomplete earlier copy: replace it whole
            shutil.rmtree(final)
        os.replace(unpacked, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = ["DOWNLOADABLE", "MIRROR_ENV", "REMOTES", "ChecksumMismatch", "Remote", "default_data_dir",
           "download_files", "fetch", "instructions", "md5sum", "mirror_from_env", "safe_extract", "urls"]
