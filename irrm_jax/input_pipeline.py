"""Training and evaluation input pipelines (grain) over HR image sources.

Training (:func:`create_train_iterator`): random ``patch_size`` x ``patch_size`` HR crops with
IRN's augmentation (horizontal flip, vertical flip, H<->W transpose, each with p = 0.5), as
float32 in [0, 1]; shuffled, repeated forever, and deterministic for a seed. Each process reads
only its shard of the images (``jax.process_index()`` of ``jax.process_count()``) and yields
host-local numpy batches, which :func:`to_global_batch` assembles into global ``jax.Array`` s
split over the mesh axis ``'data'``. Small datasets are decoded once and kept in memory; large
ones are decoded image by image as they stream. LR references are not made here: the training
step derives them from the HR patches.

A training loop uses it like this::

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    source = datasets.local_source("div2k", "train", root=...)
    train_iter = input_pipeline.create_train_iterator(
        source, patch_size=144, global_batch_size=16, seed=10, mesh=mesh)
    for step in range(num_steps):
        batch = input_pipeline.to_global_batch(next(train_iter), mesh)
        state, metrics = train_step(state, batch["hr"], ...)

The iterator's position is saved and restored with orbax, so a resumed run continues with
exactly the batches it would have seen (restore needs the same dataset, seed, batch size, process
count and ``worker_count``)::

    manager = ocp.CheckpointManager(workdir)
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(train_iter)))
    ...
    manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(train_iter)))   # train_iter: a fresh iterator

Evaluation (:func:`iterate_eval_images`): whole images, mod-cropped to a multiple of the scale
(spec 3.8), as uint8 with their names and ``channels_in_source``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from irrm_jax import images
from irrm_jax.datasets import ImageSource, decode_threads

logger = logging.getLogger(__name__)

DATA_AXIS = "data"
"""Name of the mesh axis that the batch dimension is split over."""

DEFAULT_MAX_IN_MEMORY_BYTES = 16 * 2**30
"""With ``in_memory=None``, a process keeps its shard in memory up to this many decoded bytes."""

# grain's shuffle is slow when an epoch has very few elements, so tiny datasets are repeated
# up to this many elements before shuffling (each copy is reshuffled with the rest).
_MIN_SHUFFLE_LENGTH = 1024


# --------------------------------------------------------------------------------------------
# Crop and augmentation.


def crop_and_augment(
    image: np.ndarray,
    top: int,
    left: int,
    size: int,
    *,
    hflip: bool,
    vflip: bool,
    transpose: bool,
) -> np.ndarray:
    """Crops ``image[top:top+size, left:left+size]``, then applies IRN's augmentation.

    The order is IRN's (``data/util.py: augment``): horizontal flip (reverse W), vertical flip
    (reverse H), then transpose H and W.

    Args:
        image: (H, W, C) array.
        top, left: the crop's top-left corner.
        size: the crop's height and width.
        hflip, vflip, transpose: which augmentations to apply.

    Returns:
        A (size, size, C) array of the same dtype.

    Raises:
        ValueError: the crop does not fit inside the image.
    """
    h, w = image.shape[:2]
    if size < 1 or top < 0 or left < 0 or top + size > h or left + size > w:
        raise ValueError(f"Crop of size {size} at (top={top}, left={left}) does not fit an image of {h}x{w}.")
    patch = image[top : top + size, left : left + size]
    if hflip:
        patch = patch[:, ::-1]
    if vflip:
        patch = patch[::-1, :]
    if transpose:
        patch = patch.transpose(1, 0, *range(2, patch.ndim))
    return np.ascontiguousarray(patch)


def random_crop_and_augment(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random ``size`` crop with random flips/transpose (p = 0.5 each)."""
    h, w = image.shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    hflip, vflip, transpose = (bool(b) for b in rng.random(3) < 0.5)
    return crop_and_augment(image, top, left, size, hflip=hflip, vflip=vflip, transpose=transpose)


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1] (value / 255)."""
    return pixels.astype(np.float32) / np.float32(255)


# --------------------------------------------------------------------------------------------
# Training.


class _InMemoryImages:
    """Decoded images of one shard, indexed by position (pickled into grain workers)."""

    def __init__(self, pixels: Sequence[np.ndarray], record_indices: Sequence[int]):
        self._pixels = list(pixels)
        self._record_indices = list(record_indices)

    def __len__(self) -> int:
        return len(self._pixels)

    def get(self, position: int) -> tuple[np.ndarray, int]:
        return self._pixels[position], self._record_indices[position]


class _StreamedImages:
    """Images of one shard, decoded from the source on every access."""

    def __init__(self, source: ImageSource, record_indices: Sequence[int]):
        self._source = source
        self._record_indices = list(record_indices)

    def __len__(self) -> int:
        return len(self._record_indices)

    def get(self, position: int) -> tuple[np.ndarray, int]:
        index = self._record_indices[position]
        return self._source[index]["image"], index


@dataclasses.dataclass(frozen=True)
class _RandomPatches:
    """grain random_map transform: a batch of shard positions -> a batch of random patches.

    Working on whole batches (one random generator, one float conversion a batch) keeps grain's
    per-element overhead out of the loop.
    """

    images: _InMemoryImages | _StreamedImages
    patch_size: int

    def __call__(self, positions: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        patches = np.empty((len(positions), self.patch_size, self.patch_size, 3), np.uint8)
        indices = np.empty(len(positions), np.int32)
        for k, position in enumerate(positions):
            pixels, indices[k] = self.images.get(int(position))
            patches[k] = random_crop_and_augment(pixels, self.patch_size, rng)
        return {"hr": to_unit_float(patches), "index": indices}


def create_train_iterator(
    source: ImageSource,
    *,
    patch_size: int,
    global_batch_size: int,
    seed: int,
    mesh: Mesh | None = None,
    in_memory: bool | None = None,
    worker_count: int = 0,
    read_threads: int | None = None,
    max_in_memory_bytes: int = DEFAULT_MAX_IN_MEMORY_BYTES,
) -> grain.DatasetIterator:
    """An endless, deterministic iterator of host-local training batches.

    Each batch is ``{"hr": float32 (B, patch_size, patch_size, 3) in [0, 1], "index": int32
    (B,)}`` with ``B = global_batch_size // jax.process_count()``; ``index`` is the record index
    in ``source`` that each patch was cut from. Pass batches through :func:`to_global_batch`.

    Sharding: process p of P reads records p, p + P, p + 2P, ... only. Images smaller than
    ``patch_size`` are skipped with a warning naming them. The sequence of batches is a function
    of (source, patch_size, global_batch_size, seed, process index and count); ``worker_count``
    and ``read_threads`` change only the speed.

    Args:
        source: HR images, e.g. from :func:`irrm_jax.datasets.local_source`.
        patch_size: side of the square HR crops (IRN: 144).
        global_batch_size: patches per step over all processes; must be divisible by the
            process count and by the size of the mesh's 'data' axis.
        seed: the seed of shuffling, crops and augmentation.
        mesh: the device mesh the batches will be put on (only checked here), or None.
        in_memory: keep the decoded shard in memory (True), decode images as they stream
            (False), or decide by size (None: in memory up to ``max_in_memory_bytes``).
        worker_count: grain worker processes (0: threads in this process). Workers receive a
            copy of in-memory images; use 0 for large in-memory shards.
        read_threads: threads producing batches in each process or worker (default: 4 when
            streaming without workers, where decoding releases the GIL; 1 otherwise).
        max_in_memory_bytes: the threshold of ``in_memory=None``.

    Returns:
        A grain ``DatasetIterator``: ``next(it)`` gives a batch; ``it.get_state()`` /
        ``it.set_state()`` (or grain's orbax handler, see the module docstring) save and restore
        its position. Close it with ``it.close()`` when ``worker_count > 0``.

    Raises:
        ValueError: invalid arguments, or no image of this process's shard is large enough.
    """
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}.")
    if worker_count < 0:
        raise ValueError(f"worker_count must be >= 0, got {worker_count}.")
    process_index, process_count = jax.process_index(), jax.process_count()
    local_batch_size = _local_batch_size(global_batch_size, process_count, mesh)
    if len(source) == 0:
        raise ValueError(f"{source!r} holds no image.")
    shard = list(range(process_index, len(source), process_count))
    if not shard:
        raise ValueError(f"{source!r} has {len(source)} images, fewer than the {process_count} processes.")
    if in_memory is None:
        in_memory = _estimated_bytes(source, shard) <= max_in_memory_bytes
    if in_memory:
        shard_images = _decode_shard(source, shard, patch_size)
    else:
        shard_images = _StreamedImages(source, _large_enough(source, shard, patch_size))
    logger.info(
        "Training data: %s, process %d of %d reads %d images (%s), %d patches a batch.",
        source,
        process_index,
        process_count,
        len(shard_images),
        "in memory" if in_memory else "streamed",
        local_batch_size,
    )
    shuffle_seed, crop_seed = (int(s) for s in np.random.SeedSequence([seed, process_index]).generate_state(2))
    ds = grain.MapDataset.range(len(shard_images))
    if len(ds) < _MIN_SHUFFLE_LENGTH:
        ds = ds.repeat(math.ceil(_MIN_SHUFFLE_LENGTH / len(ds)))
    ds = ds.shuffle(seed=shuffle_seed).repeat()
    ds = ds.batch(local_batch_size, drop_remainder=True)
    ds = ds.random_map(_RandomPatches(shard_images, patch_size), seed=crop_seed)
    if read_threads is None:
        read_threads = 1 if in_memory or worker_count > 0 else 4
    read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * read_threads)
    iter_ds = ds.to_iter_dataset(read_options)
    if worker_count > 0:
        _mark_absl_flags_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(iter_ds)


def to_global_batch(batch: Any, mesh: Mesh, *, axis: str = DATA_AXIS) -> Any:
    """Assembles every process's local batch into global arrays split over ``axis``.

    Args:
        batch: a pytree of host-local numpy arrays whose leading axis is the local batch.
        mesh: the device mesh; the batch axis is split over its axis ``axis``.
        axis: the mesh axis name (default 'data').

    Returns:
        The same pytree of ``jax.Array`` s with leading axis ``process_count * local batch``,
        sharded as ``NamedSharding(mesh, PartitionSpec(axis))``.
    """
    return _assemble(batch, mesh, PartitionSpec(axis))


def to_global_batches(batches: Sequence[Any], mesh: Mesh, *, axis: str = DATA_AXIS) -> Any:
    """Stacks K local batches (pytrees as in `to_global_batch`) into global arrays (K, global batch, ...).

    The batch axis (axis 1) is split over ``axis``, as `irrm_jax.train.make_multi_step` expects.
    """
    return _assemble(jax.tree.map(lambda *xs: np.stack(xs), *batches), mesh, PartitionSpec(None, axis))


def _assemble(local: Any, mesh: Mesh, spec: PartitionSpec) -> Any:
    """Global arrays from every process's local pytree, sharded over ``mesh`` as ``spec``."""
    missing = [axis for axis in spec if axis is not None and axis not in mesh.axis_names]
    if missing:
        raise ValueError(f"Mesh axes {mesh.axis_names} have no axis {missing[0]!r}.")
    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def _local_batch_size(global_batch_size: int, process_count: int, mesh: Mesh | None) -> int:
    if not isinstance(global_batch_size, int) or global_batch_size < 1:
        raise ValueError(f"global_batch_size must be a positive integer, got {global_batch_size!r}.")
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the {process_count} processes.")
    if mesh is not None:
        if DATA_AXIS not in mesh.axis_names:
            raise ValueError(f"Mesh axes {mesh.axis_names} have no axis {DATA_AXIS!r}.")
        if global_batch_size % mesh.shape[DATA_AXIS]:
            raise ValueError(
                f"global_batch_size {global_batch_size} is not divisible by the mesh's "
                f"'{DATA_AXIS}' axis of size {mesh.shape[DATA_AXIS]}."
            )
    return global_batch_size // process_count


def _estimated_bytes(source: ImageSource, shard: Sequence[int]) -> int:
    if source.has_sizes:
        sizes = source.sizes()[shard]
        return int(np.sum(sizes[:, 0] * sizes[:, 1])) * 3
    return source[shard[0]]["image"].nbytes * len(shard)


def _warn_small(source: ImageSource, names: Sequence[str], patch_size: int) -> None:
    if names:
        logger.warning(
            "Skipping %d image(s) of %s smaller than the %dx%d crop: %s",
            len(names),
            source,
            patch_size,
            patch_size,
            ", ".join(names),
        )


def _no_image_error(source: ImageSource, patch_size: int) -> ValueError:
    return ValueError(f"No image of {source!r} (in this process's shard) is at least {patch_size}x{patch_size}.")


def _large_enough(source: ImageSource, shard: Sequence[int], patch_size: int) -> list[int]:
    sizes = source.sizes()[shard]
    keep = np.all(sizes >= patch_size, axis=1)
    _warn_small(source, [source[i]["name"] for i, k in zip(shard, keep, strict=True) if not k], patch_size)
    if not keep.any():
        raise _no_image_error(source, patch_size)
    return [i for i, k in zip(shard, keep, strict=True) if k]


def _decode_shard(source: ImageSource, shard: Sequence[int], patch_size: int) -> _InMemoryImages:
    logger.info("Decoding %d images of %s into memory.", len(shard), source)
    with concurrent.futures.ThreadPoolExecutor(decode_threads()) as pool:
        records = list(pool.map(source.__getitem__, shard))
    small = [r["name"] for r in records if min(r["image"].shape[:2]) < patch_size]
    _warn_small(source, small, patch_size)
    kept = [(r["image"], i) for r, i in zip(records, shard, strict=True) if min(r["image"].shape[:2]) >= patch_size]
    if not kept:
        raise _no_image_error(source, patch_size)
    return _InMemoryImages([p for p, _ in kept], [i for _, i in kept])


def _mark_absl_flags_parsed() -> None:
    """Lets grain's worker processes read their absl flags.

    grain 0.2.18 reads its absl flags when it starts worker processes and raises
    UnparsedFlagAccessError if the program never parsed them (fixed upstream, not yet released).
    Programs run through absl.app have parsed them already.
    """
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


# --------------------------------------------------------------------------------------------
# Evaluation.


@dataclasses.dataclass(frozen=True)
class EvalImage:
    """One evaluation image.

    Attributes:
        image: uint8 (H, W, 3), H and W multiples of the scale (mod-cropped, top-left kept).
        name: the image's name, e.g. 'baby'.
        channels_in_source: 1 if the file was grayscale (score it on one channel), else 3.
        index: the record index in the source.
    """

    image: np.ndarray
    name: str
    channels_in_source: int
    index: int


def iterate_eval_images(source: ImageSource, *, scale: int) -> Iterator[EvalImage]:
    """Yields all of the source's images in order (on every process), mod-cropped to a multiple of ``scale``.

    Args:
        source: HR images, e.g. ``datasets.local_source("set5", root=...)``.
        scale: the rescaling factor; H and W are cropped down to multiples of it.
    """
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}.")
    for index in range(len(source)):
        record = source[index]
        yield EvalImage(
            image=images.mod_crop(record["image"], scale),
            name=record["name"],
            channels_in_source=record["channels_in_source"],
            index=index,
        )
