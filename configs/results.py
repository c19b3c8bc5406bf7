"""The README's results runs: every model trained the same way on the classic 291-image set.

The argument names the model, as a variant config (configs/<name>.py: model and loss weights)::

    python train.py --config configs/results.py:irrm_m_x4 --workdir runs/results/irrm_m_x4 \\
        --config.data.root ../shared/data
    python eval.py --checkpoint runs/results/irrm_m_x4 --datasets set5 set14 bsd100 \\
        --data-root ../shared/data --temperatures 0 1 --draws 5 --out runs/results/irrm_m_x4/eval

Recipe, identical for every row: IRN's recipe shortened to RESULTS_STEPS updates. T91 + BSD200 (291 images;
the 17 T91 images smaller than the patch are skipped), 144x144 HR patches, batch 16, Adam 2e-4 halved at 20, 40,
60 and 80% of the run (IRN's schedule shape), coupled L2 1e-5, clipping 10; validation on Set5's centre
128x128 crops every 500 steps. Measured time, patches/s and PSNR of each row: README, Results, and the
variant config's docstring.
"""

import importlib

import ml_collections

RESULTS_STEPS = 3_000
MODELS = ("irn_x2", "irn_x4", "irrm_s_x4", "irrm_m_x4", "irrm_l_x2", "irrm_l_x4")


def get_config(model: str = "irrm_m_x4") -> ml_collections.ConfigDict:
    """The results recipe for ``model`` (one of MODELS, or any configs/<name>.py variant)."""
    try:
        config = importlib.import_module(f"configs.{model}").get_config()
    except ModuleNotFoundError:
        raise ValueError(f"no config configs/{model}.py; the results rows are {', '.join(MODELS)}") from None
    config.data.train = "t91,bsd200"
    config.data.validation = "set5"
    config.data.validation_max_size = 128
    config.train.num_steps = RESULTS_STEPS
    config.optim.milestones = tuple(RESULTS_STEPS * k // 5 for k in range(1, 5))
    config.train.eval_every = 500
    config.train.checkpoint_every = 500
    return config
