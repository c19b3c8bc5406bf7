"""IRRM-M x4 (our reconstruction, about a quarter of IRN's parameters) with IRN's training recipe.

Recipe (spec 3.6, 3.7): DIV2K's 800 training images, 144x144 HR patches, batch 16, Adam 2e-4 halved at 100k,
200k, 300k and 400k of 500k steps, coupled L2 1e-5, gradient clipping 10, lambda_fit = 16, lambda_rec = 1,
lambda_ce = 1. No published numbers.

Command (``root`` holds ``DIV2K_train_HR/`` and ``Set5/HR/``)::

    python train.py --config configs/irrm_m_x4.py --workdir runs/irrm_m_x4 --config.data.root /data/sr

Expected time: not measured for the full recipe. Measured on one H100 (float32/TF32): 32.7 ms per bare training
step (`python -m benchmarks.speed --models irrm_m_x4 --variants plain`); the training loop ran about 250 HR
patches/s (about 64 ms per step) in the 2,008-step run on T91 that README, Training describes: about 9 h for 500k
steps at that rate. On an H200 the first results run (channels unpadded) ran 38.8 ms per step (413 patches/s),
about 5.4 h for 500k steps.
Expected PSNR (Set5 validation, Y): not measured for the full recipe. The short run above (2,008 steps on T91's
74 large-enough images, Set5 centre 128x128 crops) reached 28.8 dB with z ~ N(0, I).

Results row (README, Results: the same model on the 291-image set for 3,000 steps, configs/results.py)::

    python train.py --config configs/results.py:irrm_m_x4 --workdir runs/results/irrm_m_x4 \
        --config.data.root ../shared/data

    python eval.py --checkpoint runs/results/irrm_m_x4 --datasets set5 set14 bsd100 --data-root ../shared/data \
        --temperatures 0 1 --draws 5 --out runs/results/irrm_m_x4/eval

Measured on one H200 (float32/TF32, channels padded to 8): 3.7 GPU minutes, 341 HR patches/s
(median; the host was shared with other runs); validation PSNR-Y 27.24 dB (Set5 centre 128x128 crops, one z ~ N(0, I)
draw), LR vs bicubic 33.42 dB. eval.py, z ~ N(0, I), mean of 5 draws: Set5 / Set14 / BSD100 PSNR-Y
26.55 / 24.62 / 25.19 dB.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """irrm_m x4 with IRN's recipe."""
    config = default.get_config()
    config.model.name = "irrm_m"
    config.model.scale = 4
    config.loss.lambda_fit = 16.0  # scale**2
    return config
