"""Tests for irrm_jax.input_pipeline: crops, augmentation, batches, sharding, resuming, eval.

The multi-process and resume tests run this file as a script in subprocesses (see ``_main``).
"""

import json
import logging
import socket
import sys
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from irrm_jax import datasets, input_pipeline
from tests.subprocesses import start_python, wait_ok


def _coded_image(index: int, h: int, w: int) -> np.ndarray:
    """An image whose pixels tell where they come from: R = row, G = column, B = image index."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows, cols, np.full((h, w), index)], axis=-1).astype(np.uint8)


def _coded_source(shapes, names=None):
    arrays = [_coded_image(i, h, w) for i, (h, w) in enumerate(shapes)]
    return datasets.ArrayImageSource(arrays, names, description="coded")


def _all_transforms(image, top, left, size):
    return {
        (h, v, t): input_pipeline.crop_and_augment(image, top, left, size, hflip=h, vflip=v, transpose=t)
        for h in (False, True)
        for v in (False, True)
        for t in (False, True)
    }


def _locate(patch_u8, image):
    """(top, left, flags) of a patch cut from a coded image, checked against crop_and_augment."""
    top, left = int(patch_u8[..., 0].min()), int(patch_u8[..., 1].min())
    matches = [
        flags
        for flags, candidate in _all_transforms(image, top, left, patch_u8.shape[0]).items()
        if np.array_equal(candidate, patch_u8)
    ]
    assert len(matches) == 1, "patch is not an augmented crop of its image"
    return top, left, matches[0]


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["hr"], y["hr"])
        np.testing.assert_array_equal(x["index"], y["index"])


# ----------------------------------------------------------------------------- geometry


def test_crop_and_augment_at_a_known_offset():
    image = np.arange(5 * 6 * 2, dtype=np.int32).reshape(5, 6, 2)
    crop = image[1:4, 2:5]

    def run(**flags):
        defaults = {"hflip": False, "vflip": False, "transpose": False}
        return input_pipeline.crop_and_augment(image, 1, 2, 3, **(defaults | flags))

    np.testing.assert_array_equal(run(), crop)
    assert run()[0, 0, 0] == image[1, 2, 0] == 16
    np.testing.assert_array_equal(run(hflip=True), crop[:, ::-1])
    assert run(hflip=True)[0, 0, 0] == image[1, 4, 0]
    np.testing.assert_array_equal(run(vflip=True), crop[::-1])
    np.testing.assert_array_equal(run(transpose=True), np.swapaxes(crop, 0, 1))
    # IRN's order (hflip, vflip, then transpose) composes into the rotations.
    np.testing.assert_array_equal(run(hflip=True, transpose=True), np.rot90(crop, 1))
    np.testing.assert_array_equal(run(vflip=True, transpose=True), np.rot90(crop, -1))
    np.testing.assert_array_equal(run(hflip=True, vflip=True), np.rot90(crop, 2))
    assert run(transpose=True).flags["C_CONTIGUOUS"]


def test_crop_outside_the_image_is_an_error():
    image = np.zeros((4, 5, 3), np.uint8)
    for top, left, size in [(1, 0, 4), (0, 2, 4), (-1, 0, 2), (0, 0, 0)]:
        with pytest.raises(ValueError, match="does not fit"):
            input_pipeline.crop_and_augment(image, top, left, size, hflip=False, vflip=False, transpose=False)


def test_random_crops_cover_every_offset_and_transform():
    image = _coded_image(0, 8, 10)
    rng = np.random.default_rng(0)
    seen = [_locate(input_pipeline.random_crop_and_augment(image, 4, rng), image) for _ in range(600)]
    assert {top for top, _, _ in seen} == set(range(5))
    assert {left for _, left, _ in seen} == set(range(7))
    assert len({flags for _, _, flags in seen}) == 8
    rates = np.mean([flags for _, _, flags in seen], axis=0)
    assert np.all(np.abs(rates - 0.5) < 0.07), rates


def test_to_unit_float():
    pixels = np.array([0, 1, 128, 255], np.uint8)
    out = input_pipeline.to_unit_float(pixels)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.float32([0, 1 / 255, 128 / 255, 1]))


# ----------------------------------------------------------------------------- training batches


def test_batches_are_augmented_crops_and_deterministic():
    source = _coded_source([(20, 24), (16, 16), (12, 30), (25, 12), (16, 18)])
    kwargs = {"patch_size": 8, "global_batch_size": 4}
    batches = _take(input_pipeline.create_train_iterator(source, seed=0, **kwargs), 6)
    for batch in batches:
        assert batch["hr"].shape == (4, 8, 8, 3) and batch["hr"].dtype == np.float32
        assert batch["index"].shape == (4,) and batch["index"].dtype == np.int32
        assert 0.0 <= batch["hr"].min() and batch["hr"].max() <= 1.0
        for patch, index in zip(batch["hr"], batch["index"], strict=True):
            patch_u8 = np.rint(patch * 255).astype(np.uint8)
            assert np.all(patch_u8[..., 2] == index)
            _locate(patch_u8, source[index]["image"])
    assert {int(i) for b in batches for i in b["index"]} == set(range(5))
    _assert_same_batches(batches, _take(input_pipeline.create_train_iterator(source, seed=0, **kwargs), 6))
    other_seed = _take(input_pipeline.create_train_iterator(source, seed=1, **kwargs), 6)
    assert not all(np.array_equal(a["hr"], b["hr"]) for a, b in zip(batches, other_seed, strict=True))
    streamed = input_pipeline.create_train_iterator(source, seed=0, in_memory=False, **kwargs)
    _assert_same_batches(batches, _take(streamed, 6))


@pytest.mark.timeout(120)
def test_worker_processes_give_the_same_batches():
    source = _coded_source([(12, 12), (14, 10), (10, 16)])
    kwargs = {"patch_size": 8, "global_batch_size": 2, "seed": 5}
    expected = _take(input_pipeline.create_train_iterator(source, **kwargs), 4)
    iterator = input_pipeline.create_train_iterator(source, worker_count=2, **kwargs)
    try:
        got = [{k: np.array(v) for k, v in b.items()} for b in _take(iterator, 4)]
    finally:
        iterator.close()
    _assert_same_batches(expected, got)


def test_images_smaller_than_the_crop_are_skipped_with_a_warning(caplog):
    source = _coded_source([(10, 10), (7, 20), (12, 9)], ["big", "too_short", "too_narrow"])
    for in_memory in (True, False):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="irrm_jax.input_pipeline"):
            iterator = input_pipeline.create_train_iterator(
                source, patch_size=10, global_batch_size=2, seed=0, in_memory=in_memory
            )
        assert "too_short" in caplog.text and "too_narrow" in caplog.text
        assert "big" not in caplog.text
        assert {int(i) for b in _take(iterator, 3) for i in b["index"]} == {0}
    with pytest.raises(ValueError, match="No image .* at least 10x10"):
        input_pipeline.create_train_iterator(_coded_source([(9, 30)]), patch_size=10, global_batch_size=1, seed=0)


def test_in_memory_is_chosen_by_size(caplog):
    source = _coded_source([(16, 16)] * 3)
    for limit, mode in [(3 * 16 * 16 * 3, "in memory"), (3 * 16 * 16 * 3 - 1, "streamed")]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="irrm_jax.input_pipeline"):
            input_pipeline.create_train_iterator(
                source, patch_size=8, global_batch_size=1, seed=0, max_in_memory_bytes=limit
            )
        assert f"({mode})" in caplog.text


def test_invalid_arguments_are_explained():
    source = _coded_source([(16, 16)])
    mesh = jax.make_mesh((1,), ("batch",))
    cases = [
        ({"patch_size": 0}, "patch_size"),
        ({"global_batch_size": 0}, "global_batch_size"),
        ({"worker_count": -1}, "worker_count"),
        ({"mesh": mesh}, "no axis 'data'"),
    ]
    for overrides, message in cases:
        kwargs = {"patch_size": 8, "global_batch_size": 2, "seed": 0} | overrides
        with pytest.raises(ValueError, match=message):
            input_pipeline.create_train_iterator(source, **kwargs)


def test_to_global_batch_on_one_process():
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    n = 2 * jax.device_count()
    batch = {"hr": np.random.default_rng(0).random((n, 4, 4, 3), np.float32), "index": np.arange(n)}
    out = input_pipeline.to_global_batch(batch, mesh)
    assert isinstance(out["hr"], jax.Array)
    assert out["hr"].sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(out["hr"]), batch["hr"])
    np.testing.assert_array_equal(np.asarray(out["index"]), batch["index"])


# ----------------------------------------------------------------------------- evaluation


def test_eval_images_are_mod_cropped_with_names():
    gray = np.full((9, 9), 7, np.uint8)
    source = datasets.ArrayImageSource([_coded_image(0, 10, 13), gray, _coded_image(2, 8, 8)], ["a", "g", "c"])
    items = list(input_pipeline.iterate_eval_images(source, scale=4))
    assert [(e.name, e.image.shape, e.channels_in_source, e.index) for e in items] == [
        ("a", (8, 12, 3), 3, 0),
        ("g", (8, 8, 3), 1, 1),
        ("c", (8, 8, 3), 3, 2),
    ]
    np.testing.assert_array_equal(items[0].image, _coded_image(0, 10, 13)[:8, :12])
    assert items[1].image.dtype == np.uint8
    with pytest.raises(ValueError, match="scale"):
        next(input_pipeline.iterate_eval_images(source, scale=0))


# ----------------------------------------------------------------------------- subprocesses


def _write_folder(folder: Path, count: int) -> None:
    folder.mkdir()
    for i in range(count):
        Image.fromarray(_coded_image(i, 12 + i, 16)).save(folder / f"im{i:02d}.png")


def _run_script(*args):
    return start_python(__file__, *args)


@pytest.mark.timeout(150)
def test_two_processes_read_disjoint_shards_that_cover_the_data(tmp_path):
    folder, data_dir = tmp_path / "images", tmp_path / "tfds"
    _write_folder(folder, 7)
    datasets.folder_source(folder, data_dir=data_dir)  # prepare once, before the processes
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    processes = [_run_script("shard", port, pid, folder, data_dir, tmp_path / f"shard{pid}.json") for pid in range(2)]
    for process in processes:
        wait_ok(process, timeout=90)
    reports = [json.loads((tmp_path / f"shard{pid}.json").read_text()) for pid in range(2)]
    shards = [set(r["indices"]) for r in reports]
    assert shards[0].isdisjoint(shards[1])
    assert shards[0] | shards[1] == set(range(7))
    assert shards == [set(range(0, 7, 2)), set(range(1, 7, 2))]
    for report in reports:
        assert report["process_count"] == 2
        assert report["global_shape"] == [4, 8, 8, 3]
        assert report["local_batch_matches"]


@pytest.mark.timeout(120)
def test_restored_iterator_continues_with_the_same_batches(tmp_path):
    folder, data_dir, ckpt = tmp_path / "images", tmp_path / "tfds", tmp_path / "ckpt"
    _write_folder(folder, 3)
    source = datasets.folder_source(folder, data_dir=data_dir)
    iterator = input_pipeline.create_train_iterator(**_resume_kwargs(source))
    _take(iterator, 3)
    with ocp.CheckpointManager(ckpt) as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = _take(iterator, 4)
    wait_ok(_run_script("resume", folder, data_dir, ckpt, tmp_path / "resumed.npz"), timeout=90)
    resumed = np.load(tmp_path / "resumed.npz")
    got = [{"hr": resumed[f"hr{i}"], "index": resumed[f"index{i}"]} for i in range(4)]
    _assert_same_batches(expected, got)


def _resume_kwargs(source):
    return {"source": source, "patch_size": 8, "global_batch_size": 2, "seed": 42}


def _main(argv):
    """Subprocess entry points of the tests above."""
    command, *args = argv
    if command == "shard":
        port, pid, folder, data_dir, out = args
        jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(pid))
        mesh = jax.make_mesh((jax.device_count(),), ("data",))
        source = datasets.folder_source(folder, data_dir=data_dir)
        iterator = input_pipeline.create_train_iterator(source, patch_size=8, global_batch_size=4, seed=0, mesh=mesh)
        batches = _take(iterator, 12)
        global_batch = input_pipeline.to_global_batch(batches[-1], mesh)
        local = np.concatenate([np.asarray(s.data) for s in global_batch["hr"].addressable_shards])
        report = {
            "indices": sorted({int(i) for b in batches for i in b["index"]}),
            "process_count": jax.process_count(),
            "global_shape": list(global_batch["hr"].shape),
            "local_batch_matches": bool(np.array_equal(local, batches[-1]["hr"])),
        }
        Path(out).write_text(json.dumps(report))
        jax.distributed.shutdown()
    elif command == "resume":
        folder, data_dir, ckpt, out = args
        source = datasets.folder_source(folder, data_dir=data_dir)
        iterator = input_pipeline.create_train_iterator(**_resume_kwargs(source))
        with ocp.CheckpointManager(ckpt) as manager:
            manager.restore(
                manager.latest_step(),
                args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(iterator)),
            )
        arrays = {}
        for i, batch in enumerate(_take(iterator, 4)):
            arrays[f"hr{i}"], arrays[f"index{i}"] = batch["hr"], batch["index"]
        np.savez(out, **arrays)
    else:
        raise ValueError(f"unknown command {command!r}")


if __name__ == "__main__":
    _main(sys.argv[1:])
