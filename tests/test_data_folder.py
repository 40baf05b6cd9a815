"""Image folders (`<dir>/[train|test/]<class>/<image>`) as a data source, and the README's data example."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxnets import data
from jaxnets.data import folder as folder_lib

README = Path(__file__).resolve().parents[1] / "docs" / "guides" / "data.md"  # the data guide holds the data examples


def _pixels(seed: int, size=(8, 8), channels: int = 3) -> np.ndarray:
    shape = (*size, channels) if channels > 1 else size
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(path: Path, pixels: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kwargs)
    return path


@pytest.fixture
def pets(tmp_path) -> Path:
    """Two classes, created in reverse sorted order; PNG and JPEG mixed."""
    root = tmp_path / "pets"
    _save(root / "zebra" / "a.png", _pixels(0))
    _save(root / "zebra" / "b.jpg", _pixels(1), quality=95)
    _save(root / "ant" / "c.png", _pixels(2))
    _save(root / "ant" / "nested" / "d.png", _pixels(3))  # sub-folders count, as in torchvision
    (root / "ant" / ".DS_Store").write_bytes(b"\0junk")  # hidden files are skipped
    return root


def test_folder_loads_with_classes_in_sorted_order(pets):
    ds = data.load("folder", "train", data_dir=pets)
    assert ds.class_names == ("ant", "zebra")  # sorted, not creation order
    assert ds.images.shape == (4, 8, 8, 3) and ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
    assert ds.labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(ds.images[0], _pixels(2))  # ant/c.png, lossless
    np.testing.assert_array_equal(ds.images[1], _pixels(3))  # ant/nested/d.png
    np.testing.assert_array_equal(ds.images[2], _pixels(0))  # zebra/a.png
    with Image.open(pets / "zebra" / "b.jpg") as jpeg:  # lossy: compare with Pillow's own decoding
        np.testing.assert_array_equal(ds.images[3], np.asarray(jpeg.convert("RGB")))
    assert not np.array_equal(ds.images[3], _pixels(1))
    with pytest.raises(data.DataNotFound, match="no train/ or test/ folders.*no 'test' split"):
        data.load("folder", "test", data_dir=pets)


def test_corrupt_and_non_image_files_are_named(pets):
    good = (pets / "zebra" / "b.jpg").read_bytes()
    (pets / "zebra" / "broken.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    with pytest.raises(data.CorruptDataFile, match=r"zebra/broken.jpg: not an image Pillow can decode"):
        data.load("folder", data_dir=pets)
    (pets / "zebra" / "broken.jpg").unlink()
    (pets / "ant" / "notes.txt").write_text("not a picture")
    with pytest.raises(data.CorruptDataFile, match=r"ant/notes.txt: not an image Pillow can decode"):
        data.load("folder", data_dir=pets)


def test_odd_size_is_named_unless_a_size_is_requested(pets):
    _save(pets / "ant" / "wide.png", _pixels(4, size=(8, 12)))
    with pytest.raises(data.DataError,
                       match=r"ant/wide.png: 8x12 pixels.*4 of the 5 images .* are 8x8.*image_size=\(8, 8\)"):
        data.load("folder", data_dir=pets)
    ds = data.load("folder", data_dir=pets, image_size=6)
    assert ds.images.shape == (5, 6, 6, 3)
    ds = data.load("folder", data_dir=pets, image_size=(8, 8))
    np.testing.assert_array_equal(ds.images[0], _pixels(2))  # already 8x8: untouched
    with pytest.raises(data.DataError, match="image_size applies to image folders only"):
        data.load("digits", image_size=8)


def test_cache_is_used_the_second_time(pets, monkeypatch):
    first = data.load("folder", data_dir=pets)
    assert len(list(pets.glob(".jaxnets-folder-folder-train-*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(folder_lib, "decode_image", no_decoding)
    second = data.load("folder", data_dir=pets)
    np.testing.assert_array_equal(second.images, first.images)
    assert second.class_names == first.class_names
    _save(pets / "ant" / "new.png", _pixels(9))  # a changed folder is decoded afresh
    with pytest.raises(AssertionError, match="decoded again"):
        data.load("folder", data_dir=pets)


def test_empty_class_folder_and_no_classes_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataNotFound, match=r"has no class folders: expected .*/<class name>/<image>"):
        data.load("folder", data_dir=tmp_path / "empty")
    _save(tmp_path / "one" / "cat" / "a.png", _pixels(0))
    (tmp_path / "one" / "dog").mkdir()
    with pytest.raises(data.DataError, match=r"class folder .*one/dog holds no images"):
        data.load("folder", data_dir=tmp_path / "one")
    with pytest.raises(data.DataNotFound, match="does not exist"):
        data.load("folder", data_dir=tmp_path / "missing")
    with pytest.raises(data.DataNotFound, match="needs data_dir"):
        data.load("folder")


def test_split_folders_grayscale_and_cifar10_names(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for c in ("0", "1"):
            for i in range(n):
                _save(tmp_path / "digits" / split / c / f"{i}.png", _pixels(i, channels=1))
    train = data.load("folder", "train", data_dir=tmp_path / "digits")
    test = data.load("folder", "test", data_dir=tmp_path / "digits")
    assert train.images.shape == (6, 8, 8, 1) and test.images.shape == (4, 8, 8, 1)  # all gray: one channel

    _save(tmp_path / "mixed" / "a" / "gray.png", _pixels(0, channels=1))
    _save(tmp_path / "mixed" / "b" / "rgb.png", _pixels(1))
    mixed = data.load("folder", data_dir=tmp_path / "mixed")
    assert mixed.images.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(mixed.images[0, ..., 2], _pixels(0, channels=1))

    # A CIFAR-10 image folder loads as 'cifar10' (its normalisation applies) when its classes are CIFAR-10's.
    for c in data.files.CIFAR10_CLASSES:
        _save(tmp_path / "cifar" / "train" / c / "0.png", _pixels(len(c), size=(32, 32)))
    cifar = data.load("cifar10", "train", data_dir=tmp_path / "cifar")
    assert cifar.name == "cifar10" and cifar.class_names == data.files.CIFAR10_CLASSES
    assert cifar.labels.tolist() == list(range(10)) and cifar.images.shape == (10, 32, 32, 3)
    with pytest.raises(data.DataNotFound, match="has no test/ folder"):
        data.load("cifar10", "test", data_dir=tmp_path / "cifar")  # never falls back to downloading
    with pytest.raises(data.DataError, match="not CIFAR-10's .*load it as data set 'folder'"):
        data.load("cifar10", "train", data_dir=tmp_path / "digits")


def test_readme_data_example_runs_as_written(tmp_path, monkeypatch):
    """The README's data snippets, verbatim, with `~` = a temporary home holding the files they name."""
    text = README.read_text()
    snippets = [s for s in re.findall(r"```python\n(.*?)```", text, re.S) if "from jaxnets import data\n" in s]
    assert snippets, "README has no data example"
    home = tmp_path / "home"
    cifar = home / "data" / "cifar-10-batches-bin"  # what ~/data holds for the example's cifar10 line
    cifar.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = rng.integers(0, 256, (60, 3073), dtype=np.uint8)
        records[:, 0] %= 10
        records.tofile(cifar / name)
    for c in ("cat", "dog"):  # and ~/pets, an image folder of odd sizes
        for i in range(3):
            _save(home / "pets" / c / f"{i}.jpg", _pixels(i, size=(40 + i, 50)))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("JAXNETS_DATA_MIRROR", raising=False)
    monkeypatch.setenv(data.files.STRICT_ENV, "0")  # 60 records per batch stand in for the published 10,000
    namespace: dict = {}
    try:
        for snippet in snippets:
            exec(compile(snippet, str(README), "exec"), namespace)
    finally:
        if "stripes" in data.available():  # the catalog example registers a data set: leave the catalog as it was
            data.catalog.unregister("stripes")
    assert len(namespace["train"]) == 240 and len(namespace["held_out"]) == 60
    assert namespace["train"].images.shape[1:] == (32, 32, 3)
    assert next(iter(namespace["loader"])).image.shape == (128, 32, 32, 3)
    assert namespace["pets"].images.shape == (6, 64, 64, 3) and namespace["pets"].class_names == ("cat", "dog")
    assert not Path("~").exists()


# ------------------------------------------------------------------ the real CIFAR-10 JPEGs

@pytest.mark.slow
def test_real_cifar10_image_folder(shared_data, tmp_path):
    """All 50,000 CIFAR-10 training JPEGs: decoded once, then read from the cache."""
    subprocess.run(["tar", "-xzf", str(shared_data / "cifar10-train-jpeg.tar.gz"), "-C", str(tmp_path)], check=True)
    ds = data.load("cifar10", "train", data_dir=tmp_path)
    assert ds.images.shape == (50_000, 32, 32, 3) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels).tolist() == [5_000] * 10
    assert ds.class_names == data.files.CIFAR10_CLASSES
    np.testing.assert_allclose(ds.images.reshape(-1, 3).mean(0), [125.3, 123.0, 113.9], atol=3)
    assert len(list(tmp_path.glob(".jaxnets-cifar10-folder-train-*.npz"))) == 1
    again = data.load("cifar10", "train", data_dir=tmp_path)
    np.testing.assert_array_equal(again.labels, ds.labels)


def test_cli_resizes_an_odd_sized_folder_with_image_size(pets, tmp_path, capsys):
    from jaxnets.cli import train as cli

    _save(pets / "ant" / "wide.png", _pixels(4, size=(8, 12)))
    base = ["--dataset", "folder", "--data-dir", str(pets), "--model", "mlp", "--epochs", "1", "--batch-size", "2",
            "--val-fraction", "0", "--no-progress", "--no-tensorboard"]
    assert cli.main([*base, "--workdir", str(tmp_path / "a")]) == 1
    assert "ant/wide.png: 8x12 pixels" in capsys.readouterr().err  # one line naming the file, before training
    assert cli.main([*base, "--image-size", "6", "--workdir", str(tmp_path / "b")]) == 0
    assert "epoch   1/1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main([*base, "--image-size", "0"])
    assert "image_size must be >= 1" in capsys.readouterr().err


# ------------------------------------------------------------------ one class index for every split

def _split_tree(root: Path, split: str, classes: tuple[str, ...], per_class: int = 2) -> None:
    for k, c in enumerate(classes):
        for i in range(per_class):
            _save(root / split / c / f"{i}.png", _pixels(10 * k + i))


def test_a_test_split_with_fewer_classes_keeps_the_training_index_of_each_class(tmp_path):
    """train/{ant,bee,cat} + test/{ant,cat}: test's cat is label 2 (train's cat), not 1 (train's bee)."""
    _split_tree(tmp_path, "train", ("ant", "bee", "cat"))
    _split_tree(tmp_path, "test", ("ant", "cat"))
    train = data.load("folder", "train", data_dir=tmp_path)
    test = data.load("folder", "test", data_dir=tmp_path)
    assert train.class_names == test.class_names == ("ant", "bee", "cat")
    assert test.labels.tolist() == [0, 0, 2, 2]
    np.testing.assert_array_equal(test.images[2], _pixels(10))  # test/cat/0.png carries label 2
    # The direct API agrees, and a cache written before cannot hand back the other indexing.
    _, labels, classes = folder_lib.load_folder(tmp_path, "test", progress=False)
    assert classes == ("ant", "bee", "cat") and labels.tolist() == [0, 0, 2, 2]


def test_a_test_class_the_training_split_lacks_is_refused_naming_it(tmp_path, capsys):
    """A class only the test split has cannot be predicted: a one-line error naming it, from Python and the CLI."""
    _split_tree(tmp_path / "pets", "train", ("ant", "cat"))
    _split_tree(tmp_path / "pets", "test", ("ant", "bee", "cat"))
    with pytest.raises(data.DataError, match=r"test has class folder\(s\) \['bee'\] that the training split does "
                                             r"not have \(its classes: \['ant', 'cat'\]\)"):
        data.load("folder", "test", data_dir=tmp_path / "pets")
    from jaxnets.cli import train as cli

    code = cli.main(["--dataset", "folder", "--data-dir", str(tmp_path / "pets"), "--model", "mlp", "--epochs", "1",
                     "--batch-size", "2", "--no-progress", "--no-tensorboard", "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "['bee'] that the training split does not have" in err and "Traceback" not in err


# ------------------------------------------------------------------ pixel depth per Pillow mode

def _gray(values) -> np.ndarray:
    return np.asarray(values, np.uint8).reshape(1, -1)


# mode -> (image in that mode, the uint8 pixels it must decode to: [1, W] gray or [1, W, 3] RGB)
def _mode_cases():
    rgb = np.array([[[0, 128, 255], [10, 20, 30]]], np.uint8)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putdata([(0, 0, 0, 0), (255, 0, 0, 0)])  # white; cyan ink only -> (0, 255, 255)
    return {
        "1": (Image.fromarray(np.array([[False, True]])), _gray([0, 255])),
        "L": (Image.fromarray(_gray([0, 77, 255])), _gray([0, 77, 255])),
        "LA": (Image.fromarray(np.array([[[0, 9], [200, 255]]], np.uint8), "LA"), _gray([0, 200])),
        "P": (palette, np.asarray(palette.convert("RGB"))),
        "RGB": (Image.fromarray(rgb), rgb),
        "RGBA": (Image.fromarray(np.concatenate([rgb, np.full((1, 2, 1), 7, np.uint8)], -1)), rgb),  # alpha dropped
        "CMYK": (cmyk, np.array([[[255, 255, 255], [0, 255, 255]]], np.uint8)),
        # 16-bit: v * 255 / 65535, rounded: an 8-bit value v stored as v * 257 comes back exactly
        "I;16": (Image.fromarray(np.array([[0, 257 * 77, 32768, 65535]], np.uint16)), _gray([0, 77, 128, 255])),
        "I": (Image.fromarray(np.array([[0, 257 * 200, 65535]], np.int32)), _gray([0, 200, 255])),
        "F": (Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)), _gray([0, 128, 255])),
    }


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_every_pillow_mode_decodes_to_uint8_at_the_right_scale(mode, tmp_path):
    """Written in `mode` (PNG, or TIFF where PNG cannot hold it), decoded to the uint8 values its scale gives:
    16-bit is scaled (never clipped at 255), alpha dropped, palette and CMYK converted to RGB."""
    image, expected = _mode_cases()[mode]
    assert image.mode == mode
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I", "F") else "x.png")
    image.save(path)
    with Image.open(path) as reread:
        assert reread.mode == mode  # the file really holds that mode
    np.testing.assert_array_equal(folder_lib.decode_image(str(path)), expected)


@pytest.mark.parametrize(("pixels", "match"), [
    (np.array([[0, 70_000]], np.int32), r"32-bit integer pixels from 0 to 70000; only values in \[0, 65535\]"),
    (np.array([[-1, 5]], np.int32), r"32-bit integer pixels from -1 to 5"),
    (np.array([[0.0, 2.5]], np.float32), r"floating-point pixels from 0.0 to 2.5; float images are read as \[0, 1\]"),
    (np.array([[0.0, np.nan]], np.float32), r"floating-point pixels .*outside it \(or NaN\)"),
])
def test_pixels_with_no_known_scale_are_refused_naming_the_file(pixels, match, tmp_path):
    """32-bit integer pixels beyond 16 bits, or float pixels outside [0, 1], have no honest 8-bit scale."""
    path = tmp_path / "deep.tif"
    Image.fromarray(pixels).save(path)
    with pytest.raises(data.DataError, match=match) as caught:
        folder_lib.decode_image(str(path))
    assert str(path) in str(caught.value) and not isinstance(caught.value, data.CorruptDataFile)


def test_a_16_bit_png_folder_trains_on_scaled_pixels(tmp_path):
    """A whole folder of 16-bit PNGs loads as its 8-bit content, not as saturated white."""
    for c, value in (("dark", 257 * 20), ("light", 257 * 220)):
        _save(tmp_path / c / "a.png", np.full((4, 4), value, np.uint16))
    ds = data.load("folder", data_dir=tmp_path)
    assert ds.images[ds.labels == 0].max() == 20 and ds.images[ds.labels == 1].min() == 220


# ------------------------------------------------------------------ symlinks

def test_a_symlink_loop_or_a_dangling_symlink_is_one_line_naming_it(pets, tmp_path, capsys):
    """A link back to an ancestor folder and a link to nothing: `DataError` naming the link, and one CLI line."""
    loop = pets / "ant" / "again"
    loop.symlink_to(pets / "ant", target_is_directory=True)
    with pytest.raises(data.DataError, match=r"ant/again is a symlink loop \(it leads back to .*ant\)"):
        data.load("folder", data_dir=pets)
    loop.unlink()
    (pets / "zebra" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(data.DataError, match=r"zebra/gone.png is a dangling symlink \(to .*nowhere.png"):
        data.load("folder", data_dir=pets)
    from jaxnets.cli import train as cli

    code = cli.main(["--dataset", "folder", "--data-dir", str(pets), "--model", "mlp", "--epochs", "1",
                     "--no-progress", "--no-tensorboard", "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "dangling symlink" in err and len(err) < 300
    (pets / "zebra" / "gone.png").unlink()
    (pets / "zebra" / "linked.png").symlink_to(pets / "ant" / "c.png")  # a link to an image is an image
    assert len(data.load("folder", data_dir=pets)) == 5


# ------------------------------------------------------------------ the cache is keyed on content

def test_a_file_changed_with_its_mtime_kept_is_decoded_again(pets, monkeypatch):
    """rsync -t / tar x keep a changed file's size and mtime: the cache must not hand back the old pixels."""
    first = data.load("folder", data_dir=pets)
    path = pets / "ant" / "c.png"
    stat = path.stat()
    new = _pixels(2).copy()
    new[0, 0] = 255 - new[0, 0]  # same size, other content
    _save(path, new)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = data.load("folder", data_dir=pets)
    assert not np.array_equal(again.images[0], first.images[0])
    np.testing.assert_array_equal(again.images[0], new)


def test_no_cache_neither_reads_nor_writes_a_cache(pets, tmp_path, monkeypatch):
    """`cache=False` and `$JAXNETS_DATA_CACHE=0` decode every time and leave no .npz behind."""
    monkeypatch.setenv("JAXNETS_CACHE", str(tmp_path / "user-cache"))
    data.load("folder", data_dir=pets, cache=False)
    monkeypatch.setenv("JAXNETS_DATA_CACHE", "0")
    data.load("folder", data_dir=pets)
    assert not list(pets.glob(".*.npz")) and not (tmp_path / "user-cache").exists()
