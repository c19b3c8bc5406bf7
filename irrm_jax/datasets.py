"""HR image datasets as tensorflow-datasets (array_record files, read without TensorFlow).

Two ways to get images:

* :class:`HrImageFolder`, a tfds builder for a local folder of HR images (PNG, JPEG, BMP, WebP).
  Named configurations cover the standard sets laid out as ``<root>/<Set>/HR/*.png``
  (``set5``, ``set14``, ``bsd100``, ``urban100``, ``t91``, ``bsd200``) and a manually
  downloaded DIV2K (``div2k``: ``<root>/DIV2K_train_HR`` and ``<root>/DIV2K_valid_HR``, the
  folders inside the official ``DIV2K_train_HR.zip`` / ``DIV2K_valid_HR.zip``). Any other
  folder works through :func:`folder_source`. Every image is decoded and validated once by
  :mod:`irrm_jax.images` (grayscale, alpha, 16-bit, corrupt files) and stored as an 8-bit RGB
  PNG, with its name, size and ``channels_in_source``.
* The tfds catalog's ``div2k`` (:func:`div2k_catalog_source`) for users with internet access.
  Its tfds generator calls ``tf.io.gfile``, so *preparing* it needs TensorFlow once (for
  example ``pip install tensorflow && tfds build div2k/bicubic_x2 --file_format=array_record
  --data_dir=DIR``); reading the prepared files does not. Without TensorFlow, download the two
  HR zips by hand and use ``local_source('div2k', root=...)``.

Preparing shows tfds's progress bars and happens once: the result is cached under ``data_dir``
(default: tfds's, i.e. ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). A custom folder's
cache name includes a fingerprint of its files, so editing the folder triggers a rebuild.

Example::

    from irrm_jax import datasets
    train = datasets.concatenate([
        datasets.local_source("t91", root="/data/sr"),
        datasets.local_source("bsd200", root="/data/sr"),
    ])
    set5 = datasets.local_source("set5", root="/data/sr")   # split "test"
    record = set5[0]   # {"image": uint8 (H, W, 3), "name": "baby", "channels_in_source": 3}

Every source returned here is an :class:`ImageSource`: a picklable random-access sequence of
such records, which :mod:`irrm_jax.input_pipeline` turns into training or evaluation data.
"""

from __future__ import annotations

import abc
import bisect
import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from irrm_jax import images

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The builder.


@dataclasses.dataclass(eq=False)
class HrFolderConfig(tfds.core.BuilderConfig):
    """Configuration of :class:`HrImageFolder`: which folder holds each split.

    Attributes:
        split_dirs: split name -> candidate folders, tried in order. A relative folder is looked
            up under the builder's manual dir (``root``); an absolute one is used as is.
    """

    split_dirs: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


def _standard(name: str, folder: str, split: str, description: str) -> HrFolderConfig:
    return HrFolderConfig(
        name=name,
        description=description,
        split_dirs={split: (f"{folder}/HR", folder)},
    )


STANDARD_CONFIGS: tuple[HrFolderConfig, ...] = (
    _standard("set5", "Set5", "test", "Set5 (5 images), <root>/Set5/HR."),
    _standard("set14", "Set14", "test", "Set14 (14 images), <root>/Set14/HR."),
    _standard("bsd100", "BSD100", "test", "BSD100 / B100 (100 images), <root>/BSD100/HR."),
    _standard("urban100", "Urban100", "test", "Urban100 (100 images), <root>/Urban100/HR."),
    _standard("t91", "T91", "train", "Yang et al.'s 91 training images, <root>/T91/HR."),
    _standard("bsd200", "BSD200", "train", "BSDS300 train (200 images), <root>/BSD200/HR."),
    HrFolderConfig(
        name="div2k",
        description=(
            "DIV2K HR, downloaded by hand: <root>/DIV2K_train_HR (800 images, split 'train') "
            "and <root>/DIV2K_valid_HR (100 images, split 'validation')."
        ),
        split_dirs={
            "train": ("DIV2K_train_HR", "DIV2K/DIV2K_train_HR"),
            "validation": ("DIV2K_valid_HR", "DIV2K/DIV2K_valid_HR"),
        },
    ),
)
"""The named configurations of :class:`HrImageFolder`."""


class HrImageFolder(tfds.core.GeneratorBasedBuilder):
    """HR images from local folders; one split per folder, records in file-name order."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = list(STANDARD_CONFIGS)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass root=<folder> (tfds: DownloadConfig(manual_dir=...)) holding <Set>/HR/*.png for "
        "the standard sets, or DIV2K_train_HR/ and DIV2K_valid_HR/ for div2k."
    )

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """None: this builder has no checksums file next to its code.

        tfds 4.9.10 otherwise locates the code with ``importlib_resources``, a package it only
        declares as a dependency for Python < 3.9, and fails without it.
        """
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                    "name": tfds.features.Text(),
                    "height": tfds.features.Scalar(np.int32),
                    "width": tfds.features.Scalar(np.int32),
                    "channels_in_source": tfds.features.Scalar(np.int32),
                }
            ),
            # Records stay in file-name order, so the metadata lists below index them.
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        split_dirs = self.builder_config.split_dirs
        root = None
        if any(not Path(c).is_absolute() for cands in split_dirs.values() for c in cands):
            try:
                root = Path(dl_manager.manual_dir)
            except AssertionError as e:  # tfds's way of saying the manual dir is missing
                raise FileNotFoundError(
                    f"Dataset {self.builder_config.name!r} needs root=<folder> holding "
                    f"{', '.join(c for cands in split_dirs.values() for c in cands)}: {e}"
                ) from e
        return {
            split: self._generate_examples(split, _find_folder(candidates, root))
            for split, candidates in split_dirs.items()
        }

    def _generate_examples(self, split: str, folder: Path):
        files = images.list_image_files(folder)
        _check_unique_names(files)
        entries = {"names": [], "heights": [], "widths": [], "channels_in_source": []}
        with concurrent.futures.ThreadPoolExecutor(max_workers=decode_threads()) as pool:
            for path, (png, decoded) in zip(files, pool.map(_png_record, files), strict=True):
                h, w = decoded.pixels.shape[:2]
                entries["names"].append(path.stem)
                entries["heights"].append(h)
                entries["widths"].append(w)
                entries["channels_in_source"].append(decoded.channels_in_source)
                yield (
                    path.name,
                    {
                        "image": png,
                        "name": path.stem,
                        "height": h,
                        "width": w,
                        "channels_in_source": decoded.channels_in_source,
                    },
                )
        entries["folder"] = str(folder)
        self.info.metadata[split] = entries


def _find_folder(candidates: Sequence[str], root: Path | None) -> Path:
    tried = []
    for candidate in candidates:
        path = Path(candidate)
        if not path.is_absolute():
            path = root / path
        if path.is_dir():
            return path
        tried.append(str(path))
    raise FileNotFoundError(f"Image folder not found; looked for: {', '.join(tried)}.")


def _check_unique_names(files: Sequence[Path]) -> None:
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise ValueError(f"Images {seen[path.stem]} and {path} have the same name.")
        seen[path.stem] = path


def _png_record(path: Path) -> tuple[bytes, images.DecodedImage]:
    """Decodes and validates one file; returns PNG bytes to store (the file itself if usable)."""
    data = path.read_bytes() if path.is_file() else b""
    decoded = images.decode_image_bytes(data, name=str(path))
    if data.startswith(images.PNG_SIGNATURE) and decoded.source_mode == "RGB":
        return data, decoded  # already an 8-bit RGB PNG: store it byte for byte
    return images.encode_png(decoded.pixels), decoded


def decode_threads() -> int:
    """Threads for decoding images in parallel: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


# --------------------------------------------------------------------------------------------
# Sources: what the input pipeline reads.


class ImageSource(Sequence):
    """A random-access sequence of HR image records (picklable, for grain workers).

    ``source[i]`` is ``{"image": uint8 (H, W, 3), "name": str, "channels_in_source": int}``.
    """

    description: str = "images"

    @property
    @abc.abstractmethod
    def has_sizes(self) -> bool:
        """Whether :meth:`sizes` is instant (from metadata) rather than reading every image."""

    @abc.abstractmethod
    def sizes(self) -> np.ndarray:
        """(N, 2) int array of every record's (height, width)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description}, {len(self)} images)"


class TfdsImageSource(ImageSource):
    """Wraps a tfds data source (``tfds.data_source`` / ``builder.as_data_source``).

    Args:
        data_source: the tfds data source of one split.
        image_key: the record's HR image feature ('image' for :class:`HrImageFolder`, 'hr' for
            the catalog's div2k). The feature may be decoded (an array) or raw bytes.
        description: how to name the source in messages, e.g. 'hr_image_folder/set5:test'.
        metadata: the split's metadata from :class:`HrImageFolder` (names and sizes), or None;
            without it, names are '<description>/<index>' and sizes are read from the records.
    """

    def __init__(
        self,
        data_source: Sequence[Mapping[str, Any]],
        *,
        image_key: str,
        description: str,
        metadata: Mapping[str, Any] | None = None,
    ):
        self._data_source = data_source
        self._image_key = image_key
        self.description = description
        self._metadata = metadata
        self._sizes: np.ndarray | None = None
        if metadata is not None and len(metadata["names"]) != len(data_source):
            raise ValueError(
                f"{description}: metadata lists {len(metadata['names'])} images but the data "
                f"holds {len(data_source)}; delete the prepared dataset and prepare it again."
            )

    def __len__(self) -> int:
        return len(self._data_source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r}")
        record = self._data_source[index]
        name = self._name(index, record)
        value = record[self._image_key]
        if isinstance(value, bytes):
            decoded = images.decode_image_bytes(value, name=name)
            pixels, channels = decoded.pixels, decoded.channels_in_source
        else:
            value = np.asarray(value)
            channels = 1 if value.ndim == 2 or value.shape[-1] == 1 else 3
            pixels = images.as_rgb_uint8(value, name=name)
        if "channels_in_source" in record:
            channels = int(record["channels_in_source"])
        if self._metadata is not None:
            expected = (self._metadata["heights"][index], self._metadata["widths"][index])
            if pixels.shape[:2] != expected:
                raise ValueError(
                    f"{self.description}: image {index} ({name}) is {pixels.shape[:2]}, but the "
                    f"metadata says {expected}; delete the prepared dataset and prepare it again."
                )
        return {"image": pixels, "name": name, "channels_in_source": channels}

    @property
    def has_sizes(self) -> bool:
        return self._metadata is not None

    def sizes(self) -> np.ndarray:
        if self._sizes is None:
            if self._metadata is not None:
                sizes = np.stack([self._metadata["heights"], self._metadata["widths"]], axis=1)
            else:
                logger.info("Reading the size of each of the %d images of %s.", len(self), self)
                with concurrent.futures.ThreadPoolExecutor(decode_threads()) as pool:
                    sizes = np.array(list(pool.map(self._read_size, range(len(self)))))
            self._sizes = np.asarray(sizes, dtype=np.int64).reshape(len(self), 2)
        return self._sizes

    def _read_size(self, index: int) -> tuple[int, int]:
        value = self._data_source[index][self._image_key]
        if isinstance(value, bytes):
            with Image.open(io.BytesIO(value)) as im:  # reads the header only
                return im.height, im.width
        return tuple(np.shape(value)[:2])

    def _name(self, index: int, record: Mapping[str, Any]) -> str:
        if "name" in record:
            name = record["name"]
            return name.decode() if isinstance(name, bytes) else str(name)
        return f"{self.description}/{index:04d}"


class ArrayImageSource(ImageSource):
    """Images already in memory (generated data, notebooks, tests).

    Args:
        arrays: uint8 images, (H, W) or (H, W, 1) (grayscale) or (H, W, 3).
        names: one name per image (default '0000', '0001', ...).
        description: how to name the source in messages.
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        names: Sequence[str] | None = None,
        *,
        description: str = "arrays",
    ):
        names = [f"{i:04d}" for i in range(len(arrays))] if names is None else list(names)
        if len(names) != len(arrays):
            raise ValueError(f"Got {len(arrays)} images but {len(names)} names.")
        self._channels = [1 if np.ndim(a) == 2 or np.shape(a)[-1] == 1 else 3 for a in arrays]
        self._arrays = [images.as_rgb_uint8(a, name=n) for a, n in zip(arrays, names, strict=True)]
        self._names = names
        self.description = description

    def __len__(self) -> int:
        return len(self._arrays)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r}")
        return {
            "image": self._arrays[index],
            "name": self._names[index],
            "channels_in_source": self._channels[index],
        }

    @property
    def has_sizes(self) -> bool:
        return True

    def sizes(self) -> np.ndarray:
        return np.array([a.shape[:2] for a in self._arrays], dtype=np.int64).reshape(-1, 2)


class ConcatImageSource(ImageSource):
    """Several sources one after the other (e.g. T91 + BSD200)."""

    def __init__(self, sources: Sequence[ImageSource]):
        if not sources:
            raise ValueError("concatenate() needs at least one source.")
        self._sources = list(sources)
        self._ends = np.cumsum([len(s) for s in self._sources]).tolist()
        self.description = " + ".join(s.description for s in self._sources)

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r}")
        part = bisect.bisect_right(self._ends, index)
        start = self._ends[part - 1] if part else 0
        return self._sources[part][index - start]

    @property
    def has_sizes(self) -> bool:
        return all(s.has_sizes for s in self._sources)

    def sizes(self) -> np.ndarray:
        return np.concatenate([s.sizes() for s in self._sources], axis=0)


def concatenate(sources: Sequence[ImageSource]) -> ImageSource:
    """Joins sources into one (records of the first, then of the second, ...)."""
    return sources[0] if len(sources) == 1 else ConcatImageSource(sources)


# --------------------------------------------------------------------------------------------
# Entry points.


def config_names() -> list[str]:
    """Names of the standard configurations of :class:`HrImageFolder`."""
    return [c.name for c in STANDARD_CONFIGS]


def prepare(
    config: str | HrFolderConfig,
    *,
    root: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> tfds.core.DatasetBuilder:
    """Builds a local dataset once (with progress bars) and returns its builder.

    Args:
        config: a name from :func:`config_names` (case-insensitive, e.g. 'Set5') or a config.
        root: the folder holding ``<Set>/HR`` (or ``DIV2K_train_HR``, ...); only needed the
            first time, and only for configurations with relative folders.
        data_dir: where prepared datasets are cached (default: tfds's data dir).

    Raises:
        ValueError: unknown config name, or an invalid image / empty folder (named).
        FileNotFoundError: the folder of a split does not exist (named).
    """
    if isinstance(config, str):
        if config.lower() not in config_names():
            raise ValueError(f"Unknown dataset {config!r}; expected one of {config_names()}.")
        # By name, not by object: the builder is pickled into grain workers with its arguments,
        # and tfds refuses an unpickled copy of one of its own BUILDER_CONFIGS.
        config = config.lower()
    builder = HrImageFolder(config=config, data_dir=None if data_dir is None else os.fspath(data_dir))
    if not builder.is_prepared():
        download_config = tfds.download.DownloadConfig(manual_dir=None if root is None else os.fspath(root))
        builder.download_and_prepare(file_format="array_record", download_config=download_config)
    elif root is not None:
        _check_prepared_matches(builder, Path(root))
    return builder


def _check_prepared_matches(builder: tfds.core.DatasetBuilder, root: Path) -> None:
    """Raises if a prepared split holds other images than the folder ``root`` now gives for it.

    A named set is prepared once; a later ``root`` with other images (another copy of "Set5", a changed folder)
    would otherwise be ignored silently. Images are compared by name; a moved copy of the same files passes.
    """
    for split, candidates in builder.builder_config.split_dirs.items():
        try:
            folder = _find_folder(candidates, root)
        except FileNotFoundError:
            continue  # nothing to compare with: the prepared copy is what there is
        names = [path.stem for path in images.list_image_files(folder)]
        prepared = builder.info.metadata[split]["names"]
        if names != prepared:
            extra, missing = sorted(set(names) - set(prepared)), sorted(set(prepared) - set(names))
            raise ValueError(
                f"The prepared {builder.builder_config.name!r} {split} split ({len(prepared)} images, from "
                f"{builder.info.metadata[split].get('folder')}) differs from {folder} ({len(names)} images; new: "
                f"{extra[:5]}, gone: {missing[:5]}). Delete {builder.data_dir} to prepare it again from {folder}."
            )


def local_source(
    config: str | HrFolderConfig,
    split: str | None = None,
    *,
    root: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> TfdsImageSource:
    """Prepares (once) and opens a split of a local dataset.

    Args:
        config: see :func:`prepare`.
        split: the split to read; None means the config's only split (standard test sets have
            'test', T91 and BSD200 'train', div2k 'train' and 'validation').
        root: see :func:`prepare`.
        data_dir: see :func:`prepare`.
    """
    builder = prepare(config, root=root, data_dir=data_dir)
    splits = list(builder.info.splits)
    if split is None:
        if len(splits) != 1:
            raise ValueError(f"{builder.info.full_name} has splits {splits}; pass split=.")
        split = splits[0]
    if split not in splits:
        raise ValueError(f"{builder.info.full_name} has no split {split!r}; it has {splits}.")
    return TfdsImageSource(
        builder.as_data_source(split=split),
        image_key="image",
        description=f"{builder.name}/{builder.builder_config.name}:{split}",
        metadata=builder.info.metadata[split],
    )


def folder_source(
    folder: str | os.PathLike,
    *,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
) -> TfdsImageSource:
    """Prepares (once) and opens a dataset of any folder of HR images.

    The cached dataset is named after the folder and a fingerprint of the split name and its files (names,
    sizes, modification times), so a changed folder is prepared again and one folder can serve as a training
    run's validation ('train' split) and as an evaluation set ('test') from the same cache.

    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: missing, not a folder, or no images.
    """
    folder = Path(folder).resolve()
    files = images.list_image_files(folder)
    fingerprint = hashlib.sha256(f"{folder}:{split}".encode())
    for path in files:
        stat = path.stat()
        fingerprint.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    slug = re.sub(r"[^a-z0-9]+", "_", folder.name.lower()).strip("_") or "folder"
    config = HrFolderConfig(
        name=f"folder_{slug}_{fingerprint.hexdigest()[:12]}",
        description=f"HR images of {folder}.",
        split_dirs={split: (str(folder),)},
    )
    return local_source(config, split, data_dir=data_dir)


def open_source(
    spec: str,
    *,
    split: str | None = None,
    folder_split: str = "train",
    root: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> TfdsImageSource:
    """A dataset by name (:func:`config_names`, case-insensitive) or, failing that, a folder of images.

    Names win over folders of the same name; write ``./set5`` for a folder called ``set5``.

    Args:
        spec: a dataset name or a folder path (``~`` is expanded).
        split: the split of a named dataset (None: its only split).
        folder_split: the split name a folder is stored under.
        root, data_dir: see :func:`local_source`.

    Raises:
        ValueError: ``spec`` is neither a known name nor a folder (the message lists the names).
    """
    if spec.lower() in config_names():
        return local_source(spec.lower(), split, root=root, data_dir=data_dir)
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return folder_source(folder, split=folder_split, data_dir=data_dir)
    raise ValueError(
        f"dataset {spec!r} is neither a folder nor a known set; use a folder of images or one of "
        f"{', '.join(config_names())}."
    )


def div2k_catalog_source(
    split: str = "train",
    *,
    config: str = "bicubic_x2",
    data_dir: str | os.PathLike | None = None,
) -> TfdsImageSource:
    """Opens the HR images of the tfds catalog's ``div2k`` (downloading and preparing it once).

    Only the HR images are used; the config's LR images are ignored (the models make their own).
    Records are named '<div2k/config:split>/<index>' (the catalog stores no file names).

    Args:
        split: 'train' (800 images) or 'validation' (100 images).
        config: a tfds div2k config, e.g. 'bicubic_x2' (all configs share the HR images).
        data_dir: where tfds keeps prepared datasets (default: tfds's data dir).

    Raises:
        RuntimeError: the dataset is not prepared yet and TensorFlow, which the catalog
            builder needs to prepare it, is not installed.
    """
    builder = tfds.builder(
        f"div2k/{config}",
        data_dir=None if data_dir is None else os.fspath(data_dir),
        file_format="array_record",
    )
    if not builder.is_prepared():
        if not _tensorflow_available():
            raise RuntimeError(
                f"tfds div2k/{config} is not prepared in {builder.data_dir}, and preparing it "
                "needs TensorFlow (the catalog builder uses tf.io.gfile). Either prepare it once "
                "where TensorFlow is installed: `tfds build div2k/"
                f"{config} --file_format=array_record --data_dir=<dir>`, or download "
                "DIV2K_train_HR.zip and DIV2K_valid_HR.zip, unzip them into <root> and use "
                "local_source('div2k', split, root=<root>)."
            )
        builder.download_and_prepare(file_format="array_record")
    return TfdsImageSource(
        builder.as_data_source(split=split),
        image_key="hr",
        description=f"div2k/{config}:{split}",
    )


def _tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None
