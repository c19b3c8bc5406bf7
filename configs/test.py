"""A tiny config that trains in seconds on a CPU: for tests and for trying the pipeline.

An IRRM-S x2 with one coupling block of width 8, 16x16 patches, batch 4, two steps on 8 generated
64x64 images, validation on 2 generated images. Command::

    JAX_PLATFORMS=cpu python train.py --config configs/test.py --workdir /tmp/irrm_test

Expected time: 10-20 s on 2 busy CPU cores, mostly start-up and compilation (measured).
Expected PSNR: meaningless (two steps).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """The tiny test config."""
    config = default.get_config()
    config.model.name = "irrm_s"
    config.model.scale = 2
    config.model.overrides.blocks_per_level = (1,)
    config.model.overrides.nf = 8
    config.loss.lambda_fit = 4.0
    config.data.train = "synthetic"
    config.data.validation = "synthetic"
    config.data.max_validation_images = 2
    config.data.patch_size = 16
    config.data.batch_size = 4
    config.data.synthetic_count = 8
    config.data.synthetic_size = 64
    config.train.num_steps = 2
    config.train.log_every = 1
    config.train.eval_every = 2
    config.train.checkpoint_every = 2
    config.train.keep_checkpoints = 2
    config.train.progress_bar = False
    return config
