"""The hand-written derivatives of the GP evidence against plain autodiff and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np

from fls_jax._free_energy import gp_negative_log_evidence


def _plain(K, Y):
    """The same quantity by jnp.linalg, differentiated by JAX's own rules."""
    n, m = Y.shape
    _, logdet = jnp.linalg.slogdet(K)
    return (
        0.5 * jnp.sum(Y * jnp.linalg.solve(K, Y))
        + 0.5 * m * logdet
        + 0.5 * n * m * jnp.log(2 * jnp.pi)
    )


def _problem(rng, n=7, m=2):
    B = rng.standard_normal((n, n))
    K = B @ B.T / n + 0.5 * np.eye(n)
    dK = rng.standard_normal((n, n))
    return (
        jnp.asarray(K),
        jnp.asarray(rng.standard_normal((n, m))),
        jnp.asarray(dK + dK.T),
        jnp.asarray(rng.standard_normal((n, m))),
    )


def test_value_and_gradient_match_plain_autodiff(rng):
    K, Y, _, _ = _problem(rng)
    np.testing.assert_allclose(gp_negative_log_evidence(K, Y), _plain(K, Y), rtol=1e-13)
    g1 = jax.jit(jax.grad(gp_negative_log_evidence, argnums=(0, 1)))(K, Y)
    g2 = jax.jit(jax.grad(_plain, argnums=(0, 1)))(K, Y)
    # jnp.linalg's gradient w.r.t. K is not symmetrised; compare on symmetric directions.
    np.testing.assert_allclose(g1[0], 0.5 * (g2[0] + g2[0].T), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(g1[1], g2[1], rtol=1e-11, atol=1e-12)


def test_hessian_vector_product_matches_finite_differences(rng):
    """The Newton Jacobian uses the JVP of the gradient: check it against central differences."""
    K, Y, dK, dY = _problem(rng)
    grad = jax.grad(gp_negative_log_evidence, argnums=(0, 1))
    _, (hK, hY) = jax.jvp(grad, (K, Y), (dK, dY))
    eps = 1e-5
    gp, gm = grad(K + eps * dK, Y + eps * dY), grad(K - eps * dK, Y - eps * dY)
    np.testing.assert_allclose(hK, (gp[0] - gm[0]) / (2 * eps), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(hY, (gp[1] - gm[1]) / (2 * eps), rtol=1e-7, atol=1e-8)
    _, (pK, pY) = jax.jvp(jax.grad(_plain, argnums=(0, 1)), (K, Y), (dK, dY))
    np.testing.assert_allclose(hK, 0.5 * (pK + pK.T), rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(hY, pY, rtol=1e-10, atol=1e-11)


def test_low_rank_data_term_equals_dense(rng, patch_task):
    """Linear φ with P·S < n: the Woodbury evaluation of D (value, gradient, Hessian-vector
    product in Σ) equals the dense Cholesky evaluation."""
    import fls_jax as fj
    from fls_jax._free_energy import data_term

    X, Y = jnp.asarray(patch_task.X), jnp.asarray(patch_task.Y)  # n = 32 > P·S = 12
    net = fj.PatchCNN(
        patch_size=4, width=8.0, sigma_w2=1.3, sigma_a2=0.8, noise=0.02, activation=fj.Linear()
    )
    assert net.linear_features(X) is not None

    def dense(sigma):
        K = net.output_kernel(sigma, X) + net.noise * jnp.eye(len(X))
        return gp_negative_log_evidence(K, Y)

    def low(sigma):
        return data_term(net, sigma, X, Y)

    B = rng.standard_normal((4, 4))
    sigma = jnp.asarray(B @ B.T / 4 + 0.3 * np.eye(4))
    V = rng.standard_normal((4, 4))
    V = jnp.asarray(V + V.T)

    @jax.jit  # one program: op by op, these derivatives cost ~300 small compilations
    def value_gradient_hvp(sigma, V):
        return [
            (f(sigma), jax.grad(f)(sigma), jax.jvp(jax.grad(f), (sigma,), (V,))[1])
            for f in (low, dense)
        ]

    (v_low, g_low, h_low), (v_dense, g_dense, h_dense) = value_gradient_hvp(sigma, V)
    np.testing.assert_allclose(v_low, v_dense, rtol=1e-12)
    np.testing.assert_allclose(g_low, g_dense, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(h_low, h_dense, rtol=1e-8, atol=1e-10)


def test_free_energy_at_the_prior_is_the_gp_limit_at_any_width(fcn_task):
    """KL(prior ‖ prior) = 0, so at Σ = Σ₀ (and K^(2) = Q^(1)) F is the GP limit's at every
    width: F multiplies the KL by C, and the first layer's KL, as two O(1) terms computed
    apart, left 4·10⁻⁴ (C = 10¹²) and 0.4 (10¹⁵) in F. A small step away gives
    (F − F_GP)/C = KL > 0 at every width. (The deeper layers' KL at a solved width:
    `tests/test_deep.py`, GP-limit test.)"""
    import equinox as eqx

    import fls_jax as fj
    from fls_jax._free_energy import _layer_map

    X, Y = jnp.asarray(fcn_task.X), jnp.asarray(fcn_task.Y)
    d = X.shape[1]
    for depth in (1, 2):
        net = fj.FCN(1.0, 1.0, 1.0, 0.01, fj.Erf(), depth=depth)
        sigma0 = net.prior_covariance(d)
        kernels = () if depth == 1 else (_layer_map(net, 1, X)(sigma0),)

        def F(C, sigma=sigma0, kernels=kernels, net=net):
            at = eqx.tree_at(lambda m: m.width, net, jnp.asarray(C))
            return float(fj.free_energy(at, sigma, X, Y, kernels))

        gp = F(np.inf)
        for C in (1e9, 1e12, 1e15):
            assert abs(F(C) - gp) < 1e-9 * abs(gp), (depth, C, F(C) - gp)
        # A small step from the prior: (F − F_GP)/C is the KL, O(step²), at every width.
        step = sigma0 @ (jnp.eye(d) + 1e-7 * jnp.diag(jnp.arange(d) - d / 2))
        moved = tuple(K + 1e-12 * jnp.mean(jnp.diag(K)) * jnp.eye(len(K)) for K in kernels)
        kl = [(F(C, step, moved) - F(np.inf, step, moved)) / C for C in (1e10, 1e13)]
        np.testing.assert_allclose(kl[0], kl[1], rtol=1e-3)
        assert kl[0] > 0
