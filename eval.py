"""Evaluates a trained (or official IRN) rescaling model against bicubic; see `irrm_jax.evaluate` for the protocol.

Usage::

    python eval.py --checkpoint WORKDIR --datasets set5 set14 bsd100 --data-root ../shared/data --out results/
    python eval.py --checkpoint IRN_x4.pth --model irn --scale 4 --datasets /path/to/images --out results/
"""

import sys

from irrm_jax.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
