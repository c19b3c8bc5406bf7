"""IRRM-S x2 (our reconstruction, under 0.5M parameters) with IRN's training recipe.

Recipe (spec 3.6, 3.7): DIV2K's 800 training images, 144x144 HR patches, batch 16, Adam 2e-4 halved at 100k,
200k, 300k and 400k of 500k steps, coupled L2 1e-5, gradient clipping 10, lambda_fit = 4, lambda_rec = 1,
lambda_ce = 1. No published numbers.

Command (``root`` holds ``DIV2K_train_HR/`` and ``Set5/HR/``)::

    python train.py --config configs/irrm_s_x2.py --workdir runs/irrm_s_x2 --config.data.root /data/sr

Expected time: not measured yet.
Expected PSNR (Set5 validation, Y): not measured yet.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """irrm_s x2 with IRN's recipe."""
    config = default.get_config()
    config.model.name = "irrm_s"
    config.model.scale = 2
    config.loss.lambda_fit = 4.0  # scale**2
    return config
