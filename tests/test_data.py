"""jaxnets.data: real files, hostile pickles, corrupt files, tfds mock, splits and the loader."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import data
from jaxnets.data import pipeline

MNIST_TEST_HISTOGRAM = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # the published t10k counts


@pytest.fixture
def trimmed(monkeypatch):
    """`$JAXNETS_DATA_STRICT=0`: the small stand-ins for the standard files below are trimmed on purpose."""
    monkeypatch.setenv(data.files.STRICT_ENV, "0")


# ------------------------------------------------------------------ real files

def test_real_mnist_t10k(shared_data):
    ds = data.load("mnist", "test", source="files", data_dir=shared_data / "mnist-t10k")
    assert ds.images.shape == (10_000, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32
    assert np.bincount(ds.labels).tolist() == MNIST_TEST_HISTOGRAM
    assert ds.class_names == tuple("0123456789")
    assert 30 < ds.images.mean() < 40  # MNIST is mostly black: mean pixel ~33


def test_real_mnist_in_torchvision_layout(shared_data, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (shared_data / "mnist-t10k").glob("*.gz"):
        with gzip.open(f) as src, open(raw / f.name[:-3], "wb") as dst:  # uncompressed, as torchvision leaves them
            shutil.copyfileobj(src, dst)
    ds = data.load("mnist", "test", data_dir=tmp_path)  # source='auto' finds the files
    assert np.bincount(ds.labels).tolist() == MNIST_TEST_HISTOGRAM


def test_real_cifar10_subset(shared_data):
    """The trimmed official layout (1,017 of each batch's 10,000) loads with strict=False, and only so."""
    with pytest.raises(data.DataError, match=r"holds 5,085 examples .*published split has 50,000.*strict=False"):
        data.load("cifar10", "train", source="files", data_dir=shared_data / "cifar10-subset")
    ds = data.load("cifar10", "train", source="files", data_dir=shared_data / "cifar10-subset", strict=False)
    assert ds.images.shape == (5_085, 32, 32, 3) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels, minlength=10).tolist() == [517, 524, 490, 493, 537, 475, 503, 516, 529, 501]
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
    # Channel means of CIFAR-10 are (125, 123, 114) over the full training set.
    np.testing.assert_allclose(ds.images.reshape(-1, 3).mean(0), [125.3, 123.0, 113.9], atol=4)


def test_cache_is_used_and_survives_damage(shared_data, tmp_path, monkeypatch):
    """The cache goes beside writable data; a damaged one is rebuilt. (Caches are keyed on content, so a fresh
    user cache dir keeps another test's cache of the same files from being found there first.)"""
    monkeypatch.setenv("JAXNETS_CACHE", str(tmp_path / "user-cache"))
    folder = tmp_path / "cifar"
    shutil.copytree(shared_data / "cifar10-subset", folder)
    for sub in (folder, *folder.iterdir()):
        sub.chmod(0o755)  # copytree keeps the shared folder's read-only bits
    first = data.load("cifar10", "train", data_dir=folder, strict=False)
    caches = list(folder.glob(".jaxnets-cifar10-train-*.npz"))
    assert len(caches) == 1, "the cache goes beside writable data"
    caches[0].write_bytes(b"garbage")
    again = data.load("cifar10", "train", data_dir=folder, strict=False)
    np.testing.assert_array_equal(again.images, first.images)


def test_read_only_data_dir_is_never_written(shared_data):
    before = sorted(p.name for p in (shared_data / "mnist-t10k").iterdir())
    data.load("mnist", "test", data_dir=shared_data / "mnist-t10k")
    assert sorted(p.name for p in (shared_data / "mnist-t10k").iterdir()) == before


# ------------------------------------------------------------------ CIFAR python

def _write_cifar_py(folder, images, labels):
    folder.mkdir(parents=True)
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    for i, part in enumerate(np.array_split(np.arange(len(images)), 5)):
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({b"data": flat[part], b"labels": labels[part].tolist(), b"batch_label": b"b"}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in data.files.CIFAR10_CLASSES]}, f, protocol=2)


@pytest.mark.usefixtures("trimmed")
def test_cifar_python_format(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 20).astype(np.int32)
    _write_cifar_py(tmp_path / "cifar-10-batches-py", images, labels)
    ds = data.load("cifar10", "train", source="files", data_dir=tmp_path)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.class_names[1] == "automobile"


def _cifar100_records(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, 20, n).astype(np.uint8), rng.integers(0, 100, n).astype(np.int32)


@pytest.mark.parametrize("kind", ["binary", "python"])
@pytest.mark.usefixtures("trimmed")
def test_cifar100_both_formats_both_splits(tmp_path, kind):
    """CIFAR-100 keeps the fine label, reads its 100 names from the meta file, and keeps the splits apart."""
    names = tuple(f"class{i}" for i in range(100))
    written = {}
    for split, n, seed in (("train", 12, 1), ("test", 5, 2)):
        images, coarse, fine = written[split] = _cifar100_records(n, seed)
        flat = images.transpose(0, 3, 1, 2).reshape(n, -1)
        if kind == "binary":
            folder = tmp_path / "cifar-100-binary"
            folder.mkdir(exist_ok=True)
            (folder / f"{split}.bin").write_bytes(np.concatenate([coarse[:, None], fine[:, None].astype(np.uint8),
                                                                   flat], axis=1).tobytes())
            (folder / "fine_label_names.txt").write_text("\n".join(names) + "\n")
        else:
            folder = tmp_path / "cifar-100-python"
            folder.mkdir(exist_ok=True)
            with open(folder / split, "wb") as f:
                pickle.dump({b"data": flat, b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()}, f,
                            protocol=2)
            with open(folder / "meta", "wb") as f:
                pickle.dump({b"fine_label_names": [n.encode() for n in names]}, f, protocol=2)
    for split, (images, _, fine) in written.items():
        ds = data.load("cifar100", split, source="files", data_dir=tmp_path)
        np.testing.assert_array_equal(ds.images, images)
        np.testing.assert_array_equal(ds.labels, fine)
        assert ds.class_names == names


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.usefixtures("trimmed")
def test_malicious_pickle_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Exploit(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(data.UnsafePickle, match=r"data_batch_1.*refusing.*(posix|os)\.system"):
        data.load("cifar10", "train", source="files", data_dir=tmp_path)
    assert not marker.exists(), "the payload must never run"


# ------------------------------------------------------------------ corrupt files

def test_truncated_idx_names_the_file(shared_data, tmp_path):
    src = shared_data / "mnist-t10k"
    raw = gzip.open(src / "t10k-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[: len(raw) // 2])
    shutil.copy(src / "t10k-labels-idx1-ubyte.gz", tmp_path)
    with pytest.raises(data.CorruptDataFile, match=r"t10k-images-idx3-ubyte.gz.*truncated"):
        data.load("mnist", "test", data_dir=tmp_path)


def test_cut_gzip_stream_names_the_file(tmp_path):
    payload = b"\0\0\x08\x03" + np.random.default_rng(0).bytes(4000)  # incompressible
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(payload)[:2000])
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\0"))
    with pytest.raises(data.CorruptDataFile, match=r"t10k-images-idx3-ubyte.gz: cannot read"):
        data.load("mnist", "test", data_dir=tmp_path)


def test_wrong_magic_names_the_file(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"PK\x03\x04 not idx")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\0")
    with pytest.raises(data.CorruptDataFile, match=r"t10k-images-idx3-ubyte: not an IDX file"):
        data.load("mnist", "test", data_dir=tmp_path)


@pytest.mark.usefixtures("trimmed")
def test_truncated_cifar_binary_names_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "data_batch_1.bin").write_bytes(bytes(3073 * 3 + 100))
    with pytest.raises(data.CorruptDataFile, match=r"data_batch_1.bin.*not a whole number of 3073-byte"):
        data.load("cifar10", "train", data_dir=tmp_path)


# ------------------------------------------------------------------ data checks at load (issue 14, findings 6 and 9)

def _idx(shape, values: np.ndarray) -> bytes:
    header = b"\0\0\x08" + bytes([len(shape)]) + b"".join(int(d).to_bytes(4, "big") for d in shape)
    return header + np.asarray(values, np.uint8).tobytes()


def _write_mnist(folder, n=12, labels=None, images_shape=None, gz=True):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n) if labels is None else np.asarray(labels)
    shape = images_shape or (n, 28, 28)
    suffix = ".gz" if gz else ""
    write = ((lambda path, raw: path.write_bytes(gzip.compress(raw))) if gz
             else (lambda path, raw: path.write_bytes(raw)))
    write(folder / f"t10k-images-idx3-ubyte{suffix}", _idx(shape, rng.integers(0, 256, int(np.prod(shape)))))
    write(folder / f"t10k-labels-idx1-ubyte{suffix}", _idx((len(labels),), labels))
    return labels


@pytest.mark.usefixtures("trimmed")
def test_idx_labels_out_of_range_name_the_file(tmp_path):
    """Finding 6: label 200 for 10 classes used to load and silently drop out of the loss."""
    _write_mnist(tmp_path, labels=[3, 200, 1, 4] + [0] * 8)
    with pytest.raises(data.CorruptDataFile, match=r"t10k-labels-idx1-ubyte.gz: 1 label\(s\) outside \[0, 10\), "
                                                   r"e.g. 200 at record 1"):
        data.load("mnist", "test", data_dir=tmp_path)


@pytest.mark.usefixtures("trimmed")
def test_idx_image_and_label_counts_must_match(tmp_path):
    _write_mnist(tmp_path, n=12, labels=[1] * 11)
    with pytest.raises(data.CorruptDataFile, match=r"t10k-images-idx3-ubyte.gz holds 12 images but "
                                                   r".*t10k-labels-idx1-ubyte.gz holds 11 labels"):
        data.load("mnist", "test", data_dir=tmp_path)


@pytest.mark.parametrize("shape", [(12, 28, 27), (12, 784), (12, 1, 28, 28)])
def test_idx_implausible_header_dimensions_name_the_file(shape, tmp_path):
    _write_mnist(tmp_path, images_shape=shape, gz=False)
    with pytest.raises(data.CorruptDataFile, match=r"t10k-images-idx3-ubyte: header says"):
        data.load("mnist", "test", data_dir=tmp_path)


def test_idx_header_promising_absurd_sizes_is_corrupt_not_an_overflow(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + b"\xff\xff\xff\xff" * 3 + bytes(100))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx((1,), [0]))
    with pytest.raises(data.CorruptDataFile, match=r"t10k-images-idx3-ubyte: .*header promises shape"):
        data.load("mnist", "test", data_dir=tmp_path)


@pytest.mark.usefixtures("trimmed")
def test_cifar_binary_labels_out_of_range_name_the_file(tmp_path):
    """Finding 6, CIFAR binary."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    records = np.zeros((4, 3073), np.uint8)
    records[:, 0] = [1, 2, 200, 3]
    (folder / "data_batch_1.bin").write_bytes(records.tobytes())
    with pytest.raises(data.CorruptDataFile, match=r"data_batch_1.bin: 1 label\(s\) outside \[0, 10\), e.g. 200"):
        data.load("cifar10", "train", data_dir=tmp_path)


def test_cifar_python_labels_out_of_range_name_the_file(tmp_path):
    """Finding 6, CIFAR python."""
    images = np.zeros((20, 32, 32, 3), np.uint8)
    labels = np.arange(20) % 10
    labels[7] = 200
    _write_cifar_py(tmp_path / "cifar-10-batches-py", images, labels)
    with pytest.raises(data.CorruptDataFile, match=r"data_batch_2: 1 label\(s\) outside \[0, 10\), e.g. 200"):
        data.load("cifar10", "train", source="files", data_dir=tmp_path)


@pytest.mark.usefixtures("trimmed")
def test_class_names_file_must_name_every_class(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "data_batch_1.bin").write_bytes(np.zeros((2, 3073), np.uint8).tobytes())
    (folder / "batches.meta.txt").write_text("cat\ndog\nbird\n")
    with pytest.raises(data.CorruptDataFile, match=r"batches.meta.txt: names 3 classes, the data set has 10"):
        data.load("cifar10", "train", data_dir=tmp_path)


@pytest.mark.usefixtures("trimmed")
def test_corrupt_deflate_stream_is_corrupt_data_file_not_zlib_error(tmp_path):
    """Finding 9: a flipped byte in a .gz's deflate data used to raise an uncaught zlib.error."""
    _write_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF  # the first byte of the deflate stream: an invalid block type
    path.write_bytes(bytes(raw))
    with pytest.raises(data.CorruptDataFile, match=r"t10k-images-idx3-ubyte.gz: cannot read \(error: Error -3"):
        data.load("mnist", "test", data_dir=tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
@pytest.mark.usefixtures("trimmed")
def test_damaged_cache_is_named_deleted_and_rebuilt(damage, tmp_path, caplog):
    """Finding 9: a damaged .npz cache used to fail every later load with zipfile.BadZipFile, never naming it."""
    labels = _write_mnist(tmp_path, n=64)
    first = data.load("mnist", "test", data_dir=tmp_path)
    (cache,) = tmp_path.glob(".jaxnets-mnist-test-*.npz")
    raw = bytearray(cache.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        raw[len(raw) // 2] ^= 0x01  # inside the images array: the zip's CRC-32 catches it
    else:
        raw = bytearray(b"garbage")
    cache.write_bytes(bytes(raw))
    with caplog.at_level("WARNING", logger="jaxnets.data.files"):
        again = data.load("mnist", "test", data_dir=tmp_path)
    assert any(str(cache) in record.getMessage() and "damaged" in record.getMessage() for record in caplog.records)
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.labels, labels)
    with np.load(cache) as rebuilt:  # deleted and written again, whole
        np.testing.assert_array_equal(rebuilt["labels"], labels)


# ------------------------------------------------------------------ missing / bad requests

def test_missing_dataset_offline_says_what_to_do(tmp_path):
    with pytest.raises(data.DataNotFound, match=r"mnist \(train\).*train-images-idx3-ubyte.gz"):
        data.load("mnist", "train", data_dir=tmp_path, download=False)
    with pytest.raises(data.DataNotFound, match=r"cifar-10-batches-bin"):
        data.load("cifar10", "test", source="files", data_dir=tmp_path)
    with pytest.raises(data.DataNotFound, match="needs data_dir"):
        data.load("cifar10", "test", source="files")


def test_bad_requests():
    with pytest.raises(data.DataError, match=r"unknown data set 'imagenet'.*digits"):
        data.load("imagenet")
    with pytest.raises(data.DataError, match=r"unknown split 'val'"):
        data.load("digits", "val")
    with pytest.raises(data.DataError, match=r"unknown source 'web'"):
        data.load("digits", source="web")


# ------------------------------------------------------------------ tfds

@pytest.mark.parametrize(("name", "shape"), [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_path_under_mock_data(name, shape, tmp_path):
    import tensorflow_datasets as tfds  # a dependency of jaxnets (no skip); imported here as jaxnets does: it is heavy
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load(name, "train", source="tfds", data_dir=tmp_path)
    assert ds.images.shape == (12, *shape) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.labels.min() >= 0 and ds.labels.max() < 10
    assert ds.num_classes == 10
    assert list(tmp_path.glob(f".jaxnets-tfds-{name}-*-train-12.npz")), "the second load comes from the cache"
    with tfds.testing.mock_data(num_examples=12):
        again = data.load(name, "train", source="tfds", data_dir=tmp_path)
    np.testing.assert_array_equal(again.images, ds.images)


# ------------------------------------------------------------------ embedded

def test_digits_embedded():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert train.images.shape[1:] == (28, 28, 1) and train.images.dtype == np.uint8
    assert len(train) + len(test) == 1797
    assert np.bincount(np.concatenate([train.labels, test.labels])).min() >= 174  # every class present
    assert train.images[:, :4].max() == 0 and train.images.max() == 255  # framed like MNIST


def test_synthetic_is_seeded():
    a = data.load("synthetic", shape=(16, 16, 3), num_examples=50, num_classes=4, seed=3)
    b = data.load("synthetic", shape=(16, 16, 3), num_examples=50, num_classes=4, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (50, 16, 16, 3) and a.num_classes == 4


# ------------------------------------------------------------------ splits

def test_random_split_matches_torch_rule():
    parts = data.random_split(1437, (0.8, 0.2), seed=0)
    assert [len(p) for p in parts] == [1150, 287]  # floor, remainder to the first part
    assert len(np.intersect1d(*parts)) == 0 and len(np.union1d(*parts)) == 1437
    again = data.random_split(1437, (0.8, 0.2), seed=0)
    other = data.random_split(1437, (0.8, 0.2), seed=1)
    np.testing.assert_array_equal(parts[0], again[0])
    assert not np.array_equal(parts[0], other[0])
    with pytest.raises(ValueError, match="sum to 1"):
        data.random_split(10, (0.5, 0.2))


def test_random_split_matches_pytorch_lengths():
    torch = pytest.importorskip("torch")
    for n in (10, 1437, 8001):
        ours = [len(p) for p in data.random_split(n, (0.7, 0.2, 0.1))]
        theirs = [len(p) for p in torch.utils.data.random_split(range(n), (0.7, 0.2, 0.1))]
        assert ours == theirs


def test_train_val_split_is_disjoint():
    digits = data.load("digits")
    n = len(digits)
    # Give every example an identity the split cannot fake: its index, written into its pixels and its label.
    ids = np.arange(n)
    images = np.zeros((n, *digits.image_shape), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = ids // 256, ids % 256
    tagged = dataclasses.replace(digits, images=images, labels=(ids % 10).astype(np.int32))
    train, val = data.train_val_split(tagged, 0.2, seed=0)

    def identities(part):
        found = part.images[:, 0, 0, 0].astype(int) * 256 + part.images[:, 0, 1, 0]
        np.testing.assert_array_equal(part.labels, found % 10)  # each label stayed with its image
        return found

    train_ids, val_ids = identities(train), identities(val)
    assert len(np.intersect1d(train_ids, val_ids)) == 0, "an example is in both parts"
    assert sorted(np.concatenate([train_ids, val_ids]).tolist()) == ids.tolist(), "every example is in one part"
    assert abs(len(val) / n - 0.2) < 0.01
    assert (train.split, val.split) == ("train", "validation")
    again, _ = data.train_val_split(tagged, 0.2, seed=0)
    np.testing.assert_array_equal(identities(again), train_ids)  # seeded


# ------------------------------------------------------------------ loader

def _loader(n=50, batch_size=16, train=True, **kw):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
    cfg = data.Preprocess(mean=(0.0,), std=(1 / 255,))  # normalised pixel == raw value
    return data.Loader(images, np.arange(n), batch_size, preprocess=cfg, train=train, **kw)


def test_eval_loader_sees_every_example_once_with_fixed_shapes():
    loader = _loader(train=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 4
    assert {b.image.shape for b in batches} == {(16, 4, 4, 1)}
    labels = np.concatenate([np.asarray(b.label)[np.asarray(b.mask)] for b in batches])
    np.testing.assert_array_equal(labels, np.arange(50))
    np.testing.assert_allclose(np.asarray(batches[0].image[:, 0, 0, 0]), np.arange(16), atol=1e-4)


def test_train_loader_shuffles_per_epoch_and_drops_last():
    loader = _loader()
    assert len(loader) == 3
    e0 = np.concatenate([np.asarray(b.label) for b in loader.epoch(0)])
    e0_again = np.concatenate([np.asarray(b.label) for b in loader.epoch(0)])
    e1 = np.concatenate([np.asarray(b.label) for b in loader.epoch(1)])
    assert len(e0) == 48 and len(set(e0.tolist())) == 48
    np.testing.assert_array_equal(e0, e0_again)  # resumable: same seed + epoch, same order
    assert not np.array_equal(e0, e1)


def test_augmentation_is_keyed_by_epoch_and_step():
    images = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    cfg = data.Preprocess((0.5,) * 3, (0.5,) * 3, crop_padding=2, flip=True)
    loader = data.Loader(images, np.zeros(64), 32, preprocess=cfg, train=True)
    a0, a1 = (np.asarray(b.image) for b in loader.epoch(0))
    b0, _ = (np.asarray(b.image) for b in loader.epoch(0))
    np.testing.assert_array_equal(a0, b0)
    c0, _ = (np.asarray(b.image) for b in loader.epoch(1))
    assert not np.array_equal(a0, c0)


def test_random_flip_mirrors_or_keeps_each_image(getkey):
    x = jax.random.normal(getkey(), (64, 5, 5, 2))
    y = data.random_flip(getkey(), x)
    kept = jnp.all(y == x, axis=(1, 2, 3))
    flipped = jnp.all(y == x[:, :, ::-1], axis=(1, 2, 3))
    assert bool(jnp.all(kept | flipped)) and 10 < int(flipped.sum()) < 54


def test_random_crop_is_a_window_of_the_padded_image(getkey):
    x = jax.random.normal(getkey(), (6, 8, 8, 1))
    y = np.asarray(data.random_crop(getkey(), x, 2))
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets = set()
    for i in range(6):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(padded[i, dy:dy + 8, dx:dx + 8], y[i])]
        assert found, f"image {i} is not a crop"
        offsets.add(found[0])
    assert len(offsets) > 1


def test_preprocess_normalises_and_is_jittable(getkey):
    train = data.load("digits")
    cfg = data.Preprocess.for_dataset("digits", train.images, augment=True)
    x = jnp.asarray(train.images[:256])
    eager = data.preprocess(getkey(), x, cfg, train=False)
    jitted = jax.jit(data.preprocess, static_argnames=("config", "train"))(getkey(), x, config=cfg, train=False)
    np.testing.assert_allclose(eager, jitted, atol=1e-6)
    assert abs(float(eager.mean())) < 0.1 and abs(float(eager.std()) - 1) < 0.1
    half = data.Preprocess.for_dataset("cifar10", np.zeros((1, 2, 2, 3), np.uint8), normalize="half")
    assert half.mean == (0.5, 0.5, 0.5) and half.crop_padding == 0


def _batches(loader, epochs=(0, 1)):
    return [jax.device_get(batch) for epoch in epochs for batch in loader.epoch(epoch)]


@pytest.mark.parametrize("train", [True, False], ids=["train-augmented", "eval-padded"])
def test_batches_cut_on_the_device_equal_batches_cut_on_the_host(train):
    """`resident=True` (the accelerator default) gives the host path's batches bit for bit: order, crops, flips,
    mask, and a scanned epoch's arrays."""
    images = np.random.default_rng(0).integers(0, 256, (70, 8, 8, 3), dtype=np.uint8)
    labels = np.random.default_rng(1).integers(0, 10, 70)
    cfg = data.Preprocess((0.5,) * 3, (0.25,) * 3, crop_padding=2, flip=True)
    host, device = (data.Loader(images, labels, 16, preprocess=cfg, train=train, seed=3, resident=resident)
                    for resident in (False, True))
    assert (host.resident, device.resident) == (False, True)
    assert len(host) == len(device) == (4 if train else 5)
    for a, b in zip(_batches(host), _batches(device), strict=True):
        for field in data.Batch._fields:
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    for a, b in zip(host.epoch_arrays(1), device.epoch_arrays(1), strict=True):  # a scanned epoch's arrays
        np.testing.assert_array_equal(a, b)


def test_the_data_set_stays_on_accelerators_and_is_gathered_on_the_cpu():
    small, large = 150_000_000, data.RESIDENT_MAX_BYTES + 1

    class OtherProcesses:  # a sharding whose devices are partly another process's
        is_fully_addressable = False

    assert data.keeps_data_on_device("gpu", small, None) and data.keeps_data_on_device("tpu", small, None)
    assert not data.keeps_data_on_device("cpu", small, None)
    assert not data.keeps_data_on_device("gpu", large, None)
    assert not data.keeps_data_on_device("gpu", small, OtherProcesses())
    with pytest.raises(ValueError, match="every device of the sharding in this process"):
        pipeline.replicated(OtherProcesses())  # where resident=True would put the data set
    assert not _loader().resident  # the CPU default: numpy gathers, as before


def test_a_resident_loader_places_batches_with_its_sharding():
    mesh = jax.make_mesh((1,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    loader = _loader(sharding=sharding, resident=True)
    batch = next(iter(loader))
    assert batch.image.sharding.is_equivalent_to(sharding, batch.image.ndim)
    np.testing.assert_array_equal(np.concatenate([np.asarray(b.label) for b in loader]),
                                  np.concatenate([np.asarray(b.label) for b in _loader()]))


def test_loader_rejects_bad_input():
    with pytest.raises(ValueError, match=r"uint8 \[N, H, W, C\]"):
        data.Loader(np.zeros((4, 2, 2)), np.zeros(4), 2, preprocess=data.Preprocess(), train=True)
    with pytest.raises(ValueError, match="smaller than one batch"):
        _loader(n=10, batch_size=16)


# ------------------------------------------------------------------ the published layout, counted

def _cifar10_batches(folder, names, records=3, kind="binary"):
    """Small CIFAR-10 batches named `names` in `folder` (binary records, or python pickles)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        labels = rng.integers(0, 10, records)
        pixels = rng.integers(0, 256, (records, 3072), dtype=np.uint8)
        if kind == "binary":
            (folder / name).write_bytes(np.concatenate([labels[:, None].astype(np.uint8), pixels], 1).tobytes())
        else:
            with open(folder / name, "wb") as f:
                pickle.dump({b"data": pixels, b"labels": labels.tolist()}, f, protocol=2)


_KINDS = {"binary": ("cifar-10-batches-bin", ".bin"), "python": ("cifar-10-batches-py", "")}


@pytest.mark.parametrize("kind", ["binary", "python"])
def test_a_missing_cifar_batch_is_refused_naming_it_unless_trimmed_on_purpose(kind, tmp_path):
    """Four of five batches used to train on 4/5 of the data without a word."""
    sub, ext = _KINDS[kind]
    _cifar10_batches(tmp_path / sub, [f"data_batch_{i}{ext}" for i in (1, 2, 4, 5)], kind=kind)
    with pytest.raises(data.DataError, match=rf"cifar10 \(train\) in .*{sub} lacks data_batch_3{ext} of the "
                                             r"published split's files.*strict=False.*--no-strict-data"):
        data.load("cifar10", "train", data_dir=tmp_path)
    assert len(data.load("cifar10", "train", data_dir=tmp_path, strict=False)) == 12


@pytest.mark.parametrize("kind", ["binary", "python"])
def test_short_cifar_batches_are_refused_with_the_published_count(kind, tmp_path, monkeypatch):
    """All five files, but not 50,000 examples: refused (naming both counts) unless strict=False or the env says so."""
    sub, ext = _KINDS[kind]
    _cifar10_batches(tmp_path / sub, [f"data_batch_{i}{ext}" for i in range(1, 6)], kind=kind)
    with pytest.raises(data.DataError, match=r"holds 15 examples .*the published split has 50,000"):
        data.load("cifar10", "train", source="files", data_dir=tmp_path)
    assert len(data.load("cifar10", "train", source="files", data_dir=tmp_path, strict=False)) == 15
    with pytest.raises(data.DataError, match=r"holds 15 examples"):  # the cache that load wrote is no way round
        data.load("cifar10", "train", source="files", data_dir=tmp_path)
    monkeypatch.setenv(data.files.STRICT_ENV, "0")
    assert len(data.load("cifar10", "train", source="files", data_dir=tmp_path)) == 15


@pytest.mark.parametrize("extra", ["data_batch_6", "data_batch_1 (copy)"])
@pytest.mark.parametrize("kind", ["binary", "python"])
def test_an_extra_batch_file_is_refused_even_when_trimmed(kind, extra, tmp_path):
    """A file named like a batch but not a standard one would be read by a glob (and could duplicate a batch)."""
    sub, ext = _KINDS[kind]
    _cifar10_batches(tmp_path / sub, [f"data_batch_{i}{ext}" for i in range(1, 6)] + [extra + ext], kind=kind)
    for strict in (True, False):
        with pytest.raises(data.DataError, match=rf"holds '{re.escape(extra + ext)}', not among the standard train "
                                                 r"files .*move it out of the folder"):
            data.load("cifar10", "train", data_dir=tmp_path, strict=strict)


def test_idx_files_must_hold_the_published_count(tmp_path):
    """MNIST-style IDX: 10,000 test images; 12 is refused unless trimmed on purpose."""
    _write_mnist(tmp_path, n=12)
    with pytest.raises(data.DataError, match=r"mnist \(test\) .*holds 12 examples .*published split has 10,000"):
        data.load("mnist", "test", data_dir=tmp_path, download=False)
    assert len(data.load("mnist", "test", data_dir=tmp_path, strict=False)) == 12


def test_uncompressed_idx_images_beside_gzipped_labels_are_found(tmp_path, monkeypatch):
    """Each IDX file may be .gz or not, independently; nothing is downloaded when both are there."""
    labels = _write_mnist(tmp_path, n=12)
    gz = tmp_path / "t10k-images-idx3-ubyte.gz"
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    monkeypatch.setattr(data.loading, "download_files", lambda *a, **k: pytest.fail("tried to download"))
    ds = data.load("mnist", "test", data_dir=tmp_path, strict=False)
    np.testing.assert_array_equal(ds.labels, labels)


def test_the_files_cache_is_keyed_on_content(tmp_path):
    """A label file rewritten with its size and mtime kept is read again, not served from the cache."""
    _write_mnist(tmp_path, n=12, labels=[1] * 12, gz=False)
    assert data.load("mnist", "test", data_dir=tmp_path, strict=False).labels.tolist() == [1] * 12
    path = tmp_path / "t10k-labels-idx1-ubyte"
    stat = path.stat()
    path.write_bytes(_idx((12,), [2] * 12))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert data.load("mnist", "test", data_dir=tmp_path, strict=False).labels.tolist() == [2] * 12
