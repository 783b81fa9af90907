"""The first layer's mean as a slow variable (`weight_mean=True`; SPEC §3, "Non-odd
activations"): the ReLU kernel with a mean against quadrature, the solved mean against its
first-order closed form and against ∂F/∂μ = 0 by finite differences, the GP limit, and a vmap
over widths against a loop. Sampled networks: `benchmarks/relu_mean.py`."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import fls_jax as fj
from fls_jax._activation import _bivariate_normal


def _bvn_quad(h, k, rho):
    """Φ₂(h, k; ρ) = Φ(h)Φ(k) + ∫_0^ρ φ₂(h, k; t) dt by adaptive quadrature (|ρ| < 1)."""

    def density(t):
        return np.exp(-(h * h - 2 * t * h * k + k * k) / (2 * (1 - t * t))) / (
            2 * np.pi * np.sqrt(1 - t * t)
        )

    tail = integrate.quad(density, 0, rho, epsabs=1e-15, epsrel=1e-13, limit=200)[0]
    return stats.norm.cdf(h) * stats.norm.cdf(k) + tail


def _relu_pair_quad(a, b, c, m1, m2):
    """E[h⁺h'⁺] as ∫_0^∞ h N(h; m1, a) E[h'⁺ | h] dh, h' | h Gaussian (a smooth 1-d integral)."""
    s_cond = math.sqrt(b - c * c / a)

    def integrand(h):
        mu = m2 + c / a * (h - m1)
        plus = mu * stats.norm.cdf(mu / s_cond) + s_cond * stats.norm.pdf(mu / s_cond)
        return h * stats.norm.pdf(h, loc=m1, scale=math.sqrt(a)) * plus

    return integrate.quad(integrand, 0, np.inf, epsabs=1e-14, epsrel=1e-13, limit=200)[0]


def test_bivariate_normal_matches_quadrature():
    rng = np.random.default_rng(0)
    h, k = rng.normal(0, 1.5, (2, 40))
    k[::3] = h[::3] + 1e-3 * rng.normal(size=len(h[::3]))  # a boundary layer at |ρ| → 1
    rho = np.concatenate([rng.uniform(-0.49, 0.49, 13), rng.uniform(0.5, 0.999, 14)])
    rho = np.concatenate([rho, -rng.uniform(0.5, 0.999, 13)])
    # Compiled, not op by op: eagerly each of the function's operations (and of its
    # derivatives) was compiled on its own: 17.7 s of this test, alone on 2 cores.
    bvn = jax.jit(_bivariate_normal)
    got = np.asarray(bvn(jnp.asarray(h), jnp.asarray(k), jnp.asarray(rho)))
    ref = np.array([_bvn_quad(*x) for x in zip(h, k, rho, strict=True)])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-13)  # measured 1.6e-15
    # At |ρ| = 1 the limits: Φ(min(h, k)) and max(Φ(h) + Φ(k) − 1, 0).
    x = jnp.asarray([0.3, -1.2])
    np.testing.assert_allclose(bvn(x, x, jnp.ones(2)), stats.norm.cdf(x), atol=1e-15)
    np.testing.assert_allclose(bvn(x, -x, -jnp.ones(2)), 0.0, atol=1e-15)

    # Derivatives of every order at ties, h = k (ρ > 0) and h = −k (ρ < 0), where the high
    # branch's kinks meet (a zero mean puts every entry of a kernel there): central differences.
    def phi2(v):
        return _bivariate_normal(v[0], v[1], v[2])

    value, grad, hessian = jax.jit(phi2), jax.jit(jax.grad(phi2)), jax.jit(jax.hessian(phi2))
    for point in ([0.3, 0.3, 0.95], [0.0, 0.0, 0.97], [-0.4, 0.4, -0.96], [0.2, -0.1, 0.99]):
        x, eps = jnp.asarray(point), 1e-5
        steps = eps * jnp.eye(3)
        fd = np.array([(value(x + e) - value(x - e)) / (2 * eps) for e in steps])
        np.testing.assert_allclose(grad(x), fd, atol=1e-8)  # measured ≤ 9e-9
        fd2 = np.array([(grad(x + e) - grad(x - e)) / (2 * eps) for e in steps])
        np.testing.assert_allclose(hessian(x), fd2, atol=1e-5)  # measured ≤ 8e-7


def test_relu_kernel_with_mean_matches_quadrature():
    rng = np.random.default_rng(1)
    relu = fj.ReLU()
    for _ in range(30):
        a, b = rng.uniform(0.2, 2.0, 2)
        c = rng.uniform(-0.995, 0.995) * math.sqrt(a * b)
        m1, m2 = rng.normal(0, 1, 2)
        got = float(relu.kernel_with_mean(a, b, c, m1, m2))
        assert got == pytest.approx(_relu_pair_quad(a, b, c, m1, m2), rel=1e-11, abs=1e-13)
    # Zero mean: the arc-cosine kernel; the diagonal: E[(h⁺)²] = (m² + a)Φ(u) + m√a φ(u).
    for a, b, rho in ((1.0, 1.0, 0.3), (0.5, 2.0, -0.7), (2.0, 2.0, 0.999)):
        c = rho * math.sqrt(a * b)
        assert float(relu.kernel_with_mean(a, b, c, 0.0, 0.0)) == pytest.approx(
            float(relu.kernel(a, b, c)), abs=1e-15
        )
    a, m = 1.0, -0.8
    u = m / math.sqrt(a)
    diagonal = (m * m + a) * stats.norm.cdf(u) + m * math.sqrt(a) * stats.norm.pdf(u)
    assert float(relu.kernel_with_mean(a, a, a, m, m)) == pytest.approx(diagonal, rel=1e-14)
    assert float(fj.Linear().kernel_with_mean(1.0, 2.0, 0.5, 0.3, -2.0)) == pytest.approx(-0.1)
    assert not fj.Erf().supports_mean and fj.ReLU().supports_mean


def _relu_with_mean(v):
    return fj.ReLU().kernel_with_mean(*v)


# Compiled once for the three points below (op by op, each operation of the kernel and of its
# derivatives was compiled on its own: 8.7 s for the first point, alone on 2 cores).
_RELU_WITH_MEAN = tuple(
    jax.jit(g) for g in (_relu_with_mean, jax.grad(_relu_with_mean), jax.hessian(_relu_with_mean))
)


@pytest.mark.parametrize(
    "x", [(1.0, 0.8, 0.3, 0.2, -0.5), (0.6, 1.4, -0.7, -1.0, 0.4), (1.0, 1.2, 1.05, 0.3, 0.4)]
)
def test_relu_kernel_with_mean_derivatives_match_finite_differences(x):
    """First and second derivatives (Gaussian identities in a custom JVP) against central
    differences, the last point at ρ = 0.958."""
    f, grad, hessian = _RELU_WITH_MEAN
    x = jnp.asarray(x)
    eps = 1e-5
    steps = eps * jnp.eye(5)
    fd = np.array([(f(x + e) - f(x - e)) / (2 * eps) for e in steps])
    np.testing.assert_allclose(grad(x), fd, rtol=1e-7, atol=1e-9)
    fd2 = np.array([(grad(x + e) - grad(x - e)) / (2 * eps) for e in steps])
    np.testing.assert_allclose(hessian(x), fd2, rtol=1e-5, atol=1e-7)


def test_quadrature_kernel_with_mean_matches_its_closed_form():
    """`Quadrature` with a mean (Gauss–Hermite about the means, derivatives by Gaussian
    identities) for φ = cos, where E[cos h cos h'] = ½[cos(m − m') e^{−(a+b−2c)/2}
    + cos(m + m') e^{−(a+b+2c)/2}]: values, gradients and Hessians in (a, b, c, m, m'), on
    and off a kernel's diagonal (measured ≤ 3e-16)."""
    q = fj.Quadrature(jnp.cos, order=30)

    def closed(v):
        a, b, c, m1, m2 = v
        return 0.5 * (
            jnp.cos(m1 - m2) * jnp.exp(-(a + b - 2 * c) / 2)
            + jnp.cos(m1 + m2) * jnp.exp(-(a + b + 2 * c) / 2)
        )

    def quad(v):
        return q.kernel_with_mean(*v)

    points = jnp.asarray(
        [[1.0, 0.8, 0.3, 0.2, -0.5], [1.0, 1.0, 1.0, 0.3, 0.3], [0.5, 0.5, -0.5, 0.7, -0.7]]
    )

    def orders(g):  # value, gradient and Hessian at each point, in one program
        return jax.jit(jax.vmap(lambda x: (g(x), jax.grad(g)(x), jax.hessian(g)(x))))(points)

    for got, want in zip(orders(quad), orders(closed), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-13)
    assert fj.Quadrature(jnp.cos).supports_mean


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="kernel for a mean"):
        fj.FCN(8, 1.0, 1.0, 0.1, fj.Erf(), weight_mean=True)
    with pytest.raises(ValueError, match="one hidden layer"):
        fj.FCN(8, 1.0, 1.0, 0.1, fj.ReLU(), depth=2, weight_mean=True)
    with pytest.raises(ValueError, match="True or False"):
        fj.FCN(8, 1.0, 1.0, 0.1, fj.ReLU(), weight_mean=1)  # pyright: ignore[reportArgumentType]
    X = jnp.ones((3, 2))
    with pytest.raises(ValueError, match="weight_mean=True"):
        fj.free_energy(fj.FCN(8, 1.0, 1.0, 0.1, fj.ReLU()), jnp.eye(2), X, X[:, :1], mean=X[0])


@pytest.fixture(scope="module")
def relu_task():
    """A ReLU teacher (a mean and an even part: the case where the mean matters), n = 24."""
    task = fj.datasets.single_index_teacher(n=24, n_test=16, d=6, scale=1.0, seed=3)
    X, Xt = jnp.asarray(task.X), jnp.asarray(task.X_test)
    w = jnp.asarray(task.teacher)
    return X, jnp.maximum(0.0, 2 * X @ w)[:, None], Xt, jnp.maximum(0.0, 2 * Xt @ w)[:, None]


WIDTHS = (float("inf"), 1e4, 32.0)


@pytest.fixture(scope="module")
def solved(relu_task):
    X, Y, _, _ = relu_task
    sols = [fj.solve(fj.FCN(C, 1.0, 1.0, 0.05, fj.ReLU(), weight_mean=True), X, Y) for C in WIDTHS]
    assert all(bool(s.converged) for s in sols)
    return sols


def _arccos_kernel(X1, X2, sigma):
    """The ReLU NNGP kernel, written out (SPEC §2)."""
    n1 = np.sqrt(np.einsum("is,st,it->i", X1, sigma, X1))
    n2 = np.sqrt(np.einsum("is,st,it->i", X2, sigma, X2))
    cos = np.clip((X1 @ sigma @ X2.T) / np.outer(n1, n2), -1, 1)
    theta = np.arccos(cos)
    return np.outer(n1, n2) / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * cos)


def test_gp_limit_has_no_mean(relu_task, solved):
    X, Y, Xt, Yt = (np.asarray(v) for v in relu_task)
    sol = solved[0]
    assert np.all(np.asarray(sol.weight_mean) == 0)
    prior = np.eye(6) / 6
    K = _arccos_kernel(X, X, prior) + 0.05 * np.eye(len(X))
    mean = _arccos_kernel(Xt, X, prior) @ np.linalg.solve(K, Y)
    pred = fj.predict(sol, Xt, Yt)
    np.testing.assert_allclose(pred.mean, mean, rtol=1e-10, atol=1e-12)


def test_wide_mean_is_its_first_order_closed_form(relu_task, solved):
    """C = 10⁴: μ = −(1/C) Σ₀ ∂D/∂μ with ∂E[h⁺h'⁺]/∂m = √K'(1 + ρ)/(2√(2π)) at m = 0, i.e.
    μ₁ = (σ_a²/(2C√(2π))) Σ₀ Xᵀ[(A ∘ M) 1], M_αβ = √K_ββ (1 + ρ_αβ), A = TTᵀ − K_f⁻¹, all
    at the solved Σ: an O(1/C) relative gap (measured 0.4 % on the benchmark's task)."""
    X, Y, _, _ = (np.asarray(v) for v in relu_task)
    sol = solved[1]
    C, sigma = WIDTHS[1], np.asarray(sol.sigma)
    Kf = _arccos_kernel(X, X, sigma) + 0.05 * np.eye(len(X))
    Kinv = np.linalg.inv(Kf)
    T = Kinv @ Y
    A = T @ T.T - Kinv
    s = np.sqrt(np.einsum("is,st,it->i", X, sigma, X))
    rho = (X @ sigma @ X.T) / np.outer(s, s)
    M = s[None, :] * (1 + rho)
    mu1 = 1.0 / (2 * C * math.sqrt(2 * math.pi)) * (np.eye(6) / 6) @ X.T @ np.sum(A * M, axis=1)
    mu = np.asarray(sol.weight_mean)
    assert np.linalg.norm(mu1) > 1e-5  # the mean is not zero
    np.testing.assert_allclose(mu, mu1, rtol=0, atol=2e-2 * np.linalg.norm(mu1))


def test_narrow_solution_is_stationary(relu_task, solved):
    """C = 32: ∂F/∂μ = 0 and ∂F/∂Σ = 0 by central differences of the public free energy."""
    X, Y, _, _ = relu_task
    sol = solved[2]
    net = sol.network
    mu, sigma = sol.weight_mean, sol.sigma
    assert float(jnp.linalg.norm(mu)) > 0.05  # a large mean: feature learning at C = 32

    def F(s, m):
        return float(fj.free_energy(net, s, X, Y, mean=m))

    eps = 1e-5
    rng = np.random.default_rng(4)
    for _ in range(3):
        v = jnp.asarray(rng.normal(size=6))
        v = v / jnp.linalg.norm(v)
        dF = (F(sigma, mu + eps * v) - F(sigma, mu - eps * v)) / (2 * eps)
        scale = (F(sigma, mu + 0.1 * v) - F(sigma, mu)) / 0.1  # F's change off the root
        assert abs(dF) < 1e-4 * abs(scale)
        S = jnp.outer(v, v) * 0.01
        dF = (F(sigma + eps * S, mu) - F(sigma - eps * S, mu)) / (2 * eps)
        assert abs(dF) < 1e-5 * abs((F(sigma + 0.2 * S, mu) - F(sigma, mu)) / 0.2)
    # The zero-mean point is not stationary: its F is higher.
    assert F(sigma, 0 * mu) > F(sigma, mu) + 1e-3


@pytest.mark.slow
def test_sweep_equals_the_loop(relu_task, solved):
    X, Y, Xt, Yt = relu_task
    net = fj.FCN(1.0, 1.0, 1.0, 0.05, fj.ReLU(), weight_mean=True)
    sols, preds = fj.sweep(net, X, Y, jnp.asarray(WIDTHS), Xt, Yt, schedule="parallel")
    for i, sol in enumerate(solved):
        np.testing.assert_allclose(sols.weight_mean[i], sol.weight_mean, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(sols.sigma[i], sol.sigma, rtol=1e-8, atol=1e-12)
        pred = fj.predict(sol, Xt, Yt)
        np.testing.assert_allclose(preds.test_error[i], pred.test_error, rtol=1e-8)


@pytest.mark.slow
def test_quadrature_activation_solution_is_stationary(relu_task):
    """A softplus FCN (`Quadrature`) with its mean at C = 32: ∂F/∂μ = 0 by central
    differences of the public free energy, with a mean of norm ~0.16."""
    X, Y, _, _ = relu_task
    net = fj.FCN(32.0, 1.0, 1.0, 0.05, fj.Quadrature(jax.nn.softplus, order=12), weight_mean=True)
    sol = fj.solve(net, X, Y)
    assert bool(sol.converged)
    mu, sigma = sol.weight_mean, sol.sigma
    assert float(jnp.linalg.norm(mu)) > 0.05

    def F(m):
        return float(fj.free_energy(sol.network, sigma, X, Y, mean=m))

    v, eps = jnp.ones(6) / np.sqrt(6.0), 1e-5
    dF = (F(mu + eps * v) - F(mu - eps * v)) / (2 * eps)
    assert abs(dF) < 1e-4 * abs((F(mu + 0.1 * v) - F(mu)) / 0.1)  # measured 3e-6


@pytest.mark.slow
def test_gradients_match_finite_differences(relu_task):
    """Implicit gradients of the predicted test error (C = 32) with respect to σ², σ_w² and
    σ_a², against central differences: they need the EoS Jacobian, i.e. the kernel's second
    derivatives on the diagonal (NaN under the patch loop's `lax.scan` before the ReLU
    kernel's rule stopped calling custom JVPs)."""
    X, Y, Xt, Yt = relu_task

    def error(p):
        net = fj.FCN(32.0, p[0], p[1], p[2], fj.ReLU(), weight_mean=True)
        return fj.predict(fj.solve(net, X, Y), Xt, Yt).test_error

    # One compiled program for the gradient and the differences (eager calls compiled the
    # solve's parts one by one: 102 s against 75 s, one process, cold cache).
    value_and_grad = jax.jit(jax.value_and_grad(error))
    p = jnp.asarray([1.0, 1.0, 0.05])
    grad = value_and_grad(p)[1]
    eps = 1e-5
    fd = [
        (value_and_grad(p.at[i].add(eps))[0] - value_and_grad(p.at[i].add(-eps))[0]) / (2 * eps)
        for i in range(3)
    ]
    np.testing.assert_allclose(grad, fd, rtol=1e-6)
