"""The training loop's optional jax.profiler trace (config.train.profile_steps)."""

import gzip
import json

import pytest

from configs import test as test_config
from irrm_jax.train import train_and_evaluate


@pytest.mark.timeout(300)
def test_profile_steps_writes_a_perfetto_trace_of_the_steps(tmp_path):
    config = test_config.get_config()
    config.data.validation = ""
    config.train.num_steps = 13
    config.train.profile_steps = 2
    train_and_evaluate(config, tmp_path)
    (trace,) = (tmp_path / "profile").glob("plugins/profile/*/perfetto_trace.json.gz")
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    # The traced window holds the jitted training step (`make_train_step`'s function is called "step") twice.
    assert sum(event.get("name") == "PjitFunction(step)" for event in events) >= 2


def test_no_profile_by_default(tmp_path):
    config = test_config.get_config()
    config.data.validation = ""
    train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "profile").exists()
