"""Learning curves of the GP limit (SPEC §5): `fls_jax.learning_curve`.

Checked against the spectral formulas written out here in NumPy/SciPy (eigenvalues, a root
bracket for κ), against GP regression on training sets drawn from the pool (Monte Carlo: what
the theory predicts the average of), their n → 0 and n → ∞ limits, and finite differences."""

import decimal
from decimal import Decimal as Dec

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
from scipy.optimize import brentq

import fls_jax as fj


SW2, SA2, NOISE = 1.5, 1.0, 0.01
NS = np.array([4.0, 16.0, 64.0, 160.0])


def _net(noise=NOISE, sigma_w2=SW2):
    return fj.FCN(np.inf, sigma_w2, SA2, noise, fj.Erf())


def _arcsin_kernel(X, sigma_w2=SW2):
    """The erf FCN's NNGP kernel written out: σ_a² (2/π) arcsin(2xΣ₀x′/√((1+2xΣ₀x)(1+2x′Σ₀x′)))."""
    G = sigma_w2 / X.shape[1] * X @ X.T
    g = 1 + 2 * np.diag(G)
    return SA2 * 2 / np.pi * np.arcsin(2 * G / np.sqrt(np.outer(g, g)))


@pytest.fixture(scope="module")
def pool():
    """M = 400 inputs of a single-index erf teacher (d = 8): the data measure."""
    t = fj.datasets.single_index_teacher(n=400, n_test=1, d=8, scale=1.5, seed=4)
    return np.asarray(t.X), np.asarray(t.Y)


@pytest.fixture(scope="module")
def curves(pool):
    X, Y = pool
    return {
        m: fj.learning_curve(_net(), X, Y, NS, target_noise=0.02, method=m)
        for m in ("self_consistent", "equivalent_kernel")
    }


def test_equals_the_spectral_formulas(pool, curves):
    """κ from SciPy's brentq on the eigenvalues, then E_g summed over modes, written out."""
    X, Y = pool
    M = len(X)
    eta, U = np.linalg.eigh(_arcsin_kernel(X) / M)
    eta = np.maximum(eta, 0)
    a2 = (U.T @ Y[:, 0]) ** 2 / M
    for n, err, kap, gam in zip(
        NS,
        *(
            np.asarray(getattr(curves["self_consistent"], f))
            for f in ("test_error", "kappa", "gamma")
        ),
        strict=True,
    ):
        kappa = brentq(
            lambda k, n=n: k - NOISE - k * np.sum(eta / (n * eta + k)),
            NOISE,
            NOISE + eta.sum(),
            xtol=1e-15,
            rtol=1e-14,
        )
        gamma = np.sum(n * eta**2 / (n * eta + kappa) ** 2)
        expected = (np.sum(kappa**2 * a2 / (n * eta + kappa) ** 2) + gamma * 0.02) / (1 - gamma)
        np.testing.assert_allclose([kap, gam, err], [kappa, gamma, expected], rtol=1e-9)
    ek = curves["equivalent_kernel"]
    for n, err in zip(NS, np.asarray(ek.test_error), strict=True):
        gamma = np.sum(n * eta**2 / (n * eta + NOISE) ** 2)
        expected = np.sum(NOISE**2 * a2 / (n * eta + NOISE) ** 2) + gamma * 0.02
        np.testing.assert_allclose(err, expected, rtol=1e-9)
    np.testing.assert_allclose(
        np.sort(np.asarray(curves["self_consistent"].eigenvalues)), eta, rtol=1e-8, atol=1e-14
    )
    np.testing.assert_allclose(
        np.sum(np.asarray(curves["self_consistent"].target_power)), np.mean(Y**2), rtol=1e-10
    )


def test_limits(pool):
    """n → 0: nothing learned, E_g = the target's mean square (and κ = σ² + Σ η); n → ∞ at
    σ_ε² = 0: the two methods agree, E_g → 0."""
    X, Y = pool
    with pytest.warns(UserWarning, match="exceeds the pool"):  # the formula's limit
        lc = fj.learning_curve(_net(), X, Y, [1e-9, 1e7])
        ek = fj.learning_curve(_net(), X, Y, [1e-9, 1e7], method="equivalent_kernel")
    np.testing.assert_allclose(lc.test_error[0], np.mean(Y**2), rtol=1e-6)
    np.testing.assert_allclose(lc.kappa[0], NOISE + np.sum(lc.eigenvalues), rtol=1e-6)
    np.testing.assert_allclose(ek.test_error[0], np.mean(Y**2), rtol=1e-6)
    assert float(lc.test_error[1]) < 1e-3 * np.mean(Y**2)
    np.testing.assert_allclose(lc.test_error[1], ek.test_error[1], rtol=1e-2)


def _gp_regression_error(K, Y, n, draws, rng, target_noise):
    """GP regression (mean predictor) on n points drawn with replacement from the pool,
    evaluated on the whole pool against the noiseless target: mean and SE over draws."""
    M = len(Y)
    errs = []
    for _ in range(draws):
        idx = rng.integers(0, M, n)
        y = Y[idx] + np.sqrt(target_noise) * rng.standard_normal((n, 1))
        f = K[:, idx] @ np.linalg.solve(K[np.ix_(idx, idx)] + NOISE * np.eye(n), y)
        errs.append(np.mean((f - Y) ** 2))
    return np.mean(errs), np.std(errs) / np.sqrt(draws)


def test_against_gp_regression_on_drawn_training_sets(pool, curves):
    """What the theory predicts: the test error averaged over training sets drawn from the
    data measure. Measured (300 draws per n, Monte-Carlo SE 0.6–1.9 %): the self-consistent
    curve is 1.01 / 1.05 / 0.98 / 0.91× the average at n = 4 / 16 / 64 / 160; the equivalent
    kernel 0.26 / 0.48 / 0.53 / 0.53×. At n = 160 = 0.4 M the pool is finite: a test point is
    often a training point, which the theory does not count."""
    X, Y = pool
    K = _arcsin_kernel(X)
    rng = np.random.default_rng(0)
    sc = np.asarray(curves["self_consistent"].test_error)
    ek = np.asarray(curves["equivalent_kernel"].test_error)
    for i, n in enumerate(NS):
        mc, se = _gp_regression_error(K, Y, int(n), 300, rng, 0.02)
        tol = 0.1 if n <= 64 else 0.15
        assert abs(sc[i] / mc - 1) < tol + 4 * se / mc, (n, sc[i], mc, se)
        assert ek[i] < 0.7 * mc  # the equivalent kernel misses the renormalised ridge


@pytest.mark.parametrize(
    "kind, method",
    [("erf", "self_consistent"), ("erf", "equivalent_kernel"), ("linear", "self_consistent")],
)
def test_gradients_match_finite_differences(pool, kind, method):
    """jax.grad of E_g(n = 16) with respect to σ_w², σ², σ_ε², the pool's inputs and its
    targets (each along a random direction) against central differences. The linear kernel
    on M = 400 > d = 8 inputs has 392 zero eigenvalues: derivatives through eigenvectors
    would be undefined there."""
    X, Y = pool
    act = fj.Erf() if kind == "erf" else fj.Linear()
    rng = np.random.default_rng(1)
    VX, VY = rng.standard_normal(X.shape), rng.standard_normal(Y.shape)

    def err(params):
        sw2, noise, target_noise, tx, ty = params
        net = fj.FCN(np.inf, sw2, SA2, noise, act)
        curve = fj.learning_curve(
            net, X + tx * VX, Y + ty * VY, [16.0], target_noise=target_noise, method=method
        )
        return curve.test_error[0]

    p = jnp.array([SW2, NOISE, 0.02, 0.0, 0.0])
    g = np.asarray(jax.grad(err)(p))
    for i, h in enumerate([1e-5, 1e-7, 1e-5, 1e-6, 1e-6]):
        e = np.zeros(5)
        e[i] = h
        fd = (float(err(p + e)) - float(err(p - e))) / (2 * h)
        np.testing.assert_allclose(g[i], fd, rtol=1e-5, err_msg=str(i))


def test_vmap_over_hyperparameters_equals_loop(pool):
    X, Y = pool

    def err(noise):
        return fj.learning_curve(_net(noise), X, Y, NS).test_error

    noises = jnp.array([0.003, 0.01, 0.05])
    batched = np.asarray(jax.jit(jax.vmap(err))(noises))
    for k, s2 in enumerate(noises):
        np.testing.assert_allclose(batched[k], err(float(s2)), rtol=1e-10)


@pytest.fixture(scope="module")
def linear_pool():
    """M = 400 inputs (d = 16) of a linear teacher, targets ×3: a narrow linear FCN's kernel
    scale u moves far from 1 here (`docs/renormalisation.md`)."""
    t = fj.datasets.linear_patch_teacher(400, 1, patch_size=16, patches=1, seed=3)
    return np.asarray(t.X), 3 * np.asarray(t.Y)


def test_finite_width_against_the_exact_posterior_on_drawn_training_sets(linear_pool):
    """A linear FCN at C = 4: `fj.renormalise` (the exact posterior, tested against sampled
    networks in tests/test_renorm.py) on 30 training sets drawn per n, against the
    finite-width learning curve (the saddle point of the same action with training-set
    averages). Measured: u 2.4 % below the exact posterior's mean scale; the test error
    0.69× (n = 2d, near interpolation, where the GP's learning curve is off too) and 0.89×
    (n = 4d) the average; the GP's learning curve is 14–19× off.

    χ_proxy, the average of tᵀQ_f t/C with Q_f = uK at the curve's u, against that
    quadratic form computed directly on the same training sets (NNGP kernel
    σ_a²σ_w² XXᵀ/d written out): measured within 3·10⁻⁴ (7.66 and 7.68)."""
    X, Y = linear_pool
    ns = [32, 64]
    net = fj.FCN(4.0, 1.0, 1.0, 0.01, fj.Linear())
    lc = fj.learning_curve(net, X, Y, ns)
    gp = fj.learning_curve(fj.FCN(np.inf, 1.0, 1.0, 0.01, fj.Linear()), X, Y, ns)
    assert bool(jnp.all(lc.converged)) and bool(jnp.all(gp.converged))
    K, y = X @ X.T / X.shape[1], Y.reshape(-1)
    rng = np.random.default_rng(0)
    for i, n in enumerate(ns):
        runs, chis = [], []
        u_curve = float(lc.scale[i])
        for _ in range(30):
            idx = rng.integers(0, len(X), n)
            r = fj.renormalise(net, X[idx], Y[idx], X, Y)
            runs.append((float(r.test_error), float(r.scale)))
            Q = u_curve * K[np.ix_(idx, idx)]
            t = np.linalg.solve(Q + 0.01 * np.eye(n), y[idx])
            chis.append(t @ Q @ t / 4.0)
        err, u = np.mean(runs, axis=0)
        assert abs(u_curve / u - 1) < 0.05
        assert abs(float(lc.test_error[i]) / err - 1) < (0.4 if n == 32 else 0.2)
        assert abs(float(lc.chi_proxy[i]) / np.mean(chis) - 1) < 0.02
        assert float(gp.test_error[i]) > 10 * err  # the width matters here
        assert float(gp.scale[i]) == 1.0
        assert float(gp.chi_proxy[i]) == 0.0


def test_finite_width_curve_scales_with_the_readout_and_the_noise(linear_pool):
    """σ_a² → λσ_a², σ² → λσ², Y → √λ Y (the symmetry of `tests/test_solve.py`): the same
    scale u(n) and χ_proxy, E_g and κ ×λ. Measured (λ = 37): u identical, the rest to
    7·10⁻¹⁶; in a hand run with σ_ε² ×λ too, an FCN's and a PatchCNN's to 4·10⁻¹⁴."""
    X, Y = linear_pool
    lam, ns = 37.0, [32, 64]
    one = fj.learning_curve(fj.FCN(4.0, 1.0, 1.0, 0.01, fj.Linear()), X, Y, ns)
    net = fj.FCN(4.0, 1.0, lam, lam * 0.01, fj.Linear())
    other = fj.learning_curve(net, X, np.sqrt(lam) * Y, ns)
    assert bool(jnp.all(one.converged)) and bool(jnp.all(other.converged))
    np.testing.assert_allclose(other.scale, one.scale, rtol=1e-12)
    np.testing.assert_allclose(other.chi_proxy, one.chi_proxy, rtol=1e-12)
    np.testing.assert_allclose(other.test_error, lam * one.test_error, rtol=1e-12)
    np.testing.assert_allclose(other.kappa, lam * one.kappa, rtol=1e-12)


@pytest.mark.parametrize("width", [4.0, np.inf])
def test_finite_width_gradients_match_finite_differences(linear_pool, width):
    """At finite width u(n) moves with every hyper-parameter (implicit function theorem on
    the saddle point): jax.grad of E_g(n = 32) with respect to σ_w², σ², σ_ε², the width, σ_a²,
    and the pool's inputs and targets (along random directions) against central differences. The
    network is built inside the function, as under `jax.jit`, where its width is traced and
    the branch is chosen when the program runs; the jitted gradient equals the eager one."""
    X, Y = linear_pool
    rng = np.random.default_rng(7)
    # Y's direction scales the targets too: a random one alone lies almost wholly in the
    # linear kernel's null space, where E_g's derivative is ~10⁻⁷, so small that the
    # saddle's tolerance shows in the finite differences (1.5·10⁻⁵ relative).
    VX, VY = rng.standard_normal(X.shape), Y + rng.standard_normal(Y.shape)

    def err(params):
        sw2, noise, target_noise, C, tx, ty, sa2 = params
        net = fj.FCN(C, sw2, sa2, noise, fj.Linear())
        curve = fj.learning_curve(net, X + tx * VX, Y + ty * VY, [32.0], target_noise=target_noise)
        return curve.test_error[0]

    p = jnp.array([1.2, 0.01, 0.003, width, 0.0, 0.0, 0.8])
    g = np.asarray(jax.grad(err)(p))
    value_and_grad = jax.jit(jax.value_and_grad(err))  # the finite differences' values too
    np.testing.assert_allclose(value_and_grad(p)[1], g, rtol=1e-9)
    steps = [1e-5, 1e-7, 1e-7, 1e-4 * width, 1e-6, 1e-6, 1e-5]
    for i in range(7):
        if i == 3 and np.isinf(width):
            assert g[3] == 0.0
            continue
        e = np.zeros(7)
        e[i] = steps[i]
        fd = (float(value_and_grad(p + e)[0]) - float(value_and_grad(p - e)[0])) / (2 * steps[i])
        np.testing.assert_allclose(g[i], fd, rtol=1e-5, err_msg=str(i))


def test_mean_field_width_can_be_traced():
    """A mean-field network's finite-width curve under jax.jit (a traced width) equals the
    eager one (it was refused as if the width were infinite); at a traced width = inf it
    raises when the program runs (the mean-field GP limit is zero)."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 4))
    Y = X[:, 0]

    def curve(C):
        net = fj.FCN(C, 1.0, 1.0, 0.1, fj.Linear(), scaling="mean_field")
        return fj.learning_curve(net, X, Y, [4.0, 16.0]).test_error

    np.testing.assert_allclose(jax.jit(curve)(4.0), curve(4.0), rtol=1e-12)
    with pytest.raises(Exception, match="standard readout scaling"):
        jax.block_until_ready(jax.jit(curve)(jnp.inf))


def test_gradient_in_n_is_refused():
    """E_g's derivative in the training-set size is not written: asking for it is an error,
    not the zero it silently was."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 3))
    net = fj.FCN(jnp.inf, 1.0, 1.0, 0.1, fj.Erf())

    def error(n):
        return fj.learning_curve(net, X, X[:, 0], n).test_error[0]

    with pytest.raises(TypeError, match="not differentiable with respect to n"):
        jax.grad(error)(8.0)


def test_second_derivatives_are_exact_or_refused():
    """Derivatives in the kernel hold its eigenbasis fixed, and at finite width u's holds
    ∂_z H fixed: differentiated twice they came out wrong (d²E/dσ_w² 4.4× too small, and an
    asymmetric Hessian), so such second derivatives raise. At width inf those in Y and σ²,
    which leave the kernel alone, are exact: against central differences of jax.grad. With a
    matrix scale (two outputs, a PatchCNN), whose saddle's derivatives are first order too,
    they raise the same error."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 3))
    Y, dY = np.tanh(X[:, 0]), rng.standard_normal(30)

    def err(sw2, noise, t, width):
        act = fj.Erf() if np.isinf(width) else fj.Linear()
        net = fj.FCN(width, sw2, 1.0, noise, act)
        return fj.learning_curve(net, X, Y + t * dY, [8.0], target_noise=0.01).test_error[0]

    p = (1.5, 0.05, 0.0, np.inf)
    g_t = jax.grad(err, argnums=2)
    np.testing.assert_allclose(
        jax.grad(g_t, argnums=2)(*p),
        (g_t(1.5, 0.05, 1e-5, np.inf) - g_t(1.5, 0.05, -1e-5, np.inf)) / 2e-5,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        jax.grad(g_t, argnums=1)(*p),
        (g_t(1.5, 0.05 + 1e-6, 0.0, np.inf) - g_t(1.5, 0.05 - 1e-6, 0.0, np.inf)) / 2e-6,
        rtol=1e-6,
    )
    refused = "second derivatives of learning_curve"
    with pytest.raises(NotImplementedError, match=refused):
        jax.grad(jax.grad(err))(*p)
    with pytest.raises(NotImplementedError, match=refused):
        jax.hessian(err, argnums=(0, 1))(*p)
    with pytest.raises(NotImplementedError, match=refused):  # finite width: u's derivative
        jax.grad(jax.grad(err, argnums=1), argnums=1)(1.5, 0.05, 0.0, 4.0)

    # A matrix scale (two outputs; a PatchCNN's patches): raised inside JAX before stop 55
    # ("Linearization failed…", "scan got no values to scan over").
    def matrix_err(noise, patches):
        if patches:
            net = fj.PatchCNN(4.0, 1.5, 1.0, noise, fj.Linear(), patch_size=1)
            return fj.learning_curve(net, X, Y, [8.0]).test_error[0]
        net = fj.FCN(4.0, 1.5, 1.0, noise, fj.Linear())
        return fj.learning_curve(net, X, np.stack([Y, dY], 1), [8.0]).test_error[0]

    with pytest.raises(NotImplementedError, match=refused):
        jax.grad(jax.grad(matrix_err))(0.05, False)
    with pytest.raises(NotImplementedError, match=refused):
        jax.jacfwd(jax.grad(matrix_err))(0.05, True)


def test_nonfinite_pool_is_flagged_under_jit():
    """A NaN in X or Y under jax.jit, where it cannot be checked when called, fails the curve
    when the program runs: NaN values, converged False (it returned NaN values unflagged;
    later, until stop 72, it raised, which under vmap failed every element)."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 3))
    net = fj.FCN(jnp.inf, 1.0, 1.0, 0.1, fj.Erf())
    curve = jax.jit(
        lambda X, Y: (lambda c: (c.test_error, c.converged))(fj.learning_curve(net, X, Y, [8.0]))
    )
    error, ok = curve(X, X[:, 0])
    assert np.all(np.isfinite(error)) and np.all(ok)
    for bad in (
        (np.where(np.arange(30)[:, None] == 3, np.nan, X), X[:, 0]),
        (X, np.where(np.arange(30) == 5, np.inf, X[:, 0])),
    ):
        error, ok = curve(*bad)
        assert np.all(np.isnan(error)) and not np.any(ok)


@pytest.mark.slow
def test_overflowing_targets_are_flagged():
    """Targets ×10¹⁶⁰ overflow the target's power (y² > 10³⁰⁸): at width inf the curve was
    inf with nothing to say so, at finite width the saddle's search stopped in lineax on a
    non-finite input. Both now come back flagged, per size; the same curves at ×1 are not.
    So does a finite-width PatchCNN's (its matrix saddle's action is not finite)."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 4))
    patches = fj.PatchCNN(4.0, 1.0, 1.0, 0.1, fj.Linear(), patch_size=2)
    for net in [fj.FCN(w, 1.0, 1.0, 0.1, fj.Linear()) for w in (np.inf, 4.0)] + [patches]:
        assert bool(jnp.all(fj.learning_curve(net, X, X[:, 0], [4.0, 8.0]).converged))
        curve = fj.learning_curve(net, X, 1e160 * X[:, 0], [4.0, 8.0])
        assert not bool(jnp.any(curve.converged)), net


def _averaged_pull(eta, power, n, noise, z):
    """The data's pull g(z) on the finite-width curve's averaged action, written out in NumPy
    from the module docstring's averages (κ by brentq), with the direct difference
    yᵀ(K + λ)⁻¹y/n − training error/λ (accurate at this σ²)."""
    lam = noise * np.exp(-z)

    def excess(lk):
        return np.exp(lk) - lam - np.exp(lk) * np.sum(eta / (n * eta + np.exp(lk)))

    lo, hi = np.log(lam), np.log(lam + eta.sum())
    if excess(lo) >= 0 or excess(hi) <= 0:
        kappa = lam if excess(lo) >= 0 else lam + eta.sum()
    else:
        kappa = np.exp(brentq(excess, lo, hi, xtol=1e-14))
    a = n * eta + kappa
    gamma = np.sum(n * eta**2 / a**2)
    error = kappa**2 * np.sum(power / a**2) / (1 - gamma)
    train = (lam / kappa) ** 2 * error
    return 0.5 * (np.sum(n * eta / a) - np.exp(-z) * n * (np.sum(power / a) - train / lam))


def _averaged_minima(eta, power, n, noise, k, z):
    """The minima of the depth-1 averaged action S(z) = k(e^z − 1 − z) + ∫ g, z = log u:
    where its stationarity condition z − log(1 − g(z)/k) goes from − to + on the grid z,
    each refined by brentq. Returns the roots and S at each relative to the first, the
    integral of g by adaptive quadrature."""

    def gap(zz):
        g = _averaged_pull(eta, power, n, noise, zz)
        return zz - np.log(1 - g / k) if g < k else np.inf

    # On the grid at once: κ by bisection in log κ (κ − λ − κΣ η/(nη + κ) increases).
    lam = noise * np.exp(-z)
    lo, hi = np.log(lam), np.log(lam + eta.sum())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        kappa = np.exp(mid)
        below = kappa - lam - kappa * np.sum(eta / (n * eta + kappa[:, None]), axis=1) < 0
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    kappa = np.exp(0.5 * (lo + hi))
    a = n * eta + kappa[:, None]
    error = kappa**2 * np.sum(power / a**2, axis=1) / (1 - np.sum(n * eta**2 / a**2, axis=1))
    quad = np.sum(power / a, axis=1) - lam / kappa**2 * error
    g = 0.5 * (np.sum(n * eta / a, axis=1) - np.exp(-z) * n * quad)
    with np.errstate(invalid="ignore", divide="ignore"):
        gaps = np.where(g < k, z - np.log(1 - g / k), np.inf)
    where = np.flatnonzero(np.isfinite(gaps[:-1]) & (gaps[:-1] < 0) & (gaps[1:] >= 0))
    roots = np.array([brentq(gap, z[i], z[i + 1], xtol=1e-13) for i in where])
    actions = [
        k * (np.expm1(r) - np.expm1(roots[0]) - (r - roots[0]))
        + scipy.integrate.quad(
            lambda zz: _averaged_pull(eta, power, n, noise, zz),
            roots[0],
            r,
            epsabs=1e-12,
            limit=200,
        )[0]
        for r in roots
    ]
    return roots, np.array(actions)


def test_finite_width_action_with_two_minima_takes_the_lower():
    """A pool whose kernel operator is diag(40 × 10⁴, 40 × 10⁻⁵), the target along the
    small eigenvalues, C = 2: at n = 80 the averaged action has two minima (found here in
    NumPy on 2001 points, S compared by quadrature of the pull), at n = 10 one. The curve's
    u is the lower minimum's (log u = 5.17, S lower by 7.0). Before stop 42 it was the root
    the bisection happened to find, here the other one (log u = −11.41, E_g 8.6 against
    4.6), flagged."""
    M = 80
    eta = np.r_[np.full(40, 1e4), np.full(40, 1e-5)]
    X = np.diag(np.sqrt(M * M * eta))  # K = XXᵀ/d with d = M: the operator K/M is diag(η)
    Y = np.r_[np.zeros(40), np.full(40, 3.0)]
    curve = fj.learning_curve(fj.FCN(2.0, 1.0, 1.0, 0.1, fj.Linear()), X, Y, [10.0, 80.0])
    z = np.linspace(-50, 50, 2001)
    found = [_averaged_minima(eta, Y**2 / M, n, 0.1, 1.0, z) for n in (10.0, 80.0)]
    assert [len(roots) for roots, _ in found] == [1, 2]
    roots, actions = found[1]
    assert abs(actions[1] - actions[0]) > 1.0  # told apart by more than any error here
    lowest = roots[np.argmin(actions)]
    np.testing.assert_array_equal(curve.converged, [True, True])
    np.testing.assert_allclose(np.log(curve.scale), [found[0][0][0], lowest], rtol=0, atol=1e-9)


def _decimal_curve(eta, power, n, noise, k, width=True):
    """u(n) and E_g of the depth-1 curve (at C = ∞ if not `width`: u = 1) in 80-digit decimal
    arithmetic: κ by Newton's method (κ − λ − κ Σ η/(nη + κ) is convex and increasing), the
    root of z − log(1 − g/k) by bisection and then secant steps, with g's direct difference
    yᵀ(K + λ)⁻¹y/n − training error/λ, whose cancellation 80 digits absorb. Modes of equal
    η are summed first (exact: they enter through their total power)."""
    with decimal.localcontext() as ctx:
        ctx.prec = 80
        groups = {}
        for e, p in zip(eta, power, strict=True):
            groups[e] = groups.get(e, Dec(0)) + Dec(float(p))
        es, ps = list(groups), list(groups.values())
        n, noise, k = Dec(n), Dec(noise), Dec(k)

        def terms(z):
            lam = noise * (-z).exp()
            kap = lam + sum(es)
            for _ in range(200):
                f = kap - lam - kap * sum(e / (n * e + kap) for e in es)
                step = f / (1 - sum(n * e * e / (n * e + kap) ** 2 for e in es))
                kap -= step
                if abs(step) < kap * Dec("1e-75"):
                    break
            a = [n * e + kap for e in es]
            gamma = sum(n * e * e / (b * b) for e, b in zip(es, a, strict=True))
            error = kap * kap * sum(p / (b * b) for p, b in zip(ps, a, strict=True)) / (1 - gamma)
            quad = sum(p / b for p, b in zip(ps, a, strict=True))
            dof = sum(n * e / b for e, b in zip(es, a, strict=True))
            g = (dof - (-z).exp() * n * (quad - lam / kap**2 * error)) / 2
            return z - (1 - g / k).ln(), error

        if not width:
            return Dec(1), terms(Dec(0))[1]
        lo, hi = Dec(-30), Dec(30)
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if terms(mid)[0] < 0 else (lo, mid)
        z0, z1 = lo, hi
        f0, f1 = terms(z0)[0], terms(z1)[0]
        for _ in range(60):
            if f1 == f0 or abs(z1 - z0) < Dec("1e-70"):
                break
            z0, z1, f0 = z1, z1 - f1 * (z1 - z0) / (f1 - f0), f1
            f1 = terms(z1)[0]
        return z1.exp(), terms(z1)[1]


@pytest.mark.slow
def test_finite_width_curve_keeps_its_digits_at_tiny_noise():
    """A linear FCN (d = 4, C = 4) on M = 120 inputs with a target partly outside the
    kernel's span, n = 60 > d: yᵀ(K + λ)⁻¹y/n and the training error/λ are each ~1/σ² and
    their difference O(1). u, E_g and their derivatives in σ_w² and σ² (and the GP curve's
    E_g and its derivatives), against an 80-digit evaluation of the same formulas on the
    curve's own spectrum, its derivatives by central differences (K ∝ σ_w²: the eigenvalues
    scale). Before stop 42 u was off by 6·10⁻⁵ at σ² = 10⁻⁹ and by 23× at 10⁻¹⁴ (flagged),
    its derivative in σ_w² by 2000× at 10⁻⁹ (after the values were fixed); E_g's derivative
    in σ_w² at C = ∞ was 1.5·10⁻⁴ where it is ~10⁻¹⁵."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 4))
    Y = X[:, 0] + 0.5 * (X[:, 1] ** 2 - 1)
    ns = (2.0, 60.0)

    def outputs(sigma_w2, noise):  # (u, E_g) at C = 4 and ∞, per size: (2, 2, 2)
        nets = [fj.FCN(width, sigma_w2, 1.0, noise, fj.Linear()) for width in (4.0, np.inf)]
        curves = [fj.learning_curve(net, X, Y, ns) for net in nets]
        values = jnp.stack([jnp.stack([c.scale, c.test_error]) for c in curves])
        converged = jnp.all(curves[0].converged) & jnp.all(curves[1].converged)
        return values, (values, converged, curves[0].eigenvalues, curves[0].target_power)

    jacobian = jax.jit(jax.jacobian(outputs, argnums=(0, 1), has_aux=True))
    ctx = decimal.Context(prec=80)
    for noise in (1e-9, 1e-16):
        (got_w, got_n), (got, converged, eta, power) = jacobian(1.0, noise)
        assert bool(converged)
        eta = [Dec(float(e)) for e in np.asarray(eta)]
        power = np.asarray(power)
        for c, width in enumerate((4.0, np.inf)):
            for i in range(2):

                def ref(scale, factor, i=i, width=width, eta=eta, power=power, noise=noise):
                    return _decimal_curve(
                        [ctx.multiply(e, scale) for e in eta],
                        power,
                        ns[i],
                        ctx.multiply(Dec(noise), factor),
                        2.0,
                        bool(np.isfinite(width)),
                    )

                h = Dec("1e-30")
                up, down = ctx.add(1, h), ctx.subtract(1, h)
                value = [float(v) for v in ref(1, 1)]
                d_w = [
                    ctx.divide(a - b, 2 * h) for a, b in zip(ref(up, 1), ref(down, 1), strict=True)
                ]
                d_n = [
                    ctx.divide(a - b, 2 * h) for a, b in zip(ref(1, up), ref(1, down), strict=True)
                ]
                np.testing.assert_allclose(got[c, :, i], value, rtol=1e-12)
                d_w = [float(v) for v in d_w]
                np.testing.assert_allclose(got_w[c, :, i], d_w, rtol=1e-9, atol=1e-12)
                d_n = [float(v) / noise for v in d_n]
                np.testing.assert_allclose(got_n[c, :, i], d_n, rtol=1e-9)


# A one-hidden-layer PatchCNN at finite width: its kernel Σ_pq U_pq κ_pq is renormalised by a
# P×P matrix U (`fj.renormalise`), found per n at the saddle point of the averaged action.
PATCH_NS = [16.0, 64.0]
PATCH_POOL = 200  # the first 200 inputs of `linear_pool`: its M³ factorisations 8× cheaper


def _patch_net(width=4.0, sigma_w2=1.0, noise=0.01, patch_size=4):
    return fj.PatchCNN(width, sigma_w2, SA2, noise, fj.Linear(), patch_size=patch_size)


def test_patch_curve_with_one_patch_is_the_fcn_curve(linear_pool):
    """A PatchCNN whose one patch is the whole input has the FCN's kernel, and U = [[u]]: its
    curve (BFGS and Newton on the averaged action, κ(U) by Newton steps on Cholesky factors)
    equals the FCN's (u by bisection on the spectrum), another code path. κ is reported for
    the renormalised kernel uK at σ², the FCN's for K at σ²/u: u times it."""
    X, Y = linear_pool
    patch = fj.learning_curve(_patch_net(patch_size=16), X, Y, PATCH_NS)
    fcn = fj.learning_curve(fj.FCN(4.0, 1.0, SA2, 0.01, fj.Linear()), X, Y, PATCH_NS)
    assert bool(jnp.all(patch.converged)) and bool(jnp.all(fcn.converged))
    assert patch.scale_matrix.shape == fcn.scale_matrix.shape == (2, 1, 1)
    for field in ("test_error", "gamma", "scale", "chi_proxy", "scale_matrix"):
        np.testing.assert_allclose(getattr(patch, field), getattr(fcn, field), rtol=1e-9)
    np.testing.assert_allclose(patch.kappa, fcn.scale * fcn.kappa, rtol=1e-9)
    np.testing.assert_allclose(patch.eigenvalues, fcn.eigenvalues, rtol=1e-12, atol=1e-15)


def _patch_action(U, X, y, n, noise=0.01, width=4.0, patch_size=4):
    """The averaged action written out for a linear PatchCNN, from T_U's eigendecomposition and
    a bracketed κ: the Wishart prior (C/2)(tr U − log det U − P) plus
    ½[Σ log(1 + nη/κ) + n log κ − n + nσ²/κ + n Σ_ρ a_ρ²/(nη_ρ + κ)], and E_g at U
    (module docstring of fls_jax/_learning_curve.py)."""
    M, P = len(X), X.shape[1] // patch_size
    Xp = X.reshape(M, P, patch_size)
    pairs = SA2 / P * np.einsum("apk,bqk->pqab", Xp, Xp) / patch_size  # σ_w² = 1
    T = np.einsum("pq,pqab->ab", U, pairs) / M
    eta, V = np.linalg.eigh(0.5 * (T + T.T))
    eta = np.where(eta > 1e-13 * eta[-1], eta, 0.0)
    a2 = (V.T @ y) ** 2 / M
    kappa = brentq(lambda k: k - noise - k * np.sum(eta / (n * eta + k)), noise, 10.0, xtol=1e-15)
    b = n * eta + kappa
    data = np.sum(np.log1p(n * eta / kappa)) + n * np.log(kappa) - n + n * noise / kappa
    data = 0.5 * (data + n * np.sum(a2 / b))
    prior = width / 2 * (np.trace(U) - np.linalg.slogdet(U)[1] - P)
    gamma = np.sum(n * eta**2 / b**2)
    return prior + data, kappa**2 * np.sum(a2 / b**2) / (1 - gamma)


def _assert_stationary_minimum(action, U, value, rng, tries, h=1e-5):
    """`action` (a function of a symmetric matrix) at U, where it takes `value`, along
    `tries` random symmetric directions E: its derivative at U (central differences) is below
    10⁻⁵ of its size at 0.9 U, and U + 10⁻²E lies above."""

    def slope(U, E):
        return (action(U + h * E) - action(U - h * E)) / (2 * h)

    for _ in range(tries):
        E = rng.standard_normal(U.shape)
        E = (E + E.T) / 2
        assert abs(slope(U, E)) < 1e-5 * abs(slope(0.9 * U, E))
        assert action(U + 1e-2 * E) > value


def test_patch_curve_is_the_minimum_of_the_averaged_action(linear_pool):
    """P = 4 patches: U* (a full 4×4 matrix, far from the GP's I) against the action written
    out in NumPy, with pair kernels, spectra and κ of its own: its directional derivatives at
    U* vanish (central differences, against their size at 0.9 U*), it rises in every
    direction, and E_g from its formula at U* is the curve's. Against the exact posterior
    (`fj.renormalise`) averaged over drawn training sets: `benchmarks/learning_curve_patch.py`."""
    X, Y = (a[:PATCH_POOL] for a in linear_pool)
    y = Y.reshape(-1)
    curve = fj.learning_curve(_patch_net(), X, Y, PATCH_NS)
    gp = fj.learning_curve(_patch_net(width=np.inf), X, Y, PATCH_NS)
    assert bool(jnp.all(curve.converged))
    rng = np.random.default_rng(5)
    for i, n in enumerate(PATCH_NS):
        U = np.asarray(curve.scale_matrix[i])
        assert np.min(np.abs(U - U[0, 0] * np.eye(4))[~np.eye(4, dtype=bool)]) > 0.1
        action, error = _patch_action(U, X, y, n)
        np.testing.assert_allclose(curve.test_error[i], error, rtol=1e-8)
        _assert_stationary_minimum(lambda U, n=n: _patch_action(U, X, y, n)[0], U, action, rng, 3)
        assert float(gp.test_error[i]) > 5 * float(curve.test_error[i])  # the width matters


@pytest.mark.slow
def test_patch_curve_gradients_match_finite_differences(linear_pool):
    """jax.grad of a PatchCNN's E_g(n = 16) in σ_w², σ², the width, σ_a², the target noise
    σ_ε², and the pool's inputs and targets along random directions (U*'s derivatives by the
    saddle's Newton steps, E_g's by the spectral rule), under jax.jit with a traced width,
    against central differences of the same program."""
    X, Y = (a[:PATCH_POOL] for a in linear_pool)
    rng = np.random.default_rng(8)
    VX, VY = rng.standard_normal(X.shape), Y + rng.standard_normal(Y.shape)  # as for the FCN

    def err(params):
        sw2, noise, C, sa2, target_noise, tx, ty = params
        net = fj.PatchCNN(C, sw2, sa2, noise, fj.Linear(), patch_size=4)
        curve = fj.learning_curve(
            net, X + tx * VX, Y + ty * VY, PATCH_NS[:1], target_noise=target_noise
        )
        return curve.test_error[0]

    value_and_grad = jax.jit(jax.value_and_grad(err))
    p = jnp.array([1.0, 0.01, 4.0, SA2, 0.05, 0.0, 0.0])
    g = np.asarray(value_and_grad(p)[1])
    for i, step in enumerate([1e-5, 1e-7, 1e-4, 1e-5, 1e-6, 1e-6, 1e-6]):
        e = np.zeros(7)
        e[i] = step
        fd = (float(value_and_grad(p + e)[0]) - float(value_and_grad(p - e)[0])) / (2 * step)
        np.testing.assert_allclose(g[i], fd, rtol=1e-5, err_msg=str(i))


OUTPUT_NS = np.array([16.0, 32.0])
OUTPUT_P0 = np.array([1.0, 0.01, 0.003, 4.0, SA2, 0.0, 0.0])  # σ_w², σ², σ_ε², C, σ_a², t_X, t_Y
TINY_NOISE = 1e-6  # σ² where BFGS's probes made the ridge's Newton system NaN (stop 55)
TINIER_NOISE = 1e-8  # σ² where the ridge's Newton steps in R stopped the program (stop 58)
TINIEST_NOISE = 1e-10  # σ² where n = d was flagged: rounding-level targets along c⊥ (stop 59)
OUTPUT_STEPS = [1e-5, 1e-7, 1e-7, 4e-4, 1e-5, 1e-6, 1e-6]  # central differences in OUTPUT_P0


@pytest.fixture(scope="module")
def outputs_runs(linear_pool):
    """Every evaluation the two-output tests check, from one compiled program: the curve of
    a linear FCN with two outputs (M = 200) at targets Y + t_Y V_Y and inputs X + t_X V_X,
    with E_g(n = 32)'s gradient in (σ_w², σ², σ_ε², C, σ_a², t_X, t_Y). All run here, so
    that the program is compiled once: called from each test, it was compiled twice in a
    cold run of the suite (71 s more; the memory-map guard of `conftest.py` clears JAX's
    caches between tests when a worker nears its limit). The curve for rank-one targets, and
    for two correlated targets with the gradient and the central differences of
    `OUTPUT_STEPS`."""
    X = linear_pool[0][:PATCH_POOL]
    VX = np.random.default_rng(9).standard_normal(X.shape)

    def curve(p, Y, VY):
        sw2, noise, target_noise, C, sa2, tx, ty = p
        net = fj.FCN(C, sw2, sa2, noise, fj.Linear())
        lc = fj.learning_curve(net, X + tx * VX, Y + ty * VY, OUTPUT_NS, target_noise=target_noise)
        return lc.test_error[-1], lc

    program = jax.jit(jax.value_and_grad(curve, has_aux=True))
    _, y, Y = _two_targets(linear_pool)
    rank_one = np.outer(y, [0.6, 0.8])
    VY = Y + np.random.default_rng(10).standard_normal(Y.shape)
    p = jnp.asarray(OUTPUT_P0)
    (_, general), gradient = program(p, Y, VY)
    differences = []
    for i, step in enumerate(OUTPUT_STEPS):
        e = np.zeros(7)
        e[i] = step
        plus, minus = program(p + e, Y, VY)[0][0], program(p - e, Y, VY)[0][0]
        differences.append((float(plus) - float(minus)) / (2 * step))
    tiny = p.at[1].set(TINY_NOISE).at[2].set(0.0)  # σ² = 10⁻⁶, σ_ε² = 0
    return dict(
        rank_one=program(p, rank_one, np.zeros_like(Y))[0][1],
        rank_one_tiny=program(tiny, rank_one, np.zeros_like(Y))[0][1],
        rank_one_tinier=program(tiny.at[1].set(TINIER_NOISE), rank_one, np.zeros_like(Y))[0][1],
        rank_one_tiniest=program(tiny.at[1].set(TINIEST_NOISE), rank_one, np.zeros_like(Y))[0][1],
        general=general,
        gradient=np.asarray(gradient),
        differences=np.asarray(differences),
    )


def _two_targets(linear_pool):
    X, Y = (a[:PATCH_POOL] for a in linear_pool)
    y = Y.reshape(-1)
    return X, y, np.stack([y, 2 * np.tanh(X[:, 1]) + 0.5 * y], axis=1)


def test_output_curve_with_rank_one_targets_is_two_fcn_curves(linear_pool, outputs_runs):
    """Targets Y = y cᵀ (|c| = 1) on two outputs: in U's eigenbasis the outputs decouple, and
    direction c carries y while the other carries nothing. So U* = u_y ccᵀ + u_0(I − ccᵀ),
    with u_y and u_0 the one-output curve's scales for the targets y and 0 (bisection on the
    spectrum, another code path), E_g and κ are those curves' means, and χ_proxy their sum.
    The two-output curve never rotates its outputs: its ridge is an m×m matrix that commutes
    with U, found by Newton steps from U's eigenvalues."""
    X, y, _ = _two_targets(linear_pool)
    c = np.array([0.6, 0.8])  # `outputs_runs`' rank-one targets y cᵀ
    two = outputs_runs["rank_one"]
    net = fj.FCN(4.0, 1.0, SA2, 0.01, fj.Linear())
    ones = [fj.learning_curve(net, X, t, OUTPUT_NS, target_noise=0.003) for t in (y, 0 * y)]
    assert bool(jnp.all(two.converged)) and all(bool(jnp.all(o.converged)) for o in ones)
    assert two.scale_matrix.shape == (2, 2, 2)
    u_y, u_0 = (np.asarray(o.scale)[:, None, None] for o in ones)
    projector = np.outer(c, c)
    expected = u_y * projector + u_0 * (np.eye(2) - projector)
    np.testing.assert_allclose(two.scale_matrix, expected, rtol=1e-8, atol=1e-10)
    for field in ("test_error", "kappa", "gamma"):
        mean = (getattr(ones[0], field) + getattr(ones[1], field)) / 2
        np.testing.assert_allclose(getattr(two, field), mean, rtol=1e-8, err_msg=field)
    np.testing.assert_allclose(two.chi_proxy, ones[0].chi_proxy + ones[1].chi_proxy, rtol=1e-8)
    assert float(ones[0].test_error[0]) > 100 * float(ones[1].test_error[0])  # not a tie
    # At σ² = 10⁻⁶ lineax stopped the program on a NaN Newton system, from a block BFGS
    # probed far out; now BFGS turns that step down. Until stop 58 the size n = d = 16 was
    # flagged there, and at σ² = 10⁻⁸ lineax stopped the program again (a NaN cotangent in
    # the Hessian's reverse pass, from Newton steps on R whose blocks nηU + R have condition
    # ~1/σ² where U* is near rank one); the ridge is now solved whitened, X = U⁻¹R, and the
    # saddle in the targets' principal axes, where U*'s least eigenvalue keeps its digits.
    # Until stop 59 n = d was flagged at σ² = 10⁻¹⁰, 3.7·10⁻³ off: the rotated targets'
    # second column, rounding (10⁻¹⁶|y|), is now set to zero (`principal_axes`).
    for key, noise in (
        ("rank_one_tiny", TINY_NOISE),
        ("rank_one_tinier", TINIER_NOISE),
        ("rank_one_tiniest", TINIEST_NOISE),
    ):
        tiny = outputs_runs[key]
        net = fj.FCN(4.0, 1.0, SA2, noise, fj.Linear())
        ones = [fj.learning_curve(net, X, t, OUTPUT_NS) for t in (y, 0 * y)]
        mean = (ones[0].test_error + ones[1].test_error) / 2
        chi = ones[0].chi_proxy + ones[1].chi_proxy
        assert bool(jnp.all(tiny.converged)) and all(bool(jnp.all(o.converged)) for o in ones)
        # Measured: E_g 10⁻¹³ (10⁻⁶), 3·10⁻¹² (10⁻⁸) and 10⁻¹¹ (10⁻¹⁰) from theirs at most,
        # χ_proxy 5·10⁻¹⁴.
        # Before the principal axes, at 10⁻⁸ both sizes were flagged, E_g 4·10⁻⁶ and 730× off.
        np.testing.assert_allclose(tiny.test_error, mean, rtol=1e-7)
        np.testing.assert_allclose(tiny.chi_proxy, chi, rtol=1e-7)


def _outputs_action(U, X, Y, n, noise=0.01, width=4.0, target_noise=0.003):
    """The averaged action of a linear FCN with m outputs written out in U's eigenbasis,
    direction by direction (each a GP with kernel u_i K and targets Y q_i, its ridge κ̃_i
    bracketed): the Wishart prior (C/2)(tr U − log det U − m) plus, per direction,
    ½[Σ log(1 + nu_iη/κ̃_i) + n log κ̃_i − n + n(σ² + σ_ε²)/κ̃_i + n Σ_ρ a_ρ²/(nu_iη_ρ + κ̃_i)].
    Returns it, and E_g, κ, γ averaged over directions and χ_proxy summed."""
    M, m = Y.shape
    eta, V = np.linalg.eigh(SA2 * X @ X.T / X.shape[1] / M)  # σ_w² = 1
    eta = np.where(eta > 1e-13 * eta[-1], eta, 0.0)
    u, Q = np.linalg.eigh(U)
    action = width / 2 * (np.trace(U) - np.linalg.slogdet(U)[1] - m)
    errors, kappas, gammas, chis = [], [], [], []
    for ui, q in zip(u, Q.T, strict=True):
        a2 = (V.T @ (Y @ q)) ** 2 / M
        e = ui * eta
        kt = brentq(lambda k, e=e: k - noise - k * np.sum(e / (n * e + k)), noise, 1e3, xtol=1e-15)
        b = n * e + kt
        data = np.sum(np.log1p(n * e / kt)) + n * np.log(kt) - n + n * (noise + target_noise) / kt
        action += 0.5 * (data + n * np.sum(a2 / b))
        gamma = np.sum(n * e**2 / b**2)
        error = (kt**2 * np.sum(a2 / b**2) + gamma * target_noise) / (1 - gamma)
        errors.append(error)
        kappas.append(kt / ui)
        gammas.append(gamma)
        quad = (kt * np.sum(a2 / b) + target_noise) / kt  # yᵀ(Q + σ²)⁻¹y/n, averaged
        chis.append(n * (quad - noise * (error + target_noise) / kt**2) / width)
    return action, np.mean(errors), np.mean(kappas), np.mean(gammas), np.sum(chis)


def test_output_curve_is_the_minimum_of_the_averaged_action(linear_pool, outputs_runs):
    """Two outputs with different targets (a linear teacher and a tanh of one coordinate):
    U* (a full 2×2 matrix) against the action written out in NumPy direction by direction,
    with its own spectra and bracketed ridges: its directional derivatives at U* vanish
    (central differences, against their size at 0.9 U*), it rises in every direction tried,
    and E_g, κ, γ and χ_proxy from its formulas at U* are the curve's."""
    X, _, Y = _two_targets(linear_pool)
    curve = outputs_runs["general"]  # t_X = t_Y = 0: the targets Y themselves
    assert bool(jnp.all(curve.converged))
    rng = np.random.default_rng(6)
    for i, n in enumerate(OUTPUT_NS):
        U = np.asarray(curve.scale_matrix[i])
        assert abs(U[0, 1]) > 0.1 * np.sqrt(U[0, 0] * U[1, 1])  # the outputs are coupled
        action, error, kappa, gamma, chi = _outputs_action(U, X, Y, n)
        np.testing.assert_allclose(curve.test_error[i], error, rtol=1e-8)
        np.testing.assert_allclose(curve.kappa[i], kappa, rtol=1e-8)
        np.testing.assert_allclose(curve.gamma[i], gamma, rtol=1e-8)
        np.testing.assert_allclose(curve.chi_proxy[i], chi, rtol=1e-7)
        _assert_stationary_minimum(lambda U, n=n: _outputs_action(U, X, Y, n)[0], U, action, rng, 3)


def test_output_curve_gradients_match_finite_differences(outputs_runs):
    """jax.grad of the two-output E_g(n = 32) in σ_w², σ², σ_ε², the width, σ_a², and the
    pool's inputs and targets along random directions (U*'s derivatives by the matrix
    saddle's Newton steps, the ridge's by its own, K's held in its eigenbasis), against
    central differences of the same program (`outputs_runs`)."""
    assert bool(jnp.all(outputs_runs["general"].converged))
    np.testing.assert_allclose(outputs_runs["gradient"], outputs_runs["differences"], rtol=1e-6)


# A one-hidden-layer PatchCNN with m = 2 outputs: its kernel over (patch, output) pairs does
# not factor over outputs, and its ridge is a 2×2 matrix (`_patch_outputs_width_curve`).
PATCH_OUTPUTS_POOL = 120  # (mM)³ factorisations: M = 120 makes them 240×240
PATCH_OUTPUTS_P0 = np.array([1.0, 0.01, 0.003, 16.0, SA2, 0.0, 0.0])  # as OUTPUT_P0; C > 7
PATCH_TINY_NOISE = 1e-8  # σ² where the ridge's steps stop at a rounding floor above √eps


@pytest.fixture(scope="module")
def patch_outputs_runs(linear_pool):
    """One compiled program for the two-output PatchCNN tests (P = 4 patches of 4, linear,
    M = 120): the curve at n = 16 and 32 as a function of (σ_w², σ², σ_ε², C, σ_a², t_X,
    t_Y), for rank-one targets y cᵀ and for two different targets. (Its gradient, compiled
    separately, is the slow tier's: compiling it took 40 s.)"""
    X = linear_pool[0][:PATCH_OUTPUTS_POOL]
    VX = np.random.default_rng(12).standard_normal(X.shape)

    def curve(p, Y, VY):
        sw2, noise, target_noise, C, sa2, tx, ty = p
        net = fj.PatchCNN(C, sw2, sa2, noise, fj.Linear(), patch_size=4)
        lc = fj.learning_curve(net, X + tx * VX, Y + ty * VY, OUTPUT_NS, target_noise=target_noise)
        return lc.test_error[-1], lc

    program = jax.jit(curve)
    _, y, Y = _two_targets(linear_pool)
    y, Y = y[:PATCH_OUTPUTS_POOL], Y[:PATCH_OUTPUTS_POOL]
    VY = Y + np.random.default_rng(13).standard_normal(Y.shape)
    p = jnp.asarray(PATCH_OUTPUTS_P0)
    return dict(
        X=X,
        y=y,
        Y=Y,
        VY=VY,
        curve=curve,
        rank_one=program(p, np.outer(y, [0.6, 0.8]), np.zeros_like(Y))[1],
        rank_one_tiny=program(
            p.at[1].set(PATCH_TINY_NOISE).at[2].set(0.0), np.outer(y, [0.6, 0.8]), np.zeros_like(Y)
        )[1],
        general=program(p, Y, VY)[1],
    )


def test_patch_output_curve_with_rank_one_targets_is_two_patch_curves(patch_outputs_runs):
    """Targets Y = y cᵀ (|c| = 1) on two outputs of a PatchCNN: the Wishart prior and the
    averaged data term split over the output directions c and c⊥ when U does, so U* = U_y ⊗
    ccᵀ + U_0 ⊗ (I − ccᵀ) (patch-major), with U_y and U_0 the one-output curve's P×P scales
    for the targets y and 0 (its own code path: a scalar ridge bisected on T_U's spectrum,
    and the spectral E_g), E_g, κ and γ those curves' means, and χ_proxy their sum. The
    two-output path finds U* over all 36 entries and a 2×2 ridge by Newton steps."""
    X, y = patch_outputs_runs["X"], patch_outputs_runs["y"]
    c = np.array([0.6, 0.8])
    two = patch_outputs_runs["rank_one"]
    net = fj.PatchCNN(16.0, 1.0, SA2, 0.01, fj.Linear(), patch_size=4)
    ones = [
        fj.learning_curve(net, X, t[:, None], OUTPUT_NS, target_noise=0.003) for t in (y, 0 * y)
    ]
    assert bool(jnp.all(two.converged)) and all(bool(jnp.all(o.converged)) for o in ones)
    assert two.scale_matrix.shape == (2, 8, 8)
    projector = np.outer(c, c)
    expected = np.einsum("kpq,or->kpoqr", np.asarray(ones[0].scale_matrix), projector)
    expected += np.einsum("kpq,or->kpoqr", np.asarray(ones[1].scale_matrix), np.eye(2) - projector)
    np.testing.assert_allclose(two.scale_matrix, expected.reshape(2, 8, 8), rtol=1e-8, atol=1e-9)
    for field in ("test_error", "kappa", "gamma"):
        mean = (getattr(ones[0], field) + getattr(ones[1], field)) / 2
        np.testing.assert_allclose(getattr(two, field), mean, rtol=1e-8, err_msg=field)
    np.testing.assert_allclose(two.chi_proxy, ones[0].chi_proxy + ones[1].chi_proxy, rtol=1e-8)
    assert float(ones[0].test_error[0]) > 10 * float(ones[1].test_error[0])  # not a tie
    # At σ² = 10⁻⁸ (σ_ε² = 0) 𝒜's condition is 10⁸–10⁹ where n ≥ d and the ridge's Newton
    # steps stop at 10⁻⁹–10⁻⁷, above √eps: until stop 58 both sizes were flagged, with the
    # values right. Measured: E_g 2.7·10⁻⁹ and 2.1·10⁻⁹, χ_proxy 2·10⁻⁹ from theirs.
    tiny = patch_outputs_runs["rank_one_tiny"]
    net = fj.PatchCNN(16.0, 1.0, SA2, PATCH_TINY_NOISE, fj.Linear(), patch_size=4)
    ones = [fj.learning_curve(net, X, t[:, None], OUTPUT_NS) for t in (y, 0 * y)]
    mean = (ones[0].test_error + ones[1].test_error) / 2
    assert bool(jnp.all(tiny.converged)) and all(bool(jnp.all(o.converged)) for o in ones)
    np.testing.assert_allclose(tiny.test_error, mean, rtol=1e-6)
    np.testing.assert_allclose(tiny.chi_proxy, ones[0].chi_proxy + ones[1].chi_proxy, rtol=1e-6)


def _patch_outputs_reference(U, X, Y, n, noise=0.01, target_noise=0.003, width=16.0):
    """The averaged action of a linear PatchCNN (P = 4 patches of 4) with m outputs, written
    out on the operator 𝒯 (mM×mM, output-major) in the feature-space form of the ridge's
    equation: with λ = s/n, W = sR⁻¹ − μI and Tr_M the sum of the diagonal pool blocks,
    R = sI + (s/n) Tr_M[𝒯((W ⊗ I)𝒯 + λ)⁻¹], solved by a fixed-point iteration and SciPy's
    root finder (not the package's Newton steps on its 𝒜-form). Returns the Wishart prior
    plus ½[log det 𝒜 − (M − n) log det R − nm + n(σ² + σ_ε²) tr R⁻¹ + n yᵀ𝒜⁻¹y/M] at s = σ²,
    μ = 0, and E_g, κ, γ and χ_proxy, with R's derivatives in μ and s by central
    differences (not through its Jacobian)."""
    M, m = Y.shape
    P = X.shape[1] // 4
    Xp = X.reshape(M, P, 4)
    pairs = SA2 / P * np.einsum("apk,bqk->pqab", Xp, Xp) / 4 / M  # σ_w² = 1
    T = np.einsum("poqr,pqab->oarb", U.reshape(P, m, P, m), pairs).reshape(m * M, m * M)
    T = 0.5 * (T + T.T)
    y = Y.T.reshape(-1)
    eye, big = np.eye(m), np.eye(m * M)

    def pool_trace(B):
        return np.einsum("oara->or", B.reshape(m, M, m, M))

    def rhs(R, s, mu):
        W = np.kron(s * np.linalg.inv(R) - mu * eye, np.eye(M))
        TX = np.linalg.solve((W @ T + s / n * big).T, T.T).T  # 𝒯((W ⊗ I)𝒯 + λ)⁻¹
        return s * eye + s / n * pool_trace(TX)

    def ridge(s, mu):
        R = s * eye
        for _ in range(20):
            R = 0.5 * (R + rhs(R, s, mu))
        iu = np.triu_indices(m)

        def gap(r):
            R = np.zeros((m, m))
            R[iu] = r
            R = R + np.triu(R, 1).T
            return (R - rhs(R, s, mu))[iu]

        start = R[iu]
        R = np.zeros((m, m))
        R[iu] = scipy.optimize.root(gap, start, tol=1e-14).x
        return R + np.triu(R, 1).T

    def quadratic(R):  # (𝒜⁻¹y, log det 𝒜)
        A = n * T + np.kron(R, np.eye(M))
        return np.linalg.solve(A, y), np.linalg.slogdet(A)[1]

    R = ridge(noise, 0.0)
    v, logdet = quadratic(R)
    R_inv = np.linalg.inv(R)
    data = logdet - (M - n) * np.linalg.slogdet(R)[1] - n * m
    data = 0.5 * (data + n * (noise + target_noise) * np.trace(R_inv) + n * y @ v / M)
    prior = width / 2 * (np.trace(U) - np.linalg.slogdet(U)[1] - P * m)
    h = 1e-6
    R_mu = noise * (ridge(noise, h) - ridge(noise, -h)) / (2 * h)  # σ² ∂R/∂μ
    V = v.reshape(m, M)
    bias = np.sum(((R @ R + R_mu) @ V) * V) / M
    excess = R_inv @ R_mu @ R_inv
    error = (bias + target_noise * np.trace(excess)) / m

    def Q(s):
        Rs = ridge(s, 0.0)
        return n * y @ quadratic(Rs)[0] / M + n * target_noise * np.trace(np.linalg.inv(Rs))

    hs = 1e-4 * noise
    chi = (Q(noise) + noise * (Q(noise + hs) - Q(noise - hs)) / (2 * hs)) / width
    gamma = np.trace(eye - np.linalg.inv(eye + excess)) / m
    return prior + data, error, np.trace(R) / m, gamma, chi


def test_patch_output_curve_against_the_action_written_out(patch_outputs_runs):
    """Two different targets (a linear teacher and a tanh of one coordinate) on a PatchCNN's
    two outputs: U* (8×8, coupling the outputs) against `_patch_outputs_reference`: its
    directional derivatives at U* vanish (central differences, against their size at
    0.9 U*), it rises in every direction tried, and E_g, κ, γ and χ_proxy from its formulas
    at U* are the curve's. Against the exact posterior (`fj.renormalise`) averaged over
    drawn training sets: `benchmarks/learning_curve_outputs.py --network patch`."""
    X, Y = patch_outputs_runs["X"], patch_outputs_runs["Y"]
    curve = patch_outputs_runs["general"]
    assert bool(jnp.all(curve.converged))
    rng = np.random.default_rng(14)
    n, i = OUTPUT_NS[-1], 1
    U = np.asarray(curve.scale_matrix[i])
    blocks = U.reshape(4, 2, 4, 2)
    assert np.max(np.abs(blocks[:, 0, :, 1])) > 0.1 * np.max(np.abs(blocks[:, 0, :, 0]))

    value, error, kappa, gamma, chi = _patch_outputs_reference(U, X, Y, n)
    np.testing.assert_allclose(curve.test_error[i], error, rtol=1e-6)
    np.testing.assert_allclose(curve.kappa[i], kappa, rtol=1e-8)
    np.testing.assert_allclose(curve.gamma[i], gamma, rtol=1e-6)
    np.testing.assert_allclose(curve.chi_proxy[i], chi, rtol=1e-6)
    _assert_stationary_minimum(lambda U: _patch_outputs_reference(U, X, Y, n)[0], U, value, rng, 2)


@pytest.mark.slow
def test_patch_output_curve_gradients_match_finite_differences(patch_outputs_runs):
    """jax.grad of the two-output PatchCNN's E_g(n = 32) in σ_w², σ², σ_ε², the width, σ_a²,
    and the pool's inputs and targets along random directions (U*'s derivatives by the
    matrix saddle's Newton steps, the 2×2 ridge's by its own, through Cholesky factors),
    against central differences of the same program."""
    curve, Y, VY = (patch_outputs_runs[k] for k in ("curve", "Y", "VY"))
    program = jax.jit(jax.value_and_grad(curve, has_aux=True))
    p = jnp.asarray(PATCH_OUTPUTS_P0)
    gradient = np.asarray(program(p, Y, VY)[1])
    for i, step in enumerate([1e-5, 1e-7, 1e-7, 4e-4, 1e-5, 1e-6, 1e-6]):
        e = np.zeros(7)
        e[i] = step
        plus, minus = program(p + e, Y, VY)[0][0], program(p - e, Y, VY)[0][0]
        difference = (float(plus) - float(minus)) / (2 * step)
        np.testing.assert_allclose(gradient[i], difference, rtol=1e-6, err_msg=str(i))


@pytest.mark.slow
def test_output_curve_deep_and_vmapped(linear_pool):
    """A deep linear FCN (two hidden layers, one 2×2 factor each) with rank-one targets on
    two outputs is two of its one-output curves (as for one hidden layer); and a vmap over
    widths, C = ∞ included, equals the loop."""
    X, y, _ = _two_targets(linear_pool)
    c = np.array([0.6, 0.8])
    Y = np.outer(y, c)
    deep = fj.FCN(4.0, 1.0, SA2, 0.01, fj.Linear(), depth=2)
    two = fj.learning_curve(deep, X, Y, OUTPUT_NS)
    ones = [fj.learning_curve(deep, X, t, OUTPUT_NS) for t in (y, 0 * y)]
    assert bool(jnp.all(two.converged)) and all(bool(jnp.all(o.converged)) for o in ones)
    mean = (ones[0].test_error + ones[1].test_error) / 2
    np.testing.assert_allclose(two.test_error, mean, rtol=1e-8)
    scales = np.sort(np.linalg.eigvalsh(np.asarray(two.scale_matrix)), axis=1)
    expected = np.sort(np.stack([ones[0].scale, ones[1].scale], axis=1), axis=1)
    np.testing.assert_allclose(scales, expected, rtol=1e-8)

    def errors(C):
        net = fj.FCN(C, 1.0, SA2, 0.01, fj.Linear())
        return fj.learning_curve(net, X, _two_targets(linear_pool)[2], OUTPUT_NS).test_error

    widths = jnp.array([2.0, 16.0, jnp.inf])
    batched = np.asarray(jax.jit(jax.vmap(errors))(widths))
    for i, C in enumerate(widths):
        np.testing.assert_allclose(batched[i], errors(C), rtol=1e-10)
