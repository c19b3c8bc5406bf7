#!/usr/bin/env bash
# Trains and evaluates the README's results rows (configs/results.py) one after another, then prints the table.
#
#   bash scripts/results.sh DATA_ROOT [ROW ...]
#
# DATA_ROOT holds T91/HR, BSD200/HR, Set5/HR, Set14/HR and BSD100/HR (e.g. ../shared/data). Rows default to all
# six. Re-running resumes unfinished training and skips finished evaluations. Workdirs: runs/results/<row>.
# Two GPUs: one copy per GPU, e.g. CUDA_VISIBLE_DEVICES=1 bash scripts/results.sh ROOT irn_x2 irrm_l_x2.
# TRAIN_FLAGS and EVAL_FLAGS are appended to the train.py and eval.py command lines.
set -euo pipefail
root=${1:?usage: bash scripts/results.sh DATA_ROOT [ROW ...]}
shift
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(irn_x4 irrm_s_x4 irrm_m_x4 irrm_l_x4 irn_x2 irrm_l_x2)
py=${PYTHON:-.venv/bin/python}
mkdir -p runs/results
# Prepare the five datasets once; the lock keeps parallel copies of this script from preparing them together.
flock runs/results/.prepare.lock "$py" -c "import sys; from irrm_jax import datasets
for name in ('t91', 'bsd200', 'set5', 'set14', 'bsd100'): datasets.prepare(name, root=sys.argv[1])" "$root"
for row in "${rows[@]}"; do
  work=runs/results/$row
  # shellcheck disable=SC2086  # the flags are meant to split into words
  "$py" train.py --config "configs/results.py:$row" --workdir "$work" --config.data.root "$root" ${TRAIN_FLAGS:-}
  # shellcheck disable=SC2086
  [ -f "$work/eval/summary.json" ] || "$py" eval.py --checkpoint "$work" --datasets set5 set14 bsd100 \
    --data-root "$root" --temperatures 0 1 --draws 5 --out "$work/eval" --no-images ${EVAL_FLAGS:-}
done
"$py" scripts/results_table.py runs/results
