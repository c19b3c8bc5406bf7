"""IRN's optimiser against a hand-rolled PyTorch-style Adam with coupled L2, clipping and MultiStepLR."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from irrm_jax.optimizer import clip_by_global_norm, create_optimizer, global_norm, learning_rate_schedule


def torch_style_adam(params, grads_per_step, lr, milestones, gamma, b1, b2, eps, wd, clip):
    """torch.nn.utils.clip_grad_norm_ + torch.optim.Adam(weight_decay=wd) + MultiStepLR, written out."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(grads_per_step, start=1):
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
        factor = min(1.0, clip / norm)  # optax's form of clip_grad_norm_ (torch adds 1e-6 to the norm)
        rate = lr * gamma ** sum(t > ms for ms in milestones)  # scheduler stepped after each update
        for k in p:
            g = grads[k] * factor + wd * p[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            p[k] = p[k] - rate * m_hat / (np.sqrt(v_hat) + eps)
    return p


def test_chain_matches_hand_rolled_coupled_l2_adam():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
    # Step 1 and 3 have norms above the clip (clipping active), step 2 below.
    grads = [{k: (s * rng.normal(size=x.shape)).astype(np.float32) for k, x in params.items()} for s in (20, 0.1, 9)]
    hyper = dict(lr=1e-2, milestones=(2,), gamma=0.5, b1=0.9, b2=0.999, eps=1e-8, wd=0.1, clip=10.0)
    expected = torch_style_adam(params, grads, **hyper)

    tx = create_optimizer(
        learning_rate=hyper["lr"],
        milestones=hyper["milestones"],
        gamma=hyper["gamma"],
        b1=hyper["b1"],
        b2=hyper["b2"],
        eps=hyper["eps"],
        weight_decay=hyper["wd"],
        clip_norm=hyper["clip"],
    )
    p = {k: jnp.asarray(x) for k, x in params.items()}
    state = tx.init(p)
    for g in grads:
        updates, state = tx.update({k: jnp.asarray(x) for k, x in g.items()}, state, p)
        p = optax.apply_updates(p, updates)
    for k in params:
        np.testing.assert_allclose(p[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_global_norm_and_clipping_match_optax():
    rng = np.random.default_rng(1)
    tree = {"a": rng.normal(size=(3, 3, 5, 4)), "b": [rng.normal(size=(4,)), rng.normal(size=())]}
    expected = np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(tree)))
    tree = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
    assert float(global_norm(tree)) == pytest.approx(expected, rel=1e-6)
    assert float(global_norm(tree)) == pytest.approx(float(optax.tree.norm(tree)), rel=1e-6)
    # bfloat16 leaves are summed in float32.
    assert float(global_norm(jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree))) == pytest.approx(expected, rel=1e-2)
    for max_norm in (0.5 * expected, 2 * expected):  # clipped, then left alone
        ours, _ = clip_by_global_norm(max_norm).update(tree, None)
        theirs, _ = optax.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())
        chex.assert_trees_all_close(ours, theirs, rtol=1e-6)


def test_weight_decay_is_coupled_not_decoupled():
    # With a zero gradient, coupled L2 feeds wd * theta through Adam: the first update is -lr * sign(theta).
    tx = create_optimizer(learning_rate=1e-3, weight_decay=1e-5)
    p = {"w": jnp.array([2.0, -3.0])}
    updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(p), p)
    np.testing.assert_allclose(updates["w"], [-1e-3, 1e-3], rtol=1e-3)


def test_irn_schedule_values():
    schedule = learning_rate_schedule(2e-4, (100_000, 200_000, 300_000, 400_000), 0.5)
    counts = [0, 99_999, 100_000, 199_999, 200_000, 300_000, 400_000, 499_999]
    expected = [2e-4, 2e-4, 1e-4, 1e-4, 5e-5, 2.5e-5, 1.25e-5, 1.25e-5]
    for count, value in zip(counts, expected, strict=True):
        assert float(schedule(count)) == pytest.approx(value, rel=1e-6), count


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(gamma=1.5), "gamma"),
        (dict(milestones=(200, 100)), "milestones"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(clip_norm=0.0), "clip_norm"),
    ],
)
def test_invalid_optimizer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_optimizer(**kwargs)
