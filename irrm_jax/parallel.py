"""Data parallelism: the device mesh, its shardings, and multi-host start-up.

Training is plain data parallelism over every device of every process: parameters and optimiser state are
replicated, the global batch is split over the mesh axis ``'data'``, and the jitted step's mean over the batch
makes XLA all-reduce the gradients (no ``pmap``). One process per host (TPU VM worker, GPU node) calls
:func:`initialize_distributed` before anything else touches JAX; a single process with several local devices
needs no initialisation.
"""

import logging

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from irrm_jax.input_pipeline import DATA_AXIS

logger = logging.getLogger(__name__)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins this process to a multi-process JAX job (`jax.distributed.initialize`).

    On TPU pods and SLURM/Open MPI clusters every argument may be None: JAX finds them itself. Elsewhere give
    all three (e.g. ``'10.0.0.1:1234'``, 2, 0 on the first of two GPU hosts).

    Raises:
      ValueError: when only some of the three arguments are given.
    """
    given = [a is not None for a in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            "give all of coordinator_address, num_processes and process_id, or none of them (auto-detection "
            f"on TPU pods and clusters); got {coordinator_address!r}, {num_processes!r}, {process_id!r}."
        )
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    logger.info(
        "Process %d of %d: %d local of %d devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def make_data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh ``('data',)`` over the given devices (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of parameters, optimiser state and metrics: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of a global batch: its leading axis split over ``'data'``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def stacked_batches_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of K stacked global batches (K, batch, ...): the batch axis split over ``'data'``."""
    return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))
