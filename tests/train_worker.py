"""Subprocess helper of tests/test_train.py: runs training on fake CPU devices and saves the parameters.

The multi-device tests launch it with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (which must be set
before JAX starts, hence a separate process), optionally as one of several `jax.distributed` processes:

    python tests/train_worker.py train --workdir DIR --steps 2 --out params.npz
    python tests/train_worker.py steps --steps 2 --out params.npz [--single-device-out p1.npz]
        [--train-workdir DIR] [--coordinator localhost:PORT --num-processes 2 --process-id 0] [--dense-pallas]

``train`` runs `train_and_evaluate` with configs/test.py. ``steps`` runs `make_train_step`, from random
non-zero parameters, on fixed global batches (the same for any device or process count) over a mesh of every
device, and with ``--single-device-out`` again over a mesh of one device; with ``--train-workdir`` it then also
runs `train_and_evaluate` there (one launch for both saves start-up time). Every step is blocked on (STACK.md:
XLA CPU all-reduce hazard). Process 0 writes the parameters, flattened to ``path/to/leaf`` keys.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import test as test_config  # noqa: E402
from irrm_jax import parallel, train, train_state  # noqa: E402
from irrm_jax.verify import random_nonzero_params  # noqa: E402


def flat_params(params) -> dict[str, np.ndarray]:
    """Parameters as {'operations_1/F/conv_in/kernel': array, ...}."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(str(k.key) for k in path): np.asarray(jax.device_get(leaf)) for path, leaf in leaves}


def fixed_batch(step: int, config) -> np.ndarray:
    """The global batch of a step: the same whatever the device or process count."""
    size, batch = config.data.patch_size, config.data.batch_size
    return np.random.default_rng(1000 + step).uniform(size=(batch, size, size, 3)).astype(np.float32)


def replicate(tree, mesh):
    """Host values (identical in every process) as arrays replicated over the mesh."""
    sharding = parallel.replicated(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i: np.asarray(x)[i]), tree)


def run_steps(config, mesh, steps: int):
    """Steps from random non-zero parameters: at Flax's initialisation many gradients are exactly zero or as
    small as Adam's eps, where the update's sign is decided by rounding; random weights make every gradient
    substantial, so that equality to 1e-5 is a meaningful check."""
    model = train_state.model_from_config(config)
    optimizer = train_state.optimizer_from_config(config)
    state = train_state.init_train_state(model, optimizer, config.train.seed)
    params = random_nonzero_params(state.params, seed=1, gain=0.5)
    state = replicate(state.replace(params=params, opt_state=optimizer.init(params)), mesh)
    step_fn = train.make_train_step(
        model,
        optimizer,
        train_state.schedule_from_config(config),
        train_state.loss_config_from_config(config),
        mesh,
    )
    rows = config.data.batch_size // jax.process_count()
    first = jax.process_index() * rows
    for step in range(steps):
        local = fixed_batch(step, config)[first : first + rows]
        hr = jax.make_array_from_process_local_data(parallel.batch_sharded(mesh), local)
        state, metrics = step_fn(state, hr)
        jax.block_until_ready(metrics)
    params = jax.tree.map(lambda a: a.addressable_data(0), state.params)
    return flat_params(params)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "steps"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workdir")
    parser.add_argument("--single-device-out")
    parser.add_argument("--train-workdir")
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--dense-pallas", action="store_true", help="a one-coupling IRN x2 with Pallas DenseBlocks")
    args = parser.parse_args()
    if args.coordinator:
        parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    config = test_config.get_config()
    config.train.num_steps = args.steps
    if args.dense_pallas:
        config.model.name, config.model.dense_pallas, config.model.overrides.nf = "irn", True, 16
    if args.mode == "train":
        state = train.train_and_evaluate(config, args.workdir)
        params = flat_params(jax.tree.map(lambda a: a.addressable_data(0), state.params))
    else:
        params = run_steps(config, parallel.make_data_mesh(), args.steps)
        if args.single_device_out:
            single = run_steps(config, parallel.make_data_mesh(jax.devices()[:1]), args.steps)
            np.savez(args.single_device_out, **single)
        if args.train_workdir:
            train.train_and_evaluate(config, args.train_workdir)
    if jax.process_index() == 0:
        np.savez(args.out, **params)
    print(f"worker done: process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices")


if __name__ == "__main__":
    main()
