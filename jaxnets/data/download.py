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
never leaves a file the loaders would read; one left by a killed process is
removed by the next try, which recognises it by the dead pid in its name).

Every download is bounded (`Timeouts`, or `$JAXNETS_DOWNLOAD_TIMEOUTS` as
`connect,stall,total` seconds): `connect` to open the connection; `stall`
for the server's answer and then for each 1 KiB of the file (so a server
that accepts and never answers, or sends a byte every few seconds, fails
after `stall` seconds, not never); `total` for the whole file, retries
included. The progress bar says what it waits for, and a timeout says which
bound it hit and how far the file got. Folders the download creates are
removed again when it fails (a mistyped `data_dir` leaves nothing behind).
Archives are unpacked with the
standard library's `tarfile` under its `'data'` filter (no absolute paths,
no `..`, no links out of the folder, no devices), into a temporary folder
renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from tqdm.auto import tqdm

from jaxnets.data import cache, files
from jaxnets.data.errors import CorruptDataFile, DataNotFound
from jaxnets.errors import first_line
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
TIMEOUTS_ENV = "JAXNETS_DOWNLOAD_TIMEOUTS"
_LOW_SPEED_BYTES = 1024  # less than this in `stall` seconds is a stalled transfer (curl's --speed-limit idea)


class DownloadTimeout(OSError):
    """A download hit one of its bounds (`Timeouts`); the message says which, and what it was waiting for."""


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Bounds on one file's download, in seconds.

    Attributes:
      connect: to open the TCP connection.
      stall: for the server's answer, and then for each 1 KiB of the body.
      total: for the whole file, every attempt included.
    """

    connect: float = 10.0
    stall: float = 30.0
    total: float = 1800.0

    @classmethod
    def from_env(cls) -> Timeouts:
        """`$JAXNETS_DOWNLOAD_TIMEOUTS` ('connect,stall,total' seconds), else the defaults.

        Raises:
          ValueError: the variable is not three positive numbers.
        """
        text = os.environ.get(TIMEOUTS_ENV, "").strip()
        if not text:
            return cls()
        try:
            values = [float(v) for v in text.split(",")]
            if len(values) != 3 or not all(0 < v < float("inf") for v in values):
                raise ValueError
        except ValueError:
            raise ValueError(f"{TIMEOUTS_ENV}={text!r}: expected three positive numbers of seconds, "
                             "'connect,stall,total' (e.g. 10,30,1800)") from None
        return cls(*values)


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


def _host() -> str:
    return socket.gethostname().replace(".", "_").replace("-", "_")  # one dot-free, dash-free field of a file name


def _owner_tag() -> str:
    """`host-pid` of this process: what names its partial files, so a later try knows whether they are stale."""
    return f"{_host()}-{os.getpid()}"


def _is_stale(tag: str) -> bool:
    """Whether the process that wrote a partial file named with `tag` (`host-pid`) is gone (this host only)."""
    host, _, pid = tag.rpartition("-")
    if host != _host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete the partial downloads (`.<name>.<host>-<pid>.part`) and unpack folders (`.jaxnets-unpack-<host>-<pid>-*`)
    that killed processes of this host left in `folder`; returns what was removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        name = entry.name
        if name.startswith(".") and name.endswith(".part"):
            tag = name[:-len(".part")].rsplit(".", 1)[-1]
        elif name.startswith(".jaxnets-unpack-"):
            tag = "-".join(name[len(".jaxnets-unpack-"):].split("-")[:-1])
        else:
            continue
        if _is_stale(tag):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def fetch(url: str, destination: Path, md5: str, *, retries: int = 2, progress: bool = True,
          timeouts: Timeouts | None = None) -> Path:
    """Download `url` to `destination` if its md5 is `md5`; keep nothing otherwise.

    The bytes go to a hidden `.<name>.<host>-<pid>.part` file beside
    `destination`, renamed into place only when the transfer completed and
    the checksum matched; partial files of killed processes are removed
    first. A connection cut mid-file is retried `retries` times from
    scratch; connection failures are retried by urllib3 with a short backoff;
    a stall or the total bound is not retried.

    Args:
      timeouts: the bounds (`Timeouts`); None: `Timeouts.from_env()`.

    Returns:
      `destination`.

    Raises:
      ChecksumMismatch: the file arrived but its md5 differs (nothing kept).
      DownloadTimeout: no connection, no answer, a stalled body or the total
        time ran out (says which and how far the file got).
      OSError (requests.RequestException): the server could not be reached,
        answered with an error status, or kept cutting the transfer.
    """
    import requests  # only needed on the download path
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    timeouts = timeouts or Timeouts.from_env()
    deadline = time.monotonic() + timeouts.total
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(destination.parent)
    part = destination.parent / f".{destination.name}.{_owner_tag()}.part"
    retry = Retry(total=retries, read=False, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=("GET",), raise_on_status=True)
    try:
        with requests.Session() as session:
            session.mount("http://", HTTPAdapter(max_retries=retry))
            session.mount("https://", HTTPAdapter(max_retries=retry))
            for attempt in range(retries + 1):
                try:
                    digest = _stream(session, url, part, destination.name, progress, timeouts, deadline)
                    break
                except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                        requests.exceptions.Timeout, _urllib3_cut()) as err:
                    # A cut mid-body is not retried by urllib3 (the headers had arrived): start again.
                    part.unlink(missing_ok=True)
                    if attempt == retries or not _cut_mid_body(err) or time.monotonic() >= deadline:
                        raise _as_timeout(err, url, timeouts) from err
                    time.sleep(0.5 * (attempt + 1))
        if digest != md5:
            raise ChecksumMismatch(f"{url}: md5 {digest}, but the published file has md5 {md5}; the download was "
                                   "refused and deleted (a damaged transfer or a wrong mirror)")
        os.replace(part, destination)
        return destination
    finally:
        part.unlink(missing_ok=True)


def _urllib3_cut() -> type[Exception]:
    from urllib3.exceptions import ProtocolError

    return ProtocolError


def _cut_mid_body(err: Exception) -> bool:
    import requests

    return isinstance(err, (requests.exceptions.ChunkedEncodingError, _urllib3_cut())) or "IncompleteRead" in str(err)


def _as_timeout(err: Exception, url: str, timeouts: Timeouts) -> Exception:
    """A connect or read timeout from requests as a `DownloadTimeout` saying what it waited for; other errors as is."""
    import requests

    host = urlsplit(url).netloc
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return DownloadTimeout(f"could not connect to {host} within {timeouts.connect:g} s (the connect bound; "
                               f"{TIMEOUTS_ENV}=connect,stall,total changes it)")
    if isinstance(err, requests.exceptions.ReadTimeout) or "Read timed out" in str(err):
        return DownloadTimeout(f"{host} accepted the connection but sent no answer within {timeouts.stall:g} s "
                               f"(the stall bound; {TIMEOUTS_ENV}=connect,stall,total changes it)")
    if not isinstance(err, OSError):  # urllib3's ProtocolError (a cut read by read1): requests' kind, an OSError
        return requests.exceptions.ChunkedEncodingError(err)
    return err


def _stream(session, url: str, part: Path, label: str, progress: bool, timeouts: Timeouts, deadline: float) -> str:
    """GET `url` into `part` within the bounds; returns the md5 of the bytes."""
    from urllib3.exceptions import ReadTimeoutError

    digest = hashlib.md5()
    host = urlsplit(url).netloc
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DownloadTimeout(f"{label}: the total bound of {timeouts.total:g} s ran out before a new attempt")
    with tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc=f"{label}: waiting for {host}",
              disable=not progress, leave=False) as bar:
        with session.get(url, stream=True, timeout=(timeouts.connect, min(timeouts.stall, remaining))) as response:
            response.raise_for_status()
            total = int(response.headers.get("Content-Length", 0)) or None
            bar.reset(total=total)
            bar.set_description(f"download {label}")
            received, window_start, window_bytes = 0, time.monotonic(), 0
            with open(part, "wb") as out:
                while True:
                    try:
                        block = response.raw.read1(1 << 16, decode_content=True)  # what has arrived, >= 1 byte
                    except ReadTimeoutError:
                        raise DownloadTimeout(f"{url}: stalled: nothing arrived for {timeouts.stall:g} s (the stall "
                                              f"bound; {received:,} bytes had arrived); {TIMEOUTS_ENV}="
                                              "connect,stall,total changes it") from None
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
                    received += len(block)
                    window_bytes += len(block)
                    now = time.monotonic()
                    so_far = f"{received:,} of {total:,} bytes" if total else f"{received:,} bytes"
                    if now >= deadline:
                        raise DownloadTimeout(f"{url}: not complete after {timeouts.total:g} s (the total bound; "
                                              f"{so_far} arrived); {TIMEOUTS_ENV}=connect,stall,total changes it")
                    if now - window_start >= timeouts.stall:
                        if window_bytes < _LOW_SPEED_BYTES:
                            raise DownloadTimeout(
                                f"{url}: stalled: {window_bytes} bytes in the last {now - window_start:.0f} s "
                                f"(the stall bound is 1 KiB per {timeouts.stall:g} s; {so_far} arrived); "
                                f"{TIMEOUTS_ENV}=connect,stall,total changes it")
                        window_start, window_bytes = now, 0
            if total is not None and received < total:
                from urllib3.exceptions import ProtocolError

                raise ProtocolError(f"IncompleteRead({received} bytes read, {total - received} more expected)")
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
                   progress: bool = True, timeouts: Timeouts | None = None) -> Path:
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
      timeouts: bounds on each file (`Timeouts`); None: `Timeouts.from_env()`.

    Returns:
      the data directory, ready for `files.load_files(name, split, data_dir)`.

    Raises:
      DataNotFound: no URL could deliver a file (e.g. offline, or every URL
        timed out: `DownloadTimeout`'s message is included); the message says
        what to download and where to put it. Folders this call created are
        removed again (when empty).
      ChecksumMismatch: a file arrived with the wrong md5 (nothing kept).
      CorruptDataFile: an archive cannot be unpacked safely.
    """
    if name not in REMOTES:
        raise DataNotFound(f"{name} has no published files to download; downloadable: {', '.join(DOWNLOADABLE)}")
    data_dir = expand_path(data_dir) if data_dir is not None else default_data_dir()
    if files.has_files(name, split, data_dir):
        return data_dir
    remote = REMOTES[name]
    timeouts = timeouts or Timeouts.from_env()
    folder = target_folder(name, data_dir)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _remove_empty(created)
        raise DataNotFound(f"{name} ({split}): cannot create {folder} ({err}); pass a writable data_dir") from err
    try:
        for filename, md5 in remote.files[split]:
            destination = folder / filename
            if destination.is_file() and md5sum(destination) == md5:
                continue
            _fetch_first(name, split, filename, md5, destination, data_dir, mirror, progress, timeouts)
        if remote.extracts_to:
            _unpack(folder / remote.files[split][0][0], folder, remote.extracts_to)
    except BaseException:
        _remove_empty(created)
        raise
    if not files.has_files(name, split, data_dir):
        raise CorruptDataFile(f"{name} ({split}): downloaded and verified, yet {data_dir} does not hold "
                              f"{files.expected_files(name, split)}; please report this")
    return data_dir


def _remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) where empty: what a failed download created and left unused."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or gone): neither it nor its parents are ours to remove


def _fetch_first(name, split, filename, md5, destination, data_dir, mirror, progress, timeouts) -> None:
    errors = []
    mismatch = None
    for url in urls(name, filename, mirror):
        try:
            fetch(url, destination, md5, progress=progress, timeouts=timeouts)
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
    return f"{type(err).__name__}: {first_line(reason or err)}"


def _unpack(archive: Path, folder: Path, extracts_to: str) -> None:
    """Unpack into a temporary folder beside the result, then rename it into place."""
    remove_stale_partials(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".jaxnets-unpack-{_owner_tag()}-", dir=folder))
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


__all__ = ["DOWNLOADABLE", "MIRROR_ENV", "REMOTES", "TIMEOUTS_ENV", "ChecksumMismatch", "DownloadTimeout", "Remote",
           "Timeouts", "default_data_dir", "download_files", "fetch", "instructions", "md5sum", "mirror_from_env",
           "remove_stale_partials", "safe_extract", "urls"]
