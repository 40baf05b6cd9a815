"""jaxnets.data.download: the published files fetched from a loopback mirror, verified, loaded, trained on.

The mirror is an `http.server` on 127.0.0.1 in a thread, started per test and
stopped at its end (and by a timer, whatever happens), serving
`<root>/<data set>/<file>` with hooks to cut a transfer mid-file.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import re
import shutil
import socket
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from jaxnets import data
from jaxnets.data import download as dl

MNIST_TRAIN_HISTOGRAM = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_HISTOGRAM = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")


class _Mirror(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror root; `server.cuts[path]` transfers of `path` stop half-way."""

    def do_GET(self):
        server = self.server
        with server.lock:
            server.requests.append(self.path)
            cut = server.cuts.get(self.path, 0) > 0
            if cut:
                server.cuts[self.path] -= 1
        if not cut:
            return super().do_GET()
        body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))  # promises the whole file ...
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])  # ... and hangs up half-way
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """(base URL, root folder, server) of a loopback mirror; `$JAXNETS_DATA_MIRROR` is cleared."""
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a proxy from the environment must not intercept
    root = tmp_path / "mirror"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Mirror, directory=str(root)))
    server.daemon_threads = True
    server.lock, server.requests, server.cuts = threading.Lock(), [], {}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(300, server.shutdown)  # bounded even if the test hangs
    watchdog.daemon = True
    watchdog.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, server
    watchdog.cancel()
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _serve_mnist(root: Path, shared: Path, name: str = "mnist", folder: str = "mnist") -> Path:
    (root / name).mkdir(exist_ok=True)
    for f in IDX_FILES:
        shutil.copyfile(shared / folder / f, root / name / f)
    return root / name


def _leftovers(folder: Path) -> list[str]:
    """Partial or temporary files anywhere under `folder`."""
    return [str(p) for p in folder.rglob("*") if ".part" in p.name or p.name.startswith(".jaxnets-unpack")]


# ------------------------------------------------------------------ MNIST

def test_mnist_downloaded_verified_loaded_and_trained(shared_data, mirror, tmp_path, monkeypatch):
    from jaxnets.training import TrainConfig, fit

    url, root, server = mirror
    _serve_mnist(root, shared_data)
    monkeypatch.setenv(dl.MIRROR_ENV, url)  # the way a user (or the CLI) points at a mirror
    data_dir = tmp_path / "data"
    config = TrainConfig(model="mlp", dataset="mnist", split="test", data_dir=str(data_dir), epochs=1,
                         batch_size=64, optimizer="adam", lr=3e-3, schedule="constant")
    result = fit(config, log=lambda _: None, progress=False)

    raw = data_dir / "MNIST" / "raw"  # torchvision's layout
    for name, md5 in dl.REMOTES["mnist"].files["test"]:
        assert dl.md5sum(raw / name) == md5
    assert sorted(server.requests) == ["/mnist/t10k-images-idx3-ubyte.gz", "/mnist/t10k-labels-idx1-ubyte.gz"]
    assert not (raw / "train-images-idx3-ubyte.gz").exists(), "only the requested split is fetched"
    assert _leftovers(data_dir) == []
    # one epoch of the 784-10-10-10 MLP on 8,000 real digits: 0.87 (chance 0.1)
    assert result.history[-1]["val_acc"] > 0.7
    ds = data.load("mnist", "test", data_dir=data_dir)  # now on disk: no request
    assert len(server.requests) == 2
    assert np.bincount(ds.labels).tolist() == MNIST_TEST_HISTOGRAM


def test_full_mnist_and_fashion_mnist_histograms(shared_data, mirror, tmp_path):
    mnist = {s: data.load("mnist", s, source="files", data_dir=shared_data / "mnist") for s in ("train", "test")}
    assert mnist["train"].images.shape == (60_000, 28, 28, 1) and mnist["test"].images.shape == (10_000, 28, 28, 1)
    assert np.bincount(mnist["train"].labels).tolist() == MNIST_TRAIN_HISTOGRAM
    assert np.bincount(mnist["test"].labels).tolist() == MNIST_TEST_HISTOGRAM

    url, root, server = mirror
    _serve_mnist(root, shared_data, "fashion_mnist", "fashion-mnist")
    fashion = {s: data.load("fashion_mnist", s, data_dir=tmp_path / "data", mirror=url) for s in ("train", "test")}
    assert len(server.requests) == 4 and (tmp_path / "data" / "FashionMNIST" / "raw").is_dir()
    assert fashion["train"].images.shape == (60_000, 28, 28, 1) and fashion["test"].images.shape == (10_000, 28, 28, 1)
    assert np.bincount(fashion["train"].labels).tolist() == [6000] * 10
    assert np.bincount(fashion["test"].labels).tolist() == [1000] * 10
    assert fashion["train"].class_names[0] == "T-shirt/top"


def test_wrong_checksum_is_refused_and_nothing_kept(shared_data, mirror, tmp_path):
    url, root, _ = mirror
    served = _serve_mnist(root, shared_data)
    labels = bytearray((served / "t10k-labels-idx1-ubyte.gz").read_bytes())
    labels[100] ^= 0xFF  # one flipped byte
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(labels))
    data_dir = tmp_path / "data"
    with pytest.raises(dl.ChecksumMismatch, match=r"t10k-labels-idx1-ubyte.gz: md5 [0-9a-f]{32}, but the published "
                                                  r"file has md5 ec29112dd5afa0611ce80d1b7f02629c"):
        data.load("mnist", "test", data_dir=data_dir, mirror=url)
    raw = data_dir / "MNIST" / "raw"
    assert not (raw / "t10k-labels-idx1-ubyte.gz").exists()
    assert _leftovers(data_dir) == []
    assert not data.files.has_files("mnist", "test", data_dir)


def test_cut_connection_is_retried_and_never_used(shared_data, mirror, tmp_path):
    url, root, server = mirror
    _serve_mnist(root, shared_data)
    path = "/mnist/t10k-images-idx3-ubyte.gz"
    server.cuts[path] = 1  # the first transfer is cut half-way; fetch starts again
    ds = data.load("mnist", "test", data_dir=tmp_path / "a", mirror=url)
    assert server.requests.count(path) == 2
    assert np.bincount(ds.labels).tolist() == MNIST_TEST_HISTOGRAM

    server.cuts[path] = 100  # now every transfer is cut: the load fails and keeps no partial file
    with pytest.raises(data.DataNotFound, match=r"could not download t10k-images-idx3-ubyte.gz .*IncompleteRead"):
        data.load("mnist", "test", data_dir=tmp_path / "b", mirror=url)
    raw = tmp_path / "b" / "MNIST" / "raw"
    assert not (raw / "t10k-images-idx3-ubyte.gz").exists() and _leftovers(tmp_path / "b") == []
    server.cuts[path] = 0  # the network recovers: a retry completes
    again = data.load("mnist", "test", data_dir=tmp_path / "b", mirror=url)
    np.testing.assert_array_equal(again.images, ds.images)


def test_offline_error_says_what_to_download_and_where(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: "offline", quickly
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv(dl.MIRROR_ENV, dead)
    with pytest.raises(data.DataNotFound) as err:
        data.load("cifar10", "train", data_dir=tmp_path / "data")
    message = str(err.value)
    assert f"{dead}/cifar10/cifar-10-python.tar.gz (md5 c58f30108f718f92721af3b95e74349a)" in message
    assert f"put it in {tmp_path / 'data'}" in message and "cifar-10-batches-py" in message
    assert dl.MIRROR_ENV in message
    # Without a mirror ('' overrides the variable) the instructions name the published URLs.
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in dl.instructions("cifar10", "train", tmp_path,
                                                                                        mirror="")
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in dl.instructions(
        "mnist", "train", tmp_path, mirror="")


def test_paths_expand_and_downloads_default_to_the_cache_dir(shared_data, mirror, tmp_path, monkeypatch):
    url, root, server = mirror
    _serve_mnist(root, shared_data)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JAXNETS_CACHE", "~/cache")  # `~` expands in the cache variable too
    monkeypatch.setenv("MY_DATA", str(tmp_path / "env"))
    assert data.default_data_dir() == tmp_path / "home" / "cache" / "data"
    default = data.load("mnist", "test", mirror=url)  # no data_dir: the user cache dir
    assert (tmp_path / "home" / "cache" / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file()
    tilde = data.load("mnist", "test", data_dir="~/mnist", mirror=url)
    assert (tmp_path / "home" / "mnist" / "MNIST" / "raw").is_dir() and not Path("~").exists()
    env = data.load("mnist", "test", data_dir="$MY_DATA/mnist", mirror=url)
    assert (tmp_path / "env" / "mnist" / "MNIST" / "raw").is_dir()
    np.testing.assert_array_equal(default.labels, tilde.labels)
    np.testing.assert_array_equal(default.labels, env.labels)
    assert len(server.requests) == 6  # three folders, two files each


# ------------------------------------------------------------------ CIFAR-10

def _cifar10_python_archive(shared: Path, path: Path, per_batch: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """A small cifar-10-python.tar.gz built from the exact subset; returns its (train) records."""
    from jaxnets.data.files import read_cifar_binary

    batches = sorted((shared / "cifar10-subset" / "cifar-10-batches-bin").glob("data_batch_*.bin"))
    tar_buffer = io.BytesIO()
    images, labels = [], []
    with tarfile.open(fileobj=tar_buffer, mode="w:gz") as tar:
        def add(name, obj):
            payload = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        for i, batch in enumerate(batches):
            x, y = read_cifar_binary(batch)
            x, y = x[:per_batch], y[:per_batch]
            images.append(x)
            labels.append(y)
            flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
            add(f"data_batch_{i + 1}", {b"data": flat, b"labels": y.tolist(), b"batch_label": b"b"})
            if i == 0:
                add("test_batch", {b"data": flat, b"labels": y.tolist(), b"batch_label": b"t"})
        add("batches.meta", {b"label_names": [n.encode() for n in data.files.CIFAR10_CLASSES]})
    path.write_bytes(tar_buffer.getvalue())
    return np.concatenate(images), np.concatenate(labels)


def test_cifar10_downloaded_verified_unpacked_loaded_and_trained(shared_data, mirror, tmp_path, monkeypatch):
    from jaxnets.training import TrainConfig, fit

    url, root, server = mirror
    (root / "cifar10").mkdir()
    archive = root / "cifar10" / "cifar-10-python.tar.gz"
    images, labels = _cifar10_python_archive(shared_data, archive)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    # The test archive is smaller than the published one: only its checksum is swapped in.
    remote = dataclasses.replace(dl.REMOTES["cifar10"], files={s: (("cifar-10-python.tar.gz", md5),)
                                                               for s in ("train", "test")})
    monkeypatch.setitem(dl.REMOTES, "cifar10", remote)
    monkeypatch.setenv(dl.MIRROR_ENV, url)
    monkeypatch.setenv(data.files.STRICT_ENV, "0")  # 120 records per batch stand in for the published 10,000
    data_dir = tmp_path / "data"

    train = data.load("cifar10", "train", data_dir=data_dir)
    test = data.load("cifar10", "test", data_dir=data_dir)
    assert server.requests == ["/cifar10/cifar-10-python.tar.gz"], "one archive serves both splits"
    assert (data_dir / "cifar-10-python.tar.gz").is_file() and (data_dir / "cifar-10-batches-py").is_dir()
    assert _leftovers(data_dir) == []
    np.testing.assert_array_equal(train.images, images)  # bit-exact through pickle, tar and gzip
    np.testing.assert_array_equal(train.labels, labels)
    assert train.class_names == data.files.CIFAR10_CLASSES and len(test) == 120

    result = fit(TrainConfig(model="mlp", dataset="cifar10", data_dir=str(data_dir), epochs=1, batch_size=32),
                 log=lambda _: None, progress=False)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])
    assert result.history[0]["test_acc"] is not None


def test_cifar10_archive_with_a_wrong_checksum_is_refused(shared_data, mirror, tmp_path):
    url, root, _ = mirror
    (root / "cifar10").mkdir()
    _cifar10_python_archive(shared_data, root / "cifar10" / "cifar-10-python.tar.gz", per_batch=4)
    with pytest.raises(dl.ChecksumMismatch, match="c58f30108f718f92721af3b95e74349a"):  # the real published md5
        data.load("cifar10", "train", data_dir=tmp_path, mirror=url)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror"]  # nothing kept, nothing unpacked


def test_archives_cannot_write_outside_their_folder(tmp_path):
    for name, kind in (("../escaped.txt", tarfile.REGTYPE), ("/tmp/absolute.txt", tarfile.REGTYPE),
                       ("link", tarfile.SYMTYPE)):
        archive = tmp_path / "evil.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "../../outside"
            info.size = 0 if kind == tarfile.SYMTYPE else 4
            tar.addfile(info, io.BytesIO(b"evil") if kind == tarfile.REGTYPE else None)
        target = tmp_path / "unpacked"
        target.mkdir(exist_ok=True)
        with pytest.raises(data.CorruptDataFile, match=re.escape(f"refusing to unpack {name!r}")):
            dl.safe_extract(archive, target)
        assert list(target.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


def test_a_mirror_without_the_file_is_a_clear_error(mirror, tmp_path):
    url, _, server = mirror
    with pytest.raises(data.DataNotFound, match=r"could not download t10k-images-idx3-ubyte.gz .*404.*"
                                                r"put them in .*MNIST/raw"):
        data.load("mnist", "test", data_dir=tmp_path / "data", mirror=url)
    assert server.requests == ["/mnist/t10k-images-idx3-ubyte.gz"]  # a 404 is not retried
    assert _leftovers(tmp_path / "data") == []


def test_download_false_and_unknown_names(tmp_path, monkeypatch):
    monkeypatch.setenv(dl.MIRROR_ENV, "http://127.0.0.1:9")  # must not be contacted
    with pytest.raises(data.DataNotFound, match=r"mnist \(train\) not found in .*train-images-idx3-ubyte.gz.*download"):
        data.load("mnist", "train", data_dir=tmp_path, download=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(data.DataNotFound, match="downloadable: mnist, fashion_mnist, cifar10, cifar100"):
        dl.download_files("digits", "train", tmp_path)
    assert os.fspath(dl.urls("mnist", "x.gz", "http://m/")[0]) == "http://m/mnist/x.gz"


def test_already_present_files_are_not_fetched_again(shared_data, mirror, tmp_path):
    url, root, server = mirror
    _serve_mnist(root, shared_data)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copyfile(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz", raw / "t10k-labels-idx1-ubyte.gz")
    dl.download_files("mnist", "test", tmp_path, mirror=url, progress=False)
    assert server.requests == ["/mnist/t10k-images-idx3-ubyte.gz"]
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz") as f:
        assert f.read(4) == b"\x00\x00\x08\x03"


def test_the_cli_mirror_flag_reaches_the_downloader(tmp_path, monkeypatch, capsys):
    from jaxnets.cli import train as cli

    with socket.socket() as s:  # a port nobody listens on: the download fails at once, naming the URL it tried
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    assert cli.main(["--dataset", "cifar10", "--model", "lenet5", "--data-dir", str(tmp_path / "data"), "--mirror",
                     dead, "--workdir", str(tmp_path / "run"), "--no-progress"]) == 1
    assert f"{dead}/cifar10/cifar-10-python.tar.gz" in capsys.readouterr().err


# ------------------------------------------------------------------ bounded downloads

class _SlowServer:
    """A loopback TCP server (127.0.0.1 only) that misbehaves per `mode`, on threads that stop by themselves.

    'silent': accepts and never answers; 'trickle': sends headers, then one byte every 0.2 s; 'slow': headers, then
    4 KiB every 0.5 s (above the stall bound, below the total). Every connection ends after `life_s` seconds at most.
    """

    def __init__(self, mode: str, life_s: float = 20.0):
        self.mode, self.life_s = mode, life_s
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        deadline = time.monotonic() + self.life_s
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn, deadline), daemon=True).start()
        self.sock.close()

    def _answer(self, conn, deadline):
        with conn:
            try:
                conn.recv(4096)
                if self.mode != "silent":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
                while not self.stop.is_set() and time.monotonic() < deadline:
                    if self.mode == "trickle":
                        conn.sendall(b"x")
                    elif self.mode == "slow":
                        conn.sendall(b"x" * 4096)
                    self.stop.wait(0.2 if self.mode == "trickle" else 0.5)
            except OSError:
                pass  # the client hung up: what a bounded download does

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


@pytest.fixture
def slow_server(monkeypatch):
    """`slow_server(mode)` starts a `_SlowServer`; all are stopped at the end of the test."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    servers = []

    def start(mode):
        servers.append(_SlowServer(mode))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize(("mode", "timeouts", "match"), [
    ("silent", "5,1,10", r"accepted the connection but sent no answer within 1 s \(the stall bound"),
    ("trickle", "5,1,10", r"stalled: \d+ bytes in the last \d s \(the stall bound is 1 KiB per 1 s; \d+ of "
                          r"10,000,000 bytes arrived\)"),
    ("slow", "5,2,3", r"not complete after 3 s \(the total bound; [\d,]+ of 10,000,000 bytes arrived\)"),
])
def test_a_server_that_never_answers_trickles_or_crawls_fails_within_its_bounds(
        mode, timeouts, match, slow_server, tmp_path, monkeypatch):
    """Each bound (stall before the answer, stall in the body, total) ends the download with a message saying
    which bound and how far it got; a stall is not retried; the mistyped folder is not left behind."""
    server = slow_server(mode)
    monkeypatch.setenv(dl.TIMEOUTS_ENV, timeouts)
    target = tmp_path / "typo" / "data"
    with pytest.raises(data.DataNotFound, match=r"could not download t10k-images-idx3-ubyte.gz .*DownloadTimeout: .*"
                                                + match):
        data.load("mnist", "test", data_dir=target, mirror=server.url)
    assert server.connections == 1  # not retried: each retry would cost another bound
    assert not (tmp_path / "typo").exists()


def test_timeouts_from_the_environment_are_checked():
    """A malformed `$JAXNETS_DOWNLOAD_TIMEOUTS` is a clear error, not a default silently used."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(dl.TIMEOUTS_ENV, "10,0,100")
        with pytest.raises(ValueError, match=r"JAXNETS_DOWNLOAD_TIMEOUTS='10,0,100': expected three positive"):
            dl.Timeouts.from_env()
        mp.setenv(dl.TIMEOUTS_ENV, "1,2,3")
        assert dl.Timeouts.from_env() == dl.Timeouts(1.0, 2.0, 3.0)


def test_partial_files_of_a_killed_download_are_removed_by_the_next_try(shared_data, mirror, tmp_path):
    """`.part` files and unpack folders named after a dead process go; those of a live process stay."""
    import subprocess
    import sys

    url, root, _ = mirror
    _serve_mnist(root, shared_data)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    host = dl._host()
    stale = [raw / f".t10k-images-idx3-ubyte.gz.{host}-{dead}.part", raw / f".jaxnets-unpack-{host}-{dead}-abc123"]
    stale[0].write_bytes(b"half a file")
    stale[1].mkdir()
    live = raw / f".t10k-labels-idx1-ubyte.gz.{host}-{os.getppid()}.part"  # a live process's download: kept
    live.write_bytes(b"in progress")
    dl.download_files("mnist", "test", tmp_path, mirror=url, progress=False)
    assert not any(p.exists() for p in stale) and live.exists()
    assert (raw / "t10k-images-idx3-ubyte.gz").is_file()


def test_a_mistyped_data_dir_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    """Offline (a dead mirror): the folders the download would have filled are removed again, from Python and CLI."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pytest.raises(data.DataNotFound, match="could not download"):
        data.load("mnist", "test", data_dir=tmp_path / "dtaa" / "mnist", mirror=dead)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    from jaxnets.cli import train as cli

    code = cli.main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "dtaa"), "--mirror", dead,
                     "--workdir", str(tmp_path / "run"), "--no-progress", "--no-tensorboard"])
    assert code == 1 and "could not download" in capsys.readouterr().err
    assert not (tmp_path / "dtaa").exists()
