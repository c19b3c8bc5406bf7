"""The one-command demo's config: a small IRRM-S x2 trained for minutes on scikit-image's sample photographs.

`irrm_jax.demo` writes the training photographs into ``<results>/images/train`` and fills in ``data.train``; by
hand, pass the folder after a colon::

    python train.py --config configs/demo.py:results/demo/images/train --workdir runs/demo

Differences from IRN's recipe (configs/default.py), all for a run of a few minutes on a CPU: IRRM-S x2 cut to two
coupling blocks of width 16 (38k parameters), 48x48 HR patches, batch 8, 1,500 steps at a learning rate of
1e-3 halved at 60% and 85% of the steps, no validation during training (the demo evaluates afterwards), and the
tfds cache of the prepared photographs inside the results folder.

Expected time: about 2 minutes of training on 2 CPU cores (docs/evaluation.md has the measured run).
Expected PSNR-Y on the held-out coffee and camera photographs (docs/evaluation.md): about 3 dB above bicubic with
z = 0 (T = 0), far below it with z ~ N(0, I) (T = 1): two blocks with |log-scale| <= 1 cannot learn to ignore z in
minutes; the paper's recipe trains for 500k steps.
"""

import ml_collections

from configs import default

DEMO_STEPS = 1_500


def get_config(train_images: str = "") -> ml_collections.ConfigDict:
    """The demo config; ``train_images`` is the folder of training photographs (set by irrm_jax.demo)."""
    config = default.get_config()
    config.model.name = "irrm_s"
    config.model.scale = 2
    config.model.overrides.blocks_per_level = (2,)
    config.model.overrides.nf = 16
    config.loss.lambda_fit = 4.0  # scale**2
    config.data.train = train_images
    config.data.validation = ""
    config.data.patch_size = 48
    config.data.batch_size = 8
    config.data.in_memory = True
    config.optim.learning_rate = 1e-3
    config.train.log_every = 50
    config.train.keep_checkpoints = 1
    return set_steps(config, DEMO_STEPS)


def set_steps(config: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
    """Sets the number of steps and scales the schedule (milestones at 60% and 85%) and checkpointing with it."""
    config.train.num_steps = steps
    config.optim.milestones = tuple(sorted({max(1, int(0.6 * steps)), max(1, int(0.85 * steps))}))  # distinct
    config.train.eval_every = steps
    config.train.checkpoint_every = steps
    config.train.log_every = min(config.train.log_every, steps)
    return config
