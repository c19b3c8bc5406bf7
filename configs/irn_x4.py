"""IRN x4 (4.36M parameters) with IRN's training recipe.

Recipe (spec 3.6, 3.7): DIV2K's 800 training images, 144x144 HR patches, batch 16, Adam 2e-4 halved at 100k,
200k, 300k and 400k of 500k steps, coupled L2 1e-5, gradient clipping 10, lambda_fit = 16, lambda_rec = 1,
lambda_ce = 1. Published (IRN README): Set5 36.19, Set14 32.67, BSD100 31.64 dB PSNR-Y.

Command (``root`` holds ``DIV2K_train_HR/`` and ``Set5/HR/``)::

    python train.py --config configs/irn_x4.py --workdir runs/irn_x4 --config.data.root /data/sr

Expected time: not measured yet.
Expected PSNR (Set5 validation, Y): not measured yet.

Results row (README, Results: the same model on the 291-image set for 3,000 steps, configs/results.py)::

    python train.py --config configs/results.py:irn_x4 --workdir runs/results/irn_x4 \
        --config.data.root ../shared/data

    python eval.py --checkpoint runs/results/irn_x4 --datasets set5 set14 bsd100 --data-root ../shared/data \
        --temperatures 0 1 --draws 5 --out runs/results/irn_x4/eval

Measured on one H200 (float32/TF32, channels padded to 8): 7.8 GPU minutes, 156 HR patches/s
(median; the host was shared with other runs); validation PSNR-Y 30.96 dB (Set5 centre 128x128 crops, one z ~ N(0, I)
draw), LR vs bicubic 35.30 dB. eval.py, z ~ N(0, I), mean of 5 draws: Set5 / Set14 / BSD100 PSNR-Y
29.91 / 27.23 / 27.19 dB.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """irn x4 with IRN's recipe."""
    config = default.get_config()
    config.model.name = "irn"
    config.model.scale = 4
    config.loss.lambda_fit = 16.0  # scale**2
    return config
