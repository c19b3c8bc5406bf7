"""Every config file builds, and the results rows differ only in their model and loss weights."""

import importlib
from pathlib import Path

import pytest

from configs import results
from irrm_jax.train_state import model_from_config

CONFIG_NAMES = sorted(
    p.stem for p in (Path(__file__).parents[1] / "configs").glob("*.py") if p.stem not in ("__init__", "default")
)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_builds_its_model(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    assert model_from_config(config).scale == config.model.scale
    assert config.loss.lambda_fit == config.model.scale**2


def test_results_rows_share_data_schedule_and_steps():
    rows = {name: results.get_config(name) for name in results.MODELS}
    assert {(c.model.name, c.model.scale) for c in rows.values()} == {
        ("irn", 2),
        ("irn", 4),
        ("irrm_s", 4),
        ("irrm_m", 4),
        ("irrm_l", 2),
        ("irrm_l", 4),
    }
    shared = [(c.data.to_dict(), c.optim.to_dict(), c.train.to_dict()) for c in rows.values()]
    assert all(s == shared[0] for s in shared)
    config = rows["irn_x4"]
    assert config.data.train == "t91,bsd200" and (config.data.patch_size, config.data.batch_size) == (144, 16)
    assert (
        config.optim.milestones == (600, 1200, 1800, 2400) and config.train.num_steps == results.RESULTS_STEPS == 3000
    )


def test_results_names_the_valid_rows_for_an_unknown_model():
    with pytest.raises(ValueError, match="irn_x2, irn_x4"):
        results.get_config("irn_x3")
