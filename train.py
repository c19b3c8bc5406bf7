"""Trains an IRN or IRRM model: a thin command line over `irrm_jax.train.train_and_evaluate`.

    python train.py --config configs/irrm_m_x4.py --workdir runs/irrm_m_x4 [--config.data.root /data/sr]

Any config field can be overridden (``--config.train.num_steps=1000``). Multi-host jobs (TPU pods, several GPU
hosts) add ``--distributed`` on every host (see docs/training.md). Re-running the same command resumes from the
newest checkpoint in the workdir.
"""

import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from irrm_jax.parallel import initialize_distributed
from irrm_jax.train import train_and_evaluate

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of checkpoints and metrics (shared by all hosts).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize (multi-host jobs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (auto-detected on TPU pods and SLURM).")
flags.DEFINE_integer("num_processes", None, "Number of processes (auto-detected on TPU pods and SLURM).")
flags.DEFINE_integer("process_id", None, "This process's index (auto-detected on TPU pods and SLURM).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # our progress at INFO, libraries' (orbax is chatty) at WARNING
        absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("irrm_jax").setLevel(logging.INFO)
    if FLAGS.distributed or FLAGS.coordinator_address:
        initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
