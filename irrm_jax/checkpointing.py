"""Training checkpoints (orbax): save, resume, preemption, and loading trained models.

A workdir's checkpoints live in ``<workdir>/checkpoints/<step>/``, each with four items:

* ``state``: the `TrainState` (parameters, optimiser state, step, base PRNG key), saved from any sharding;
* ``data``: the position of the grain training iterator, so a resumed run sees the same batches;
* ``config``: the training config as JSON (enough to rebuild the model);
* ``meta``: JSON with the step and the process and device counts that wrote it.

Saves are asynchronous (writing continues while training goes on). `Checkpointer` saves every N steps and
keeps the newest K; `PreemptionWatcher` notices SIGTERM so the loop can save and stop. States are restored
into an abstract target with the *current* shardings, so a checkpoint written on 8 devices restores on 1 or 4.
The iterator position needs the same process count; with another count training continues with fresh data.

For users of trained models::

    model, params, config = restore_model("workdir")          # or "workdir/checkpoints/500000"
    lr, z = model.apply({"params": params}, hr)
"""

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from irrm_jax.models import InvertibleRescaler
from irrm_jax.prefetch import BatchPrefetcher
from irrm_jax.train_state import TrainState, abstract_train_state, model_from_config, optimizer_from_config

logger = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"


def checkpoint_directory(workdir: str | os.PathLike) -> Path:
    """Where the checkpoints of a training workdir live."""
    return Path(workdir).absolute() / CHECKPOINT_SUBDIR


class Checkpointer:
    """Periodic asynchronous checkpoints of one training run.

    The caller decides when to save (every N steps, on preemption, at the end).

    Args:
      workdir: the training workdir.
      keep: how many of the newest checkpoints to keep.
      async_save: write in a background thread (True) or block until written (False).
    """

    def __init__(self, workdir: str | os.PathLike, *, keep: int, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}.")
        self.directory = checkpoint_directory(workdir)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of every complete checkpoint kept, oldest first."""
        return sorted(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: TrainState,
        data_iterator: grain.DatasetIterator | BatchPrefetcher,
        config: ml_collections.ConfigDict,
    ) -> None:
        """Starts writing the checkpoint of ``step`` (the oldest beyond ``keep`` is deleted once it is written).

        Every process must call it with the same step. The arrays are copied before it returns, so the state's
        buffers may be donated to the next step at once. ``data_iterator``'s position is saved: the training
        loop passes its `BatchPrefetcher`, whose position is that of the batches trained on (the iterator is ahead).
        """
        meta = {"step": step, "process_count": jax.process_count(), "device_count": jax.device_count()}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(config_to_json(config)),
            meta=ocp.args.JsonSave(meta),
        )
        self._manager.save(step, args=args, force=True)
        logger.info("Saving checkpoint %d to %s.", step, self.directory)

    def restore(
        self, step: int, abstract_state: TrainState, data_iterator: grain.DatasetIterator
    ) -> tuple[TrainState, bool]:
        """Restores the state of ``step`` into ``abstract_state``'s shardings, and the data iterator's position.

        Returns:
          ``(state, data_restored)``; ``data_restored`` is False when the checkpoint was written by another
          number of processes, whose iterator positions do not apply here (``data_iterator`` is then untouched).
        """
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        data_restored = meta["process_count"] == jax.process_count()
        if data_restored:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        else:
            logger.warning(
                "Checkpoint %d was written by %d processes, this run has %d: the data iterator starts afresh.",
                step,
                meta["process_count"],
                jax.process_count(),
            )
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored.state, data_restored

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.close()


class PreemptionWatcher:
    """Notices a preemption notice (SIGTERM) so that the training loop can save and stop.

    A single process installs its own SIGTERM handler while the watcher is entered. A multi-process job uses
    JAX's preemption service instead (`jax.distributed.initialize` installs it), which makes every process agree
    on the step to save at; `reached` must then be called by every process at every step.
    """

    def __init__(self) -> None:
        self._received = threading.Event()
        self._previous_handler: Any = None
        self._installed = False

    def __enter__(self) -> "PreemptionWatcher":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._installed = False

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        del signum, frame
        self._received.set()

    def reached(self, step: int) -> bool:
        """Whether to save at ``step`` and stop."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._received.is_set()


def config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as a JSON-compatible dict (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def find_checkpoint(path: str | os.PathLike) -> tuple[Path, int]:
    """Locates a checkpoint: a workdir or its ``checkpoints`` folder (the newest step), or a step folder.

    Returns:
      ``(checkpoints directory, step)``.

    Raises:
      FileNotFoundError: when ``path`` holds no complete checkpoint.
    """
    path = Path(path).absolute()
    if path.name.isdigit() and (path / "state").is_dir():
        return path.parent, int(path.name)
    for directory in (path / CHECKPOINT_SUBDIR, path):
        if directory.is_dir():
            steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir()]
            if steps:
                return directory, max(steps)
    raise FileNotFoundError(
        f"no checkpoint in {path}; expected a training workdir, its '{CHECKPOINT_SUBDIR}' folder, or a step "
        f"folder such as {path / CHECKPOINT_SUBDIR / '1000'}."
    )


@contextlib.contextmanager
def _reading_manager(directory: Path) -> Iterator[ocp.CheckpointManager]:
    """A manager of ``directory`` for restoring, closed on leaving the ``with`` block."""
    # Not read_only=True, which only adds warnings; a manager that never saves changes nothing on disk.
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    try:
        yield manager
    finally:
        manager.close()


def _restore_config(manager: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
    config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
    return ml_collections.ConfigDict(config)


def load_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """The training config stored in a checkpoint (workdir or step folder, as `find_checkpoint`)."""
    directory, step = find_checkpoint(path)
    with _reading_manager(directory) as manager:
        return _restore_config(manager, step)


def restore_model(path: str | os.PathLike) -> tuple[InvertibleRescaler, Any, ml_collections.ConfigDict]:
    """A trained model from a checkpoint, on the first local device, whatever device count wrote it.

    Args:
      path: a training workdir (its newest checkpoint is used) or one step folder ``<workdir>/checkpoints/<step>``.

    Returns:
      ``(model, params, config)``: the Flax module built from the stored config (with its compute dtype), its
      ``'params'`` collection, and the training config.

    Raises:
      FileNotFoundError: when ``path`` holds no checkpoint.
    """
    directory, step = find_checkpoint(path)
    with _reading_manager(directory) as manager:
        config = _restore_config(manager, step)
        model = model_from_config(config)
        target = abstract_train_state(
            model, optimizer_from_config(config), jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        )
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
    logger.info("Restored %s x%d from %s, step %d.", config.model.name, config.model.scale, directory, step)
    return model, state.params, config


def restore_params(path: str | os.PathLike) -> Any:
    """The ``'params'`` collection of a checkpoint (see `restore_model`)."""
    return restore_model(path)[1]
