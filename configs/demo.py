"""The one-command demo's config: a small IRRM-S x2 trained briefly on scikit-image's sample photographs.

`irrm_jax.demo` writes the training photographs into ``<results>/images/train`` and fills in ``data.train``;
by hand, pass the folder after a colon::

    python train.py --config configs/demo.py:results/demo/images/train --workdir runs/demo

Differences from IRN's recipe (configs/default.py), all for a run of minutes on a CPU: IRRM-S x2 with two
coupling blocks of width 16 (about 12k parameters), 48x48 patches, batch 8, a learning rate of 1e-3 halved at
60% and 85% of the steps, no validation during training (the demo evaluates afterwards), and the tfds cache of the
prepared images inside the results folder.

Expected time: about 3 minutes for the default 600 steps on 2 CPU cores (see docs/evaluation.md).
Expected PSNR-Y on the two held-out photographs (coffee, camera), z at T = 0: several dB above bicubic
(docs/evaluation.md has the measured table).
"""

import ml_collections

from configs import default

DEMO_STEPS = 600


def get_config(train_images: str = "") -> ml_collections.ConfigDict:
    """The demo config; ``train_images`` is the folder of training photographs (set by irrm_jax.demo)."""
    config = default.get_config()
    config.model.name = "irrm_s"
    config.model.scale = 2
    config.model.overrides.blocks_per_level = (4,)
    config.model.overrides.clamp = 2.0
    config.model.overrides.nf = 16
    config.loss.lambda_fit = 4.0  # scale**2
    config.data.train = train_images
    config.data.validation = ""
    config.data.patch_size = 32
    config.data.batch_size = 8
    config.data.in_memory = True
    config.optim.learning_rate = 1e-3
    config.optim.milestones = (int(0.6 * DEMO_STEPS), int(0.85 * DEMO_STEPS))
    config.train.num_steps = DEMO_STEPS
    config.train.log_every = 50
    config.train.eval_every = DEMO_STEPS
    config.train.checkpoint_every = DEMO_STEPS
    config.train.keep_checkpoints = 1
    return config


def set_steps(config: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
    """Sets the number of steps and scales the schedule (milestones at 60% and 85%) and checkpointing with it."""
    config.train.num_steps = steps
    config.optim.milestones = (max(1, int(0.6 * steps)), max(1, int(0.85 * steps)))
    config.train.eval_every = steps
    config.train.checkpoint_every = steps
    config.train.log_every = min(config.train.log_every, steps)
    return config
