"""Training configs: Python files whose ``get_config()`` returns an ``ml_collections.ConfigDict``.

``default.py`` documents every field; each variant imports it and changes only what differs. Use them through
``python train.py --config configs/<file>.py --workdir DIR`` (with ``--config.<field>=<value>`` overrides).
"""
