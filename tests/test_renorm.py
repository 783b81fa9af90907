"""Scalar kernel renormalisation (SPEC §5): `fls_jax.renormalise`.

The scale mixture is checked against linear networks drawn weight by weight from their prior
and weighted by their likelihood (importance sampling: no use of the mixture's derivation),
the saddle point against a closed form, and both against the GP at infinite width."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fls_jax as fj


NOISE = 0.25


@pytest.fixture(scope="module")
def tiny():
    """n = 3 > d = 2: the linear GP kernel is singular, which the mixture must not mind."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((3, 2))
    X_test = rng.standard_normal((4, 2))
    beta = 1.5 * rng.standard_normal(2)
    Y = X @ beta + np.sqrt(NOISE) * rng.standard_normal(3)
    return X, Y, X_test, X_test @ beta


def _network_draws(rng, widths, d, draws):
    """v = W_1ᵀ ⋯ W_Lᵀ a for `draws` linear FCNs sampled weight by weight from their prior
    (σ_w² = σ_a² = 1, standard scaling): f(x) = x · v."""
    z = rng.standard_normal((draws, widths[-1])) / np.sqrt(widths[-1])
    for fan_out, fan_in in zip(widths[:0:-1], widths[-2::-1], strict=True):
        W = rng.standard_normal((draws, fan_out, fan_in)) / np.sqrt(fan_in)
        z = np.einsum("nc,ncb->nb", z, W)
    W1 = rng.standard_normal((draws, widths[0], d)) / np.sqrt(d)
    return np.einsum("nc,ncd->nd", z, W1)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_mixture_is_the_posterior_of_sampled_linear_networks(tiny, depth):
    X, Y, X_test, _ = tiny
    C = 2  # the scale u is far from Gaussian here: Exp(1) for one hidden layer
    rng = np.random.default_rng(depth)
    v = _network_draws(rng, [C] * depth, X.shape[1], 400_000)
    f, f_test = v @ X.T, v @ X_test.T
    log_lik = -0.5 * np.sum((f - Y) ** 2, axis=1) / NOISE - 1.5 * np.log(2 * np.pi * NOISE)
    w = np.exp(log_lik - log_lik.max())
    w /= w.sum()

    def snis(h):  # self-normalised importance-sampling estimate and its standard error
        mean = w @ h
        return mean, np.sqrt(w**2 @ (h - mean) ** 2)

    mean, mean_se = snis(f_test)
    fit, _ = snis(f)
    var, var_se = snis((f_test - mean) ** 2)
    evidence = log_lik.max() + np.log(np.mean(np.exp(log_lik - log_lik.max())))
    evidence_se = (
        np.std(np.exp(log_lik - log_lik.max())) / np.sqrt(len(w)) / np.exp(evidence - log_lik.max())
    )

    r = fj.renormalise(fj.FCN(C, 1.0, 1.0, NOISE, fj.Linear(), depth=depth), X, Y, X_test)
    assert bool(r.converged)
    np.testing.assert_array_less(np.abs(r.mean[:, 0] - mean), 4.5 * mean_se)
    np.testing.assert_array_less(np.abs(r.variance - var), 4.5 * var_se)
    assert abs(float(r.log_evidence) - evidence) < 4.5 * evidence_se
    train = np.mean((fit - Y) ** 2)
    assert float(r.train_error) == pytest.approx(train, rel=0.05)
    # Far from the GP: the test has the power to see a wrong mixing law.
    gp = fj.renormalise(fj.FCN(np.inf, 1.0, 1.0, NOISE, fj.Linear(), depth=depth), X, Y, X_test)
    assert np.max(np.abs(gp.variance - var) / var_se) > 20


def test_infinite_width_is_the_gp(fcn_task):
    """An erf FCN at C = ∞ from `renormalise` equals the EoS solver's GP limit; at C = 10⁹
    it is within 10⁻⁶ of it (the large-shape branch of the Gamma factors and a tiny grid)."""
    t = fcn_task
    gp_net = fj.FCN(np.inf, 1.0, 1.0, 0.01, fj.Erf())
    ref = fj.predict(fj.solve(gp_net, t.X, t.Y), t.X_test, t.Y_test)
    for method in ("mixture", "saddle"):
        r = fj.renormalise(gp_net, t.X, t.Y, t.X_test, t.Y_test, method=method)
        assert bool(r.converged) and float(r.scale) == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(r.mean, ref.mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(r.variance, ref.variance, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(r.train_error, ref.train_error, rtol=1e-8)
        np.testing.assert_allclose(r.test_error, ref.test_error, rtol=1e-8)
    K_f = gp_net.output_kernel(gp_net.prior_covariance(t.X.shape[1]), t.X) + 0.01 * np.eye(32)
    np.testing.assert_allclose(r.log_evidence, -fj.gp_negative_log_evidence(K_f, t.Y), rtol=1e-10)
    wide = fj.renormalise(eqx.tree_at(lambda n: n.width, gp_net, 1e9), t.X, t.Y, t.X_test, t.Y_test)
    assert bool(wide.converged)
    np.testing.assert_allclose(wide.mean, ref.mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(wide.scale, 1.0, atol=1e-6)


@pytest.mark.parametrize("depth", [1, 2])
def test_saddle_closed_form(depth):
    """With orthonormal inputs K = I, and the saddle's u_l = 1 − g/k (all equal, t) solve a
    polynomial: k(1 − t)(U + σ²)² = ½ (n U (U + σ²) − ‖y‖² U) with U = t^L."""
    rng = np.random.default_rng(3)
    n, d, C = 8, 16, 6.0
    X = np.sqrt(d) * np.linalg.qr(rng.standard_normal((d, d)))[0][:n]
    Y = 2.0 * rng.standard_normal(n)  # larger than the prior's: the scale grows
    k, s2, yy = C / 2, NOISE, float(Y @ Y)
    t = np.polynomial.Polynomial([0, 1])
    U = t**depth
    poly = k * (1 - t) * (U + s2) ** 2 - 0.5 * (n * U * (U + s2) - yy * U)
    roots = [r.real for r in poly.roots() if abs(r.imag) < 1e-9 and r.real > 0]
    assert len(roots) == 1
    net = fj.FCN(C, 1.0, 1.0, NOISE, fj.Linear(), depth=depth)
    r = fj.renormalise(net, X, Y, X[:2], method="saddle")
    assert bool(r.converged)
    np.testing.assert_allclose(r.layer_scales, roots[0], rtol=1e-8)
    np.testing.assert_allclose(r.scale, roots[0] ** depth, rtol=1e-8)
    assert float(r.scale) > 1.5
    if depth == 1:  # the mixture sits about its mode; the Laplace evidence is close to its
        mix = fj.renormalise(net, X, Y, X[:2])
        assert abs(float(mix.scale) - float(r.scale)) < 0.25 * float(mix.scale_sd)
        assert abs(float(mix.log_evidence) - float(r.log_evidence)) < 0.05


def test_vmap_over_widths(tiny):
    X, Y, X_test, Y_test = tiny
    net = fj.FCN(2.0, 1.0, 1.0, NOISE, fj.Linear())
    widths = jnp.array([2.0, 8.0, jnp.inf])

    def at(C):
        return fj.renormalise(eqx.tree_at(lambda m: m.width, net, C), X, Y, X_test, Y_test)

    batched = jax.vmap(at)(widths)
    for j, C in enumerate(widths):
        one = at(C)
        np.testing.assert_allclose(batched.mean[j], one.mean, rtol=1e-10)
        np.testing.assert_allclose(batched.test_error[j], one.test_error, rtol=1e-10)
        assert bool(batched.converged[j]) and bool(one.converged)
