"""The Gaussian kernel maps Φ_φ of SPEC §2, checked independently.

``act.kernel(a, b, c)`` is E[φ(h) φ(h')] for (h, h') ~ N(0, [[a, c], [c, b]]). Each closed form
(Linear, Erf, ReLU) is compared with Gauss–Hermite quadrature of the same φ
(`fj.Quadrature`), with plain NumPy Monte Carlo, and with itself under a ↔ b; derivatives are
checked on the boundary c = ±√(ab) of the domain, where the ReLU formula has a square-root
singularity in its naive derivative. Every kernel is evaluated once on one array of test points,
so each Quadrature rule is compiled once.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf as np_erf

import fls_jax as fj


def _relu(h):
    return jnp.maximum(h, 0.0)


# (a, b, c): generic pairs, c close to ±√(ab), ρ = 0, and the boundary cases a = b = c (ρ = 1)
# and c = −√(ab) (ρ = −1). Variances stay ≤ 2: Gauss–Hermite for erf(√a z) converges more
# slowly as a grows (measured at a = b = 3, ρ = −1: error 5e-5 at order 40, 1e-6 at order 60).
POINTS = np.array(
    [
        (1.0, 1.0, 1.0),
        (0.5, 0.5, 0.5),
        (1.0, 2.0, 0.3),
        (0.5, 2.0, -0.9),
        (2.0, 0.7, 0.999 * np.sqrt(1.4)),
        (1.5, 0.8, -0.999 * np.sqrt(1.2)),
        (0.3, 0.3, 0.0),
        (0.8, 0.8, -0.8),
    ]
)
A, B, C = POINTS.T
SCALE = np.sqrt(A * B)  # the natural size of every kernel here: |Φ| ≤ √(ab) for these φ

CLOSED = {"linear": fj.Linear(), "erf": fj.Erf(), "relu": fj.ReLU()}
JAX_PHI = {"linear": lambda h: h, "erf": jax.scipy.special.erf, "relu": _relu}
NP_PHI = {"linear": lambda h: h, "erf": np_erf, "relu": lambda h: np.maximum(h, 0.0)}

# Quadrature order and absolute tolerance (in units of √(ab)) for each φ, from measurement:
# - linear: φ(h)φ(h') is a degree-2 polynomial, exact for any order ≥ 2 (error ~1e-15).
# - erf: smooth, exponential convergence; worst case at order 60 on POINTS is 1.7e-10
#   (a = 2, ρ = 0.999); at order 80 it is 2e-13.
# - relu: the kink at 0 makes Gauss–Hermite converge only like 1/order; at order 80 the worst
#   error is 1.65e-3 √(ab) (at ρ = 0, i.e. 1 % of the value there), so 2.5e-3 √(ab).
QUAD = {"linear": (40, 1e-12), "erf": (60, 1e-9), "relu": (80, 2.5e-3)}


def _closed(kind):
    return np.asarray(CLOSED[kind].kernel(A, B, C))


def _quad(kind, order):
    return np.asarray(fj.Quadrature(JAX_PHI[kind], order=order).kernel(A, B, C))


@pytest.mark.parametrize("kind", ["linear", "erf", "relu"])
def test_closed_form_matches_quadrature(kind):
    order, tol = QUAD[kind]
    np.testing.assert_array_less(np.abs(_quad(kind, order) - _closed(kind)), tol * SCALE)


def test_relu_quadrature_error_is_discretisation():
    # The ReLU gap above is quadrature error, not a wrong formula: it shrinks with the order
    # (≈ 1/order at ρ = 0: 3.3e-3 √(ab) at order 40, 8e-4 at order 160).
    exact = _closed("relu")
    err40 = np.abs(_quad("relu", 40) - exact)
    err160 = np.abs(_quad("relu", 160) - exact)
    i = np.flatnonzero(C == 0.0)
    assert np.all(err160[i] < err40[i] / 3)


def _np_cos_kernel(a, b, c):
    return np.exp(-(a + b) / 2) * np.cosh(c)


def _np_sin_kernel(a, b, c):
    return np.exp(-(a + b) / 2) * np.sinh(c)


@pytest.mark.parametrize(
    "fn, exact",
    [(jnp.cos, _np_cos_kernel), (jnp.sin, _np_sin_kernel)],
    ids=["cos (not odd)", "sin"],
)
def test_quadrature_against_textbook_kernels(fn, exact):
    # E[cos h cos h'] = e^{−(a+b)/2} cosh c and E[sin h sin h'] = e^{−(a+b)/2} sinh c:
    # Quadrature checked against references that share no code with fls_jax.
    got = np.asarray(fj.Quadrature(fn, order=40).kernel(A, B, C))
    np.testing.assert_allclose(got, exact(A, B, C), rtol=0, atol=1e-12)


def _monte_carlo(phi, a, b, c, n_samples, rng):
    """Sample mean and its standard error of φ(h)φ(h') with (h, h') ~ N(0, [[a, c], [c, b]])."""
    z1, z2 = rng.standard_normal((2, n_samples))
    h = np.sqrt(a) * z1
    h2 = (c / np.sqrt(a)) * z1 + np.sqrt(max(b - c**2 / a, 0.0)) * z2
    prod = phi(h) * phi(h2)
    return prod.mean(), prod.std(ddof=1) / np.sqrt(n_samples)


@pytest.mark.parametrize("kind", ["linear", "erf", "relu"])
def test_closed_form_matches_monte_carlo(kind):
    rng = np.random.default_rng(20240601)
    closed = _closed(kind)
    for i, (a, b, c) in enumerate(POINTS):
        mean, se = _monte_carlo(NP_PHI[kind], a, b, c, 400_000, rng)
        # (+ 1e-15: at ρ = −1 the ReLU product is identically 0, so mean = se = 0.)
        assert abs(mean - closed[i]) <= 5 * se + 1e-15, (kind, (a, b, c), mean, closed[i], se)


@pytest.mark.parametrize(
    "act",
    [fj.Linear(), fj.Erf(), fj.ReLU()],
    ids=lambda act: type(act).__name__,
)
def test_closed_forms_symmetric(act):
    # Bit-for-bit: a and b enter the closed forms only through commutative products.
    np.testing.assert_array_equal(act.kernel(A, B, C), act.kernel(B, A, C))


def test_quadrature_symmetric():
    # The rule integrates over h first, then h' | h, so a ↔ b changes the nodes: symmetric to
    # the quadrature error (measured 2e-11 for erf at order 60), not bit for bit.
    act = fj.Quadrature(jax.scipy.special.erf, order=60)
    np.testing.assert_allclose(act.kernel(A, B, C), act.kernel(B, A, C), rtol=0, atol=1e-9)


# Boundary points c = ρ√(ab) with ρ = ±1, a = b (the train-kernel diagonal) and a ≠ b.
# a = 1 and a = 0.25 make c/√(ab) round to exactly 1; a = 0.7 lands one ulp below.
DIAGONAL = [(1.0, 1.0), (0.7, 0.7), (0.25, 0.25), (0.5, 2.0)]


@pytest.mark.parametrize("a, b", DIAGONAL)
@pytest.mark.parametrize("rho", [1.0, -1.0])
def test_relu_gradient_on_boundary(a, b, rho):
    """∂Φ/∂c = (π − arccos ρ)/(2π): ½ at ρ = 1 and 0 at ρ = −1, finite where the naive
    derivative of √(1 − ρ²) is inf; ∂Φ/∂a = ∂Φ/∂b = 0 there (Price's theorem: E[δ(h) φ(h')])."""
    kernel = fj.ReLU().kernel
    c = rho * np.sqrt(a * b)
    ga, gb, gc = (float(g) for g in jax.grad(kernel, argnums=(0, 1, 2))(a, b, c))
    assert np.isfinite([ga, gb, gc]).all()
    assert gc == pytest.approx(0.5 if rho > 0 else 0.0, abs=1e-12)
    assert ga == pytest.approx(0.0, abs=1e-12)
    assert gb == pytest.approx(0.0, abs=1e-12)

    # Central difference just inside the domain: c = ρ√(ab)(1 − ε). The exact derivative there
    # differs from the boundary value by √(2ε)/(2π) ≈ 7e-6 for ε = 1e-9, well below the 1e-4
    # tolerance, and the step h = ε√(ab)/5 keeps both evaluations inside.
    eps = 1e-9
    inside = c * (1 - eps)
    h = eps * np.sqrt(a * b) / 5
    fd = (float(kernel(a, b, inside + h)) - float(kernel(a, b, inside - h))) / (2 * h)
    if rho > 0:
        assert fd == pytest.approx(gc, rel=1e-4)
    else:
        assert fd == pytest.approx(gc, abs=1e-4)


DIAG_T = np.array([1.0, 0.7, 0.25])
QUAD_DIAG = {
    "erf": (fj.Quadrature(jax.scipy.special.erf, order=60), fj.Erf()),
    "relu": (fj.Quadrature(_relu, order=80), fj.ReLU()),
}


@functools.cache
def _diagonal_grads(kind):
    """At (a, b, c) = (t, t, t) for t in DIAG_T: the quadrature's partials ∂_a, ∂_b, ∂_c (3×t),
    its derivative along the diagonal d/dt Φ(t, t, t), and the closed form's partials and
    diagonal derivative. One compiled gradient per kernel, vmapped over t."""

    def grads(act):
        partial = jax.jit(jax.vmap(jax.grad(act.kernel, argnums=(0, 1, 2))))(DIAG_T, DIAG_T, DIAG_T)
        along = jax.jit(jax.vmap(jax.grad(lambda t: act.kernel(t, t, t))))(DIAG_T)
        return np.array(partial), np.asarray(along)

    quad, closed = QUAD_DIAG[kind]
    return *grads(quad), *grads(closed)


@pytest.mark.parametrize("kind", ["erf", "relu"])
def test_quadrature_gradient_finite_on_diagonal(kind):
    partial, along, _, closed_along = _diagonal_grads(kind)
    assert np.isfinite(partial).all()
    # Along the diagonal (a, b, c) = (t, t, t), which is how the diagonal of a train kernel
    # moves with Σ, the derivative is d/dt E[φ(√t z)²]: compare with the closed form's.
    np.testing.assert_allclose(along, closed_along, rtol=1e-6)


@pytest.mark.parametrize("kind", ["erf", "relu"])
def test_quadrature_partial_derivatives_on_diagonal(kind):
    # Where c/√(ab) is exactly 1 (t = 1, 0.25) differentiating through the quadrature's ρ and
    # √(1−ρ²) halved ∂ρ and dropped a term; the Gaussian identities of `_pair` do not.
    partial, _, closed_partial, _ = _diagonal_grads(kind)
    np.testing.assert_allclose(partial, closed_partial, rtol=1e-6, atol=1e-9)


def test_quadrature_second_derivatives_match_the_closed_form():
    # The Hessian in (a, b, c) of Quadrature(erf) against the arcsine formula's, on the
    # diagonal (ρ = 1, as in a train kernel) and off it: what Newton steps and the warm-start
    # preconditioner differentiate.
    quad, closed = QUAD_DIAG["erf"]
    # Compiled: op by op, each operation of the Hessians was compiled on its own (5.7 s).
    got_at, want_at = (jax.jit(jax.hessian(k.kernel, argnums=(0, 1, 2))) for k in (quad, closed))
    for point in ((0.7, 0.7, 0.7), (0.9, 0.4, 0.3)):
        got, want = np.array(got_at(*point)), np.array(want_at(*point))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "act",
    [fj.ReLU(), fj.Quadrature(_relu, order=20)],
    ids=["ReLU", "Quadrature(relu)"],
)
def test_zero_variance(act):
    # h ≡ 0, so E[relu(h) relu(h')] = 0.
    assert float(act.kernel(0.0, 1.0, 0.0)) == 0.0


@pytest.mark.parametrize(
    "act",
    [fj.Erf(), fj.ReLU(), fj.Quadrature(jax.scipy.special.erf, order=20, odd=True)],
    ids=["Erf", "ReLU", "Quadrature(erf)"],
)
def test_zero_input_row_gives_the_limit_of_a_vanishing_one(act):
    # An all-zero input x (a zero variance a = xᵀΣx = 0) made ∂Φ/∂a infinite and the EoS NaN
    # for ReLU and Quadrature (∞ · ∂a/∂Σ with ∂a/∂Σ = x xᵀ = 0). The residual there must be
    # finite and equal the limit of a row shrinking to zero (x = 1e-9 v; Φ and its Σ-derivative
    # are continuous in x, with an O(|x|) difference).
    task = fj.datasets.single_index_teacher(n=12, n_test=4, d=3, seed=5)
    lam = jnp.asarray(3 / 1.3 * np.eye(3) + 0.2)
    net = fj.FCN(width=2.0, sigma_w2=1.3, sigma_a2=0.8, noise=0.02, activation=act)
    X = np.array(task.X)
    residual = {}
    for scale in (0.0, 1e-9):
        X[4] = scale * np.array(task.X[4])
        residual[scale] = np.asarray(fj.eos_residual(lam, net, jnp.asarray(X), task.Y))
    assert np.isfinite(residual[0.0]).all()
    np.testing.assert_allclose(residual[0.0], residual[1e-9], rtol=0, atol=1e-6)


class _NanToZero(fj.AbstractActivation):
    """erf, with a kernel that takes a NaN variance or covariance as 0: what a careless guard
    in Φ does (Quadrature's zero-variance guard did)."""

    odd = True

    def __call__(self, h):
        return jax.scipy.special.erf(h)

    def kernel(self, a, b, c):
        a, b, c = (jnp.where(jnp.isnan(v), 0.0, v) for v in (a, b, c))
        return fj.Erf().kernel(a, b, c)


@pytest.mark.parametrize("act", [fj.ReLU(), fj.Quadrature(_relu, order=20)])
def test_kernel_of_an_invalid_variance_is_nan(act):
    # A NaN or negative variance comes from a Σ that is not positive definite; Φ must not
    # make it finite (it did: 0, and a solve then converged outside the domain).
    assert np.isnan(act.kernel(jnp.nan, 1.0, 0.2))
    assert np.isnan(act.kernel(-1.0, 1.0, 0.2))
    assert np.isnan(act.kernel(1.0, 1.0, jnp.nan))


@pytest.mark.parametrize(
    "act",
    [
        fj.Erf(),
        fj.ReLU(),
        fj.Quadrature(jax.scipy.special.erf, order=20, odd=True),
        _NanToZero(),
    ],
    ids=["Erf", "ReLU", "Quadrature(erf)", "NaN-to-zero"],
)
def test_residual_is_nan_outside_the_positive_definite_cone(act):
    # The solvers' domain guard: at a precision that is not positive definite the EoS
    # residual is NaN, whatever the activation makes of NaN (`_NanToZero` launders it), for
    # one hidden layer and for a deeper layer's precision. A finite residual there was a
    # root that `solve` reported converged (Quadrature(erf): an eigenvalue −1.6e7 of Σ⁻¹).
    task = fj.datasets.single_index_teacher(n=12, n_test=4, d=3, seed=5)
    kw = dict(width=2.0, sigma_w2=1.3, sigma_a2=0.8, noise=0.02, activation=act)
    good, bad = jnp.eye(3), jnp.diag(jnp.array([1.0, -2.0, 3.0]))
    # Traced, as inside a root finder (a concrete one is refused: test_validation.py).
    shallow = jax.jit(lambda lam: fj.eos_residual(lam, fj.FCN(**kw), task.X, task.Y))(bad)
    assert np.isnan(np.asarray(shallow)).all()
    deep = fj.FCN(depth=2, **kw)
    # A precision shift Δ with Q^(1)⁻¹ + Δ not positive definite: −10⁶ I (Q^(1) ≈ O(1)).
    for R in fj.eos_residual((good, -1e6 * jnp.eye(12)), deep, task.X, task.Y):
        assert np.isnan(np.asarray(R)).all()
    # and finite at a positive-definite point, so the NaN above is the guard's
    for R in fj.eos_residual((good, jnp.zeros((12, 12))), deep, task.X, task.Y):
        assert np.isfinite(np.asarray(R)).all()


@pytest.mark.slow
def test_quadrature_solve_is_positive_definite_and_near_the_closed_form():
    # End to end: a solve with Quadrature(erf) must converge inside the domain and to the
    # closed-form Erf EoS' root up to the quadrature's error. Before the domain guard this
    # solve reported converged=True at a precision with eigenvalue −5·10⁶
    # (`benchmarks/quadrature_solve.py --n 64 --orders 20`).
    task = fj.datasets.single_index_teacher(n=64, n_test=4, d=16, seed=0)
    quad = fj.Quadrature(jax.scipy.special.erf, order=20, odd=True)
    net = fj.FCN(width=8.0, sigma_w2=1.0, sigma_a2=1.0, noise=0.01, activation=quad)
    sol = fj.solve(net, task.X, task.Y)
    assert bool(sol.converged)
    assert np.linalg.eigvalsh(np.asarray(sol.precision))[0] > 0
    # The closed form's residual there: 6.3e-3 relative (order 20), against 2.8 at the prior.
    closed = eqx.tree_at(lambda n: n.activation, net, fj.Erf())
    R = fj.eos_residual(sol.precision, closed, task.X, task.Y)
    assert np.linalg.norm(R) / np.linalg.norm(sol.precision) < 2e-2
