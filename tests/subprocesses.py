"""Starting Python subprocesses for multi-device and multi-process tests, with a timeout on each.

The fake CPU device count (``--xla_force_host_platform_device_count``) must be set before JAX starts, so tests
that need several devices or processes run a script in fresh interpreters.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def start_python(script: Path | str, *args: object, devices: int | None = None) -> subprocess.Popen:
    """Runs ``python script *args`` on the CPU from the repository root; ``devices`` fakes that many devices."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_ok(process: subprocess.Popen, timeout: float) -> str:
    """The process's output once it exits with status 0; fails the test on a non-zero status or a timeout."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"subprocess timed out after {timeout} s:\n{output[-3000:]}")
    assert process.returncode == 0, f"subprocess failed ({process.returncode}):\n{output[-3000:]}"
    return output
