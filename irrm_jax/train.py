"""The training loop: data-parallel steps, validation, metrics, checkpoints and resume.

    from irrm_jax.train import train_and_evaluate
    state = train_and_evaluate(config, workdir)      # config: see configs/default.py

One step (`make_train_step`) is a single `jax.jit` over a one-axis device mesh: the state is replicated, the
global batch is split over the ``'data'`` axis, and the batch mean of the loss makes XLA all-reduce the
gradients, so any number of devices and processes computes the same update as one device. Each step draws its
z' from ``fold_in(base_key, step)``, so a resumed run reproduces the uninterrupted one exactly. With
``train.steps_per_call`` K > 1, K steps run in one jitted call (`make_multi_step`, a `jax.lax.scan`): the same
updates, one dispatch from the host instead of K. The next calls' batches are assembled on a background thread
while the device runs the current one (`irrm_jax.prefetch.BatchPrefetcher`).

Every ``log_every`` steps the loop writes the mean of each loss term, gradient/parameter/update norms, the
learning rate, the step time and HR patches/s; every ``eval_every`` steps the validation PSNRs (see `validate`).
Any non-finite loss or gradient norm stops the run with a `FloatingPointError` naming the step; metrics are
checked before every checkpoint, so the checkpoints left behind are the last good ones. With
``train.profile_steps`` > 0, that many steps from the 11th of the run on (after compilation) are traced with
`jax.profiler` into ``workdir/profile`` (a Perfetto ``perfetto_trace.json.gz`` and TensorBoard's XPlane).
"""

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image
from tqdm import tqdm

from irrm_jax import datasets, input_pipeline, metrics
from irrm_jax.checkpointing import Checkpointer, PreemptionWatcher
from irrm_jax.input_pipeline import EvalImage
from irrm_jax.losses import LossConfig, rescaling_loss
from irrm_jax.metric_writers import MetricWriter
from irrm_jax.models import InvertibleRescaler
from irrm_jax.optimizer import global_norm
from irrm_jax.parallel import batch_sharded, make_data_mesh, replicated, stacked_batches_sharded
from irrm_jax.prefetch import BatchPrefetcher
from irrm_jax.resize import bicubic_downscale
from irrm_jax.train_state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    loss_config_from_config,
    model_from_config,
    optimizer_from_config,
    schedule_from_config,
)

logger = logging.getLogger(__name__)

StepFn = Callable[[TrainState, jax.Array], tuple[TrainState, dict[str, jax.Array]]]

# Metrics whose non-finite value stops the run.
_GUARDED_METRICS = ("loss", "loss_fit", "loss_rec", "loss_ce", "grad_norm")


# --------------------------------------------------------------------------------------------
# Data sources named by the config.


def synthetic_source(count: int, size: int, seed: int) -> datasets.ArrayImageSource:
    """``count`` smooth random RGB images of ``size`` x ``size`` (for tests and demos without data).

    Each image is a bicubic upsampling of random 8x8 colours plus mild noise: structure at several scales, so
    a model can learn something from it.
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), np.float64)
        arrays.append(np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).round().astype(np.uint8))
    return datasets.ArrayImageSource(arrays, description=f"synthetic {count}x{size}px seed {seed}")


def image_source(spec: str, split: str | None, data: ml_collections.ConfigDict, seed: int) -> datasets.ImageSource:
    """Opens the images a config names.

    Args:
      spec: comma-separated parts, each 'synthetic' (``data.synthetic_count`` generated images of
        ``data.synthetic_size`` pixels) or what `irrm_jax.datasets.open_source` opens: a dataset name ('div2k',
        'set5', 't91', ..., read from ``data.root``) or a folder of images.
      split: the split of named datasets (None: the dataset's only split).
      data: ``config.data`` (root, data_dir, synthetic sizes).
      seed: seed of synthetic images.

    Raises:
      ValueError: for a part that is neither 'synthetic', a dataset name nor an existing folder.
    """
    parts = []
    for part in (p.strip() for p in spec.split(",")):
        if part == "synthetic":
            parts.append(synthetic_source(data.synthetic_count, data.synthetic_size, seed))
        else:
            parts.append(
                datasets.open_source(part, split=split, root=data.root or None, data_dir=data.data_dir or None)
            )
    return datasets.concatenate(parts)


def _center_crop(image: np.ndarray, max_size: int, scale: int) -> np.ndarray:
    if not max_size:
        return image
    side = max_size - max_size % scale
    h, w = image.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[top : top + side, left : left + side]


def load_validation_images(config: ml_collections.ConfigDict) -> list[EvalImage]:
    """The validation images of ``config.data`` (at most ``max_validation_images``, centre-cropped to at most
    ``validation_max_size`` pixels a side when it is not 0), mod-cropped to the scale; [] without a source."""
    data, scale = config.data, config.model.scale
    if not data.validation:
        return []
    source = image_source(data.validation, data.validation_split, data, seed=config.train.seed + 1)
    out = []
    for image in input_pipeline.iterate_eval_images(source, scale=scale):
        if data.max_validation_images and len(out) == data.max_validation_images:
            break
        out.append(
            EvalImage(
                image=_center_crop(image.image, data.validation_max_size, scale),
                name=image.name,
                channels_in_source=image.channels_in_source,
                index=image.index,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Steps.


def make_train_step(
    model: InvertibleRescaler,
    optimizer: optax.GradientTransformation,
    learning_rate: optax.Schedule,
    loss_config: LossConfig,
    mesh: jax.sharding.Mesh,
) -> StepFn:
    """The jitted data-parallel step ``(state, hr) -> (new state, metrics)``.

    ``state`` must be replicated over ``mesh`` and ``hr`` (global batch, (N, H, W, 3) float32 in [0, 1]) split
    over its 'data' axis. The state's buffers are donated. Metrics are replicated float32 scalars: the weighted
    loss terms, ``grad_norm`` (before clipping), ``param_norm``, ``update_norm`` and ``learning_rate`` of this
    update (``learning_rate`` is the optimiser's schedule, only reported here).

    With ``model.dense_pallas`` or ``dense_cuda`` the loss is traced under the mesh
    (`jax.sharding.use_abstract_mesh`), so that the DenseBlock kernels run on each device's part of the batch
    (`irrm_jax.dense_kernels`); without them the step is left exactly as XLA partitions it.
    """

    def mesh_context():
        kernels = model.dense_pallas or model.dense_cuda
        return jax.sharding.use_abstract_mesh(mesh.abstract_mesh) if kernels else contextlib.nullcontext()

    def step(state: TrainState, hr: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        grad_fn = jax.value_and_grad(rescaling_loss, argnums=1, has_aux=True)
        with mesh_context():
            (_, terms), grads = grad_fn(model, state.params, hr, state.step_key(), loss_config)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = dict(
            terms,
            grad_norm=global_norm(grads),
            param_norm=global_norm(params),
            update_norm=global_norm(updates),
            learning_rate=jnp.asarray(learning_rate(state.step), jnp.float32),
        )
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, out

    jitted = jax.jit(
        step,
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=0,
    )
    return jitted


def make_multi_step(step: StepFn, mesh: jax.sharding.Mesh) -> StepFn:
    """``step`` K times in one jitted call: ``(state, hrs (K, N, H, W, 3)) -> (state, metrics stacked over K)``.

    A `jax.lax.scan` over the K batches, so K updates cost one dispatch from the host instead of K (the lever for
    models whose step is bound by kernel launches; benchmarks/NOTES.md). The same updates as K calls of ``step``.
    The state's buffers are donated.
    """
    return jax.jit(
        lambda state, hrs: jax.lax.scan(step, state, hrs),
        in_shardings=(replicated(mesh), stacked_batches_sharded(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=0,
    )


def make_validation_fn(model: InvertibleRescaler) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, ...]]:
    """Jitted ``(params, hr (1, H, W, 3), key) -> (quantised LR, reconstruction with z ~ N(0, I), bicubic LR)``."""

    @jax.jit
    def run(params: Any, hr: jax.Array, key: jax.Array) -> tuple[jax.Array, ...]:
        variables = {"params": params}
        lr, z = model.apply(variables, hr)
        lr = jnp.round(jnp.clip(lr, 0.0, 1.0) * 255.0) / 255.0
        hr_rec = model.apply(variables, lr, jax.random.normal(key, z.shape, z.dtype), method=model.inverse)
        return lr, hr_rec, bicubic_downscale(hr, model.scale)

    return run


def validate(
    run: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, ...]],
    params: Any,
    images: Sequence[EvalImage],
    scale: int,
    key: jax.Array,
) -> dict[str, float]:
    """Mean per-image PSNRs over the validation images (metrics conventions of `irrm_jax.metrics`).

    ``psnr_y`` and ``psnr_rgb``: the reconstruction from the quantised LR and one z ~ N(0, I) (key folded with
    the image index) against the HR, ``scale`` pixels cropped; ``psnr_y_lr``: the quantised LR against the
    MATLAB bicubic downscale of the HR (rounded to uint8), no crop. Images are scored as RGB even when their
    file was grayscale (this is a training monitor; `irrm_jax.metrics` documents the benchmark protocol).

    Args:
      run: from `make_validation_fn`.
      params: parameters on one device.
      images: from `load_validation_images`.
      scale: the model's scale.
      key: base PRNG key of the z draws.
    """
    acc = metrics.MeanAccumulator()
    for image in images:
        hr = input_pipeline.to_unit_float(image.image)[None]
        lr, hr_rec, lr_bicubic = run(params, hr, jax.random.fold_in(key, image.index))
        rec = metrics.to_uint8(np.asarray(hr_rec[0]))
        acc.add(
            {
                "psnr_y": metrics.psnr_y(rec, image.image, crop=scale),
                "psnr_rgb": metrics.psnr_rgb(rec, image.image, crop=scale),
                "psnr_y_lr": metrics.psnr_y(
                    metrics.to_uint8(np.asarray(lr[0])), metrics.to_uint8(np.asarray(lr_bicubic[0])), crop=0
                ),
            }
        )
    return acc.means()


# --------------------------------------------------------------------------------------------
# The loop.


def _check_finite(step: int, values: dict[str, float], checkpoints: Path, last_saved: int | None) -> None:
    bad = {name: values[name] for name in _GUARDED_METRICS if not math.isfinite(values[name])}
    if bad:
        kept = f"the last good checkpoint is step {last_saved} in {checkpoints}" if last_saved else "no checkpoint"
        raise FloatingPointError(
            f"non-finite training values at step {step}: "
            + ", ".join(f"{name}={value}" for name, value in bad.items())
            + f"; stopping ({kept}). Lower optim.learning_rate or optim.clip_norm, or check the data."
        )


class _MetricLog:
    """Per-step training metrics: checked at every flush, averaged and written at the log steps.

    A step's values stay on the device until the next `flush`, which checks them (before a validation or a
    checkpoint too) and keeps them on the host until a flush with ``write`` writes the means over every step since
    the last write. The step time counts only the time between `restart_clock` (or the last flush) and a flush, so
    validation and saving, done after a flush and followed by `restart_clock`, are left out.
    """

    def __init__(self, writer: MetricWriter, global_batch_size: int, checkpoints: Path):
        self._writer = writer
        self._batch = global_batch_size
        self._checkpoints = checkpoints
        self._pending: list[tuple[range, dict[str, jax.Array]]] = []  # not yet checked, on the device
        self._values: list[dict[str, float]] = []  # checked, not yet written
        self._since = time.perf_counter()
        self._timed = 0  # steps whose time is in _seconds
        self._seconds = 0.0
        self._last_step = 0
        self.last_saved: int | None = None

    def add(self, steps: range, step_metrics: dict[str, jax.Array]) -> None:
        """The metrics of ``steps``: scalars for one step, or stacked along a leading axis (a row a step)."""
        self._pending.append((steps, step_metrics))

    def restart_clock(self, forget: bool = False) -> None:
        """Excludes the time from the last flush until now (validation, saving) from the step time.

        Called right after a flush. With ``forget``, the time measured before is dropped as well (the first step's
        compilation); the steps' values are kept either way.
        """
        self._since = time.perf_counter()
        if forget:
            self._timed, self._seconds = 0, 0.0

    def flush(self, write: bool) -> dict[str, float]:
        """Checks the new steps' values; with ``write``, writes the means since the last write. Returns the means."""
        if self._pending:  # fetching waits for the steps to finish, so that their time below is complete
            fetched = jax.device_get([m for _, m in self._pending])
            for (steps, _), v in zip(self._pending, fetched, strict=True):
                rows = {k: np.reshape(x, len(steps)) for k, x in v.items()}
                for i, step in enumerate(steps):
                    values = {k: float(row[i]) for k, row in rows.items()}
                    _check_finite(step, values, self._checkpoints, self.last_saved)
                    self._values.append(values)
            self._last_step = self._pending[-1][0][-1]
            self._timed += sum(len(steps) for steps, _ in self._pending)  # their time is now - _since
            self._pending = []
        now = time.perf_counter()
        self._seconds += now - self._since
        self._since = now
        if not self._values:
            return {}
        means = {name: float(np.mean([v[name] for v in self._values])) for name in self._values[0]}
        means["step_time_s"] = self._seconds / self._timed if self._timed else math.nan
        means["hr_patches_per_s"] = self._batch * self._timed / self._seconds if self._seconds > 0 else math.nan
        if write:
            self._writer.write(self._last_step, "train", means)
            self._values = []
            self._timed, self._seconds = 0, 0.0
        return means


class _StepProfiler:
    """Traces the calls holding steps ``first .. first + count - 1`` of process 0 with `jax.profiler` (Perfetto and
    XPlane files)."""

    def __init__(self, directory: Path, first: int, count: int):
        self._directory, self._first, self._last = directory, first, first + count - 1
        self._enabled = count > 0 and jax.process_index() == 0
        self._active = False

    def before(self, steps: range) -> None:
        if self._enabled and self._first in steps:
            jax.profiler.start_trace(str(self._directory), create_perfetto_trace=True)
            self._active = True

    def after(self, steps: range, state: TrainState) -> None:
        if self._active and steps[-1] >= self._last:
            jax.block_until_ready(state)
            self.stop()

    def __enter__(self) -> "_StepProfiler":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._active:
            jax.profiler.stop_trace()
            self._active = False
            logger.info("Profile of steps %d-%d written to %s.", self._first, self._last, self._directory)


def _calls(start: int, num_steps: int, steps_per_call: int) -> Iterator[range]:
    """The steps of each call after ``start`` updates: calls end at multiples of ``steps_per_call`` and at
    ``num_steps`` (so a resumed run's calls line up with an uninterrupted run's)."""
    while start < num_steps:
        end = min((start // steps_per_call + 1) * steps_per_call, num_steps)
        yield range(start + 1, end + 1)
        start = end


def _open_train_iterator(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, seed: int):
    data = config.data
    source = image_source(data.train, data.train_split, data, seed=config.train.seed)
    return input_pipeline.create_train_iterator(
        source,
        patch_size=data.patch_size,
        global_batch_size=data.batch_size,
        seed=seed,
        mesh=mesh,
        in_memory=data.in_memory,
        worker_count=data.worker_count,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> TrainState:
    """Trains ``config`` in ``workdir``, resuming from its newest checkpoint if there is one.

    Runs until ``config.train.num_steps`` updates are done or a SIGTERM arrives (then it saves a checkpoint and
    returns). Every process of a multi-process job calls it with the same arguments, after
    `irrm_jax.parallel.initialize_distributed`.

    Args:
      config: the training config (fields documented in ``configs/default.py``).
      workdir: where checkpoints, ``metrics.jsonl`` and TensorBoard event files go (shared by all processes).

    Returns:
      The final (replicated) training state.

    Raises:
      FloatingPointError: when a loss term or the gradient norm becomes non-finite (the message names the step).
      ValueError: for invalid config values.
    """
    workdir = Path(workdir)
    tc = config.train
    for name in ("num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "steps_per_call"):
        if not isinstance(tc[name], int) or tc[name] < 1:
            raise ValueError(f"train.{name} must be a positive integer, got {tc[name]!r}.")
    for name in ("log_every", "eval_every", "checkpoint_every"):  # so that each falls at the end of a call
        if tc[name] % tc.steps_per_call:
            k = tc.steps_per_call
            raise ValueError(f"train.{name} ({tc[name]}) must be a multiple of train.steps_per_call ({k}).")
    mesh = make_data_mesh()
    model = model_from_config(config)
    optimizer = optimizer_from_config(config)
    loss_config = loss_config_from_config(config)
    scale = config.model.scale
    if loss_config.lambda_fit != scale**2:
        logger.warning("loss.lambda_fit is %g; IRN uses scale**2 = %d.", loss_config.lambda_fit, scale**2)
    logger.info(
        "Training %s x%d on %d devices (%d processes), global batch %d.",
        config.model.name,
        scale,
        jax.device_count(),
        jax.process_count(),
        config.data.batch_size,
    )

    train_iter = _open_train_iterator(config, mesh, seed=tc.seed)
    checkpointer = Checkpointer(workdir, keep=tc.keep_checkpoints)
    writer = MetricWriter(workdir)
    try:
        latest = checkpointer.latest_step()
        if latest is None:
            state = create_train_state(model, optimizer, tc.seed, replicated(mesh))
        else:
            logger.info("Resuming from checkpoint %d in %s.", latest, checkpointer.directory)
            target = abstract_train_state(model, optimizer, replicated(mesh))
            state, data_restored = checkpointer.restore(latest, target, train_iter)
            if not data_restored:  # another process count: fresh batches, not a replay of the first ones
                train_iter.close()
                train_iter = _open_train_iterator(config, mesh, seed=tc.seed * 1_000_003 + latest)
        start = int(jax.device_get(state.step))
        if jax.process_index() == 0:
            (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
        train_step = make_train_step(model, optimizer, schedule_from_config(config), loss_config, mesh)
        multi_step = make_multi_step(train_step, mesh)
        validation_images = load_validation_images(config)
        run_validation = make_validation_fn(model)
        validation_key = jax.random.key(tc.seed + 2)
        log = _MetricLog(writer, config.data.batch_size, checkpointer.directory)
        log.last_saved = latest
        show_bar = tc.progress_bar and jax.process_index() == 0
        calls = list(_calls(start, tc.num_steps, tc.steps_per_call))
        stacked = tc.steps_per_call > 1  # batches stacked for the K-step call
        run_call = multi_step if stacked else train_step
        with (
            PreemptionWatcher() as preemption,
            tqdm(total=tc.num_steps, initial=start, disable=not show_bar, unit="step") as bar,
            _StepProfiler(workdir / "profile", start + 11, tc.profile_steps) as profiler,
            BatchPrefetcher(train_iter, calls, mesh, stacked=stacked) as batches,
        ):
            for steps in calls:
                step = steps[-1]  # updates done once this call is
                profiler.before(steps)
                state, step_metrics = run_call(state, next(batches))
                log.add(steps, step_metrics)
                profiler.after(steps, state)
                bar.update(len(steps))
                preempted = preemption.reached(step)
                last = step == tc.num_steps or preempted
                validate_now = bool(validation_images) and (step % tc.eval_every == 0 or last)
                save_now = step % tc.checkpoint_every == 0 or last
                first = steps[0] == start + 1  # its time includes compilation
                if first or step % tc.log_every == 0 or validate_now or save_now:
                    means = log.flush(write=step % tc.log_every == 0 or last)
                    bar.set_postfix(loss=f"{means['loss']:.4g}", refresh=False)
                    if first:
                        seconds = means["step_time_s"] * len(steps)
                        logger.info("First call, %d step(s) (with compilation): %.1f s.", len(steps), seconds)
                if validate_now:
                    params = jax.tree.map(lambda a: a.addressable_data(0), state.params)
                    results = validate(run_validation, params, validation_images, scale, validation_key)
                    writer.write(step, "validation", results)
                if save_now:
                    checkpointer.save(step, state, batches, config)  # the position after this call's batches
                    log.last_saved = step
                if first or validate_now or save_now:
                    log.restart_clock(forget=first)  # the first step's time is mostly compilation
                if preempted:
                    logger.warning("Preemption notice: saved checkpoint %d and stopping.", step)
                    break
    finally:
        checkpointer.close()  # waits for pending saves: the last good checkpoint is complete
        writer.close()
        train_iter.close()
    return state
