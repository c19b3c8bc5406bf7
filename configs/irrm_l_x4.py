"""IRRM-L x4 (our reconstruction, about 60% of IRN's parameters) with IRN's training recipe.

Recipe (spec 3.6, 3.7): DIV2K's 800 training images, 144x144 HR patches, batch 16, Adam 2e-4 halved at 100k,
200k, 300k and 400k of 500k steps, coupled L2 1e-5, gradient clipping 10, lambda_fit = 16, lambda_rec = 1,
lambda_ce = 1. The paper claims at least IRN + 0.3 dB (datasets not named).

Command (``root`` holds ``DIV2K_train_HR/`` and ``Set5/HR/``)::

    python train.py --config configs/irrm_l_x4.py --workdir runs/irrm_l_x4 --config.data.root /data/sr

Expected time: not measured yet.
Expected PSNR (Set5 validation, Y): not measured yet.

Results row (README, Results: the same model on the 291-image set for 3,000 steps, configs/results.py)::

    python train.py --config configs/results.py:irrm_l_x4 --workdir runs/results/irrm_l_x4 \
        --config.data.root ../shared/data

    python eval.py --checkpoint runs/results/irrm_l_x4 --datasets set5 set14 bsd100 --data-root ../shared/data \
        --temperatures 0 1 --draws 5 --out runs/results/irrm_l_x4/eval

Measured on one H200 (float32/TF32, channels padded to 8): 5.8 GPU minutes (two device calls: stopped by SIGTERM at
step 2,180 and resumed), 262 HR patches/s (median; the host was shared with other runs); validation PSNR-Y
27.75 dB (Set5 centre 128x128 crops, one z ~ N(0, I) draw), LR vs bicubic 34.20 dB. eval.py, z ~ N(0, I), mean
of 5 draws: Set5 / Set14 / BSD100 PSNR-Y 26.52 / 24.57 / 25.30 dB.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """irrm_l x4 with IRN's recipe."""
    config = default.get_config()
    config.model.name = "irrm_l"
    config.model.scale = 4
    config.loss.lambda_fit = 16.0  # scale**2
    return config
