"""Training metrics to TensorBoard event files (tensorboardX, no TensorFlow) and JSON lines.

Only the first process writes; other processes get a writer that does nothing. Each call of `write` appends one
line ``{"step": ..., "split": "train" | "validation", <name>: <value>, ...}`` to ``<workdir>/metrics.jsonl``
and one scalar per name, tagged ``<split>/<name>``, to the event files in ``<workdir>/tensorboard``;
`read_metrics` reads the lines back.
"""

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import jax

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"


def read_metrics(path: str | os.PathLike) -> dict[str, list[dict]]:
    """The records of a ``metrics.jsonl`` (or of the one in a workdir) by split, sorted by step.

    A resumed run may write a step again; the record written last is kept.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    by_split: dict[str, dict[int, dict]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_split.setdefault(record["split"], {})[record["step"]] = record
    return {split: sorted(records.values(), key=lambda r: r["step"]) for split, records in by_split.items()}


class MetricWriter:
    """Writes scalar metrics of a training run (on process 0 only).

    Args:
      workdir: the training workdir.
    """

    def __init__(self, workdir: str | os.PathLike):
        self._active = jax.process_index() == 0
        if self._active:
            from tensorboardX import SummaryWriter

            workdir = Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = (workdir / METRICS_FILE).open("a")
            self._tensorboard = SummaryWriter(logdir=str(workdir / TENSORBOARD_SUBDIR))

    def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
        """Records scalars of one step (non-finite values are written as null in JSON)."""
        if not self._active:
            return
        values = {name: float(value) for name, value in scalars.items()}
        record = {"step": int(step), "split": split}
        record.update({name: v if math.isfinite(v) else None for name, v in values.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._tensorboard.add_scalar(f"{split}/{name}", value, global_step=int(step))

    def close(self) -> None:
        """Flushes and closes the files."""
        if self._active:
            self._jsonl.close()
            self._tensorboard.close()
            self._active = False
