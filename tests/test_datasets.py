"""Tests for irrm_jax.datasets: the local-folder tfds builder, sources, and the catalog's div2k."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from irrm_jax import datasets, images

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _write_images(folder: Path, specs: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Writes images named by ``specs`` (name -> shape); returns the expected RGB pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for seed, (name, shape) in enumerate(sorted(specs.items())):
        pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
        stem = Path(name).stem
        expected[stem] = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, -1)
    return expected


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "tfds"


def test_folder_source_reads_every_image_in_name_order(tmp_path, data_dir):
    folder = tmp_path / "my images"
    expected = _write_images(
        folder,
        {"b.png": (9, 7, 3), "a.bmp": (5, 6, 3), "c.png": (8, 8), "d.png": (4, 10, 3)},
    )
    source = datasets.folder_source(folder, data_dir=data_dir)
    assert len(source) == 4
    names = [source[i]["name"] for i in range(4)]
    assert names == ["a", "b", "c", "d"]
    for i, name in enumerate(names):
        record = source[i]
        np.testing.assert_array_equal(record["image"], expected[name])
        assert record["channels_in_source"] == (1 if name == "c" else 3)
    np.testing.assert_array_equal(source.sizes(), [[5, 6], [9, 7], [8, 8], [4, 10]])
    assert source.has_sizes
    # Picklable (grain workers receive it) and still readable afterwards.
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(source))[1]["image"], expected["b"])


def test_folder_is_prepared_once_and_again_when_it_changes(tmp_path, data_dir, monkeypatch):
    folder = tmp_path / "imgs"
    _write_images(folder, {"x.png": (4, 4, 3)})
    datasets.folder_source(folder, data_dir=data_dir)
    prepared = list(data_dir.glob("hr_image_folder/folder_imgs_*"))
    assert len(prepared) == 1

    def fail(*args, **kwargs):
        raise AssertionError("prepared again")

    with monkeypatch.context() as patch:
        patch.setattr(datasets.HrImageFolder, "_generate_examples", fail)
        assert len(datasets.folder_source(folder, data_dir=data_dir)) == 1
    _write_images(folder, {"y.png": (4, 5, 3)})
    assert len(datasets.folder_source(folder, data_dir=data_dir)) == 2
    assert len(list(data_dir.glob("hr_image_folder/folder_imgs_*"))) == 2


def test_one_folder_serves_two_splits_from_one_cache(tmp_path, data_dir):
    folder = tmp_path / "imgs"
    _write_images(folder, {"x.png": (4, 4, 3)})
    train = datasets.folder_source(folder, split="train", data_dir=data_dir)
    test = datasets.folder_source(folder, split="test", data_dir=data_dir)
    np.testing.assert_array_equal(train[0]["image"], test[0]["image"])


def test_corrupt_file_fails_preparation_naming_it(tmp_path, data_dir):
    folder = tmp_path / "bad"
    _write_images(folder, {"fine.png": (4, 4, 3)})
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(images.ImageDecodeError, match="broken.png"):
        datasets.folder_source(folder, data_dir=data_dir)


def test_missing_and_empty_folders_are_errors_naming_them(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="absent_dir"):
        datasets.folder_source(tmp_path / "absent_dir", data_dir=data_dir)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="empty_dir"):
        datasets.folder_source(tmp_path / "empty_dir", data_dir=data_dir)


def test_same_name_twice_is_an_error(tmp_path, data_dir):
    _write_images(tmp_path / "dup", {"a.png": (3, 3, 3), "a.bmp": (3, 3, 3)})
    with pytest.raises(ValueError, match="same name"):
        datasets.folder_source(tmp_path / "dup", data_dir=data_dir)


def test_standard_layout_configs(tmp_path, data_dir):
    root = tmp_path / "root"
    set5 = _write_images(root / "Set5" / "HR", {"bird.png": (6, 6, 3), "baby.png": (8, 6, 3)})
    _write_images(root / "T91", {"t1.png": (5, 5, 3)})  # no HR sub-folder: also accepted
    source = datasets.local_source("Set5", root=root, data_dir=data_dir)
    assert source.description == "hr_image_folder/set5:test"
    assert [source[i]["name"] for i in range(2)] == ["baby", "bird"]
    np.testing.assert_array_equal(source[1]["image"], set5["bird"])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(source))[1]["image"], set5["bird"])
    assert len(datasets.local_source("t91", "train", root=root, data_dir=data_dir)) == 1
    with pytest.raises(FileNotFoundError, match="Set14"):
        datasets.local_source("set14", root=root, data_dir=data_dir)


def test_prepared_named_set_must_match_a_later_root(tmp_path, data_dir):
    first, moved, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _write_images(first / "Set5" / "HR", {"bird.png": (6, 6, 3), "baby.png": (8, 6, 3)})
    _write_images(moved / "Set5" / "HR", {"bird.png": (6, 6, 3), "baby.png": (8, 6, 3)})
    _write_images(other / "Set5" / "HR", {"bird.png": (6, 6, 3), "butterfly.png": (8, 6, 3)})
    assert len(datasets.local_source("set5", root=first, data_dir=data_dir)) == 2
    assert len(datasets.local_source("set5", root=moved, data_dir=data_dir)) == 2  # same names elsewhere: fine
    assert len(datasets.local_source("set5", data_dir=data_dir)) == 2  # no root: the prepared copy
    with pytest.raises(ValueError, match=r"new: \['butterfly'\], gone: \['baby'\]\). Delete "):
        datasets.local_source("set5", root=other, data_dir=data_dir)


def test_div2k_manual_layout_has_train_and_validation(tmp_path, data_dir):
    root = tmp_path / "div2k_root"
    _write_images(root / "DIV2K_train_HR", {"0001.png": (6, 8, 3), "0002.png": (8, 6, 3)})
    _write_images(root / "DIV2K_valid_HR", {"0801.png": (6, 6, 3)})
    with pytest.raises(ValueError, match="splits"):
        datasets.local_source("div2k", root=root, data_dir=data_dir)
    train = datasets.local_source("div2k", "train", root=root, data_dir=data_dir)
    valid = datasets.local_source("div2k", "validation", data_dir=data_dir)  # cached: no root
    assert [train[i]["name"] for i in range(len(train))] == ["0001", "0002"]
    assert valid[0]["name"] == "0801"
    with pytest.raises(ValueError, match="no split 'test'"):
        datasets.local_source("div2k", "test", data_dir=data_dir)


def test_unknown_config_lists_the_valid_names(data_dir):
    with pytest.raises(ValueError, match="set5.*div2k"):
        datasets.local_source("set6", data_dir=data_dir)


def test_concatenate_and_array_sources():
    a = datasets.ArrayImageSource([np.zeros((4, 5, 3), np.uint8)], ["a"], description="A")
    gray = np.full((6, 7), 9, np.uint8)
    b = datasets.ArrayImageSource([np.ones((3, 3, 3), np.uint8), gray], ["b0", "b1"])
    both = datasets.concatenate([a, b])
    assert len(both) == 3
    assert [both[i]["name"] for i in range(3)] == ["a", "b0", "b1"]
    assert both[2]["channels_in_source"] == 1 and both[2]["image"].shape == (6, 7, 3)
    np.testing.assert_array_equal(both.sizes(), [[4, 5], [3, 3], [6, 7]])
    with pytest.raises(IndexError):
        both[3]


def test_real_set5(data_dir):
    if not DATA_DIR.is_dir():
        pytest.skip(f"{DATA_DIR} is not available")
    source = datasets.local_source("set5", root=DATA_DIR, data_dir=data_dir)
    assert [source[i]["name"] for i in range(len(source))] == [
        "baby",
        "bird",
        "butterfly",
        "head",
        "woman",
    ]
    # From the data's MANIFEST.tsv: woman is 228 wide and 344 high.
    np.testing.assert_array_equal(source.sizes()[-1], [344, 228])
    woman = np.asarray(Image.open(DATA_DIR / "Set5" / "HR" / "woman.png").convert("RGB"))
    np.testing.assert_array_equal(source[4]["image"], woman)


# ----------------------------------------------------------------------------- catalog div2k


def test_div2k_catalog_with_tfds_mock(data_dir, monkeypatch):
    # The catalog builder needs TensorFlow only to prepare; tfds's mock replaces preparation.
    monkeypatch.setattr(datasets, "_tensorflow_available", lambda: True)
    with tfds.testing.mock_data(num_examples=3):
        source = datasets.div2k_catalog_source("validation", config="bicubic_x4", data_dir=data_dir)
        assert len(source) == 3
        record = source[2]
        assert record["image"].dtype == np.uint8 and record["image"].ndim == 3
        assert record["image"].shape[-1] == 3
        assert record["name"] == "div2k/bicubic_x4:validation/0002"
        assert record["channels_in_source"] == 3
        assert not source.has_sizes
        np.testing.assert_array_equal(source.sizes()[2], record["image"].shape[:2])


def test_div2k_catalog_without_tensorflow_says_what_to_do(data_dir, monkeypatch):
    monkeypatch.setattr(datasets, "_tensorflow_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs TensorFlow.*local_source\\('div2k'"):
        datasets.div2k_catalog_source("train", data_dir=data_dir)
