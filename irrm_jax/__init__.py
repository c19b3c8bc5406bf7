"""irrm_jax: invertible image rescaling (IRN, IRRM) in JAX/Flax.

Start with `irrm_jax.models.build_model`; the README's layout table names the module of every concern. Importing
the package loads nothing else (the GPU machine and light installs need only the modules they use).
"""
