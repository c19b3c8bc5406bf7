"""IRRM-L x2 (our reconstruction, about 60% of IRN's parameters) with IRN's training recipe.

Recipe (spec 3.6, 3.7): DIV2K's 800 training images, 144x144 HR patches, batch 16, Adam 2e-4 halved at 100k,
200k, 300k and 400k of 500k steps, coupled L2 1e-5, gradient clipping 10, lambda_fit = 4, lambda_rec = 1,
lambda_ce = 1. The paper's only x2 number is 46.41 dB PSNR-Y on an unnamed set.

Command (``root`` holds ``DIV2K_train_HR/`` and ``Set5/HR/``)::

    python train.py --config configs/irrm_l_x2.py --workdir runs/irrm_l_x2 --config.data.root /data/sr

Expected time: not measured yet.
Expected PSNR (Set5 validation, Y): not measured yet.

Results row (README, Results: the same model on the 291-image set for 3,000 steps, configs/results.py)::

    python train.py --config configs/results.py:irrm_l_x2 --workdir runs/results/irrm_l_x2 \
        --config.data.root ../shared/data

    python eval.py --checkpoint runs/results/irrm_l_x2 --datasets set5 set14 bsd100 --data-root ../shared/data \
        --temperatures 0 1 --draws 5 --out runs/results/irrm_l_x2/eval

Measured on one H200 (float32/TF32, channels padded to 8): 2.4 GPU minutes, 540 HR patches/s
(median; the host was shared with other runs); validation PSNR-Y 28.93 dB (Set5 centre 128x128 crops, one z ~ N(0, I)
draw), LR vs bicubic 30.82 dB. eval.py, z ~ N(0, I), mean of 5 draws: Set5 / Set14 / BSD100 PSNR-Y
28.75 / 26.68 / 27.96 dB.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """irrm_l x2 with IRN's recipe."""
    config = default.get_config()
    config.model.name = "irrm_l"
    config.model.scale = 2
    config.loss.lambda_fit = 4.0  # scale**2
    return config
