#!/usr/bin/env bash
# Trains and evaluates the README's results rows (configs/results.py) one after another, then prints the table.
#
#   bash scripts/results.sh DATA_ROOT [ROW ...]
#
# DATA_ROOT holds T91/HR, BSD200/HR, Set5/HR, Set14/HR and BSD100/HR (e.g. ../shared/data). Rows default to all
# six. Re-running resumes unfinished training and skips finished evaluations. Workdirs: runs/results/<row>.
set -euo pipefail
root=${1:?usage: bash scripts/results.sh DATA_ROOT [ROW ...]}
shift
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(irn_x4 irrm_s_x4 irrm_m_x4 irrm_l_x4 irn_x2 irrm_l_x2)
py=${PYTHON:-.venv/bin/python}
for row in "${rows[@]}"; do
  work=runs/results/$row
  "$py" train.py --config "configs/results.py:$row" --workdir "$work" --config.data.root "$root"
  [ -f "$work/eval/summary.json" ] || "$py" eval.py --checkpoint "$work" --datasets set5 set14 bsd100 \
    --data-root "$root" --temperatures 0 1 --draws 5 --out "$work/eval" --no-images
done
"$py" scripts/results_table.py runs/results
