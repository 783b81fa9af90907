"""Scalar kernel renormalisation (SPEC §5): `fls_jax.renormalise`.

The scale mixture is checked against linear networks drawn weight by weight from their prior
and weighted by their likelihood (importance sampling: no use of the mixture's derivation),
the saddle point against a closed form, and both against the GP at infinite width."""

import decimal
import functools
import math

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


@pytest.mark.parametrize("depth", [1, 2])
def test_targets_scale_with_the_readout_and_the_noise(tiny, depth):
    """σ_a² → λσ_a², σ² → λσ², Y → √λ Y: the kernel and the noise scale together, so the
    posterior of the layers' scales is the same, the predictions scale by √λ (the variance
    by λ) and log Z falls by (n/2) log λ, the Gaussian's normalisation (as the EoS':
    `tests/test_solve.py`). Measured in a probe (n = 24, λ = 37, depth 1–2, both methods):
    to 3·10⁻¹⁴."""
    X, Y, X_test, _ = tiny
    lam = 37.0
    one = fj.renormalise(fj.FCN(2, 1.0, 1.0, NOISE, fj.Linear(), depth=depth), X, Y, X_test)
    net = fj.FCN(2, 1.0, lam, lam * NOISE, fj.Linear(), depth=depth)
    other = fj.renormalise(net, X, np.sqrt(lam) * Y, X_test)
    assert bool(one.converged) and bool(other.converged)
    np.testing.assert_allclose(other.scale, one.scale, rtol=1e-12)
    np.testing.assert_allclose(other.mean, np.sqrt(lam) * one.mean, rtol=1e-12)
    np.testing.assert_allclose(other.variance, lam * one.variance, rtol=1e-12)
    np.testing.assert_allclose(
        other.log_evidence, one.log_evidence - len(X) / 2 * np.log(lam), rtol=1e-12
    )


def test_infinite_width_is_the_gp(fcn_task):
    """An erf FCN at C = ∞ from `renormalise` equals the EoS solver's GP limit; at C = 10⁹
    it is within 10⁻⁶ of it (the large-shape branch of the Gamma factors and a tiny grid)."""
    t = fcn_task
    gp_net = fj.FCN(np.inf, 1.0, 1.0, 0.01, fj.Erf())
    ref = fj.predict(fj.solve(gp_net, t.X, t.Y), t.X_test, t.Y_test)

    @jax.jit
    def gp_evidence(noise):
        K_f = gp_net.output_kernel(gp_net.prior_covariance(t.X.shape[1]), t.X)
        return -fj.gp_negative_log_evidence(K_f + noise * jnp.eye(32), t.Y)

    for method in ("mixture", "saddle"):
        r = fj.renormalise(gp_net, t.X, t.Y, t.X_test, t.Y_test, method=method)
        assert bool(r.converged) and float(r.scale) == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(r.layer_scales, 1.0, atol=1e-12)
        np.testing.assert_allclose(r.mean, ref.mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(r.variance, ref.variance, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(r.train_error, ref.train_error, rtol=1e-8)
        np.testing.assert_allclose(r.test_error, ref.test_error, rtol=1e-8)
        # (the mixture's evidence was NaN here, flagged converged, and reverse-mode gradients
        # at C = ∞ NaN: the finite-width terms at k = ∞ behind a `where`)
        np.testing.assert_allclose(r.log_evidence, gp_evidence(0.01), rtol=1e-10)

        def evidence(noise, method=method):
            net = eqx.tree_at(lambda n: n.noise, gp_net, noise)
            return fj.renormalise(net, t.X, t.Y, t.X_test, t.Y_test, method=method).log_evidence

        gp_gradient = jax.jit(jax.grad(gp_evidence))(0.01)
        np.testing.assert_allclose(jax.grad(evidence)(0.01), gp_gradient, rtol=1e-8)
    wide = fj.renormalise(eqx.tree_at(lambda n: n.width, gp_net, 1e9), t.X, t.Y, t.X_test, t.Y_test)
    assert bool(wide.converged)
    np.testing.assert_allclose(wide.mean, ref.mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(wide.scale, 1.0, atol=1e-6)


def test_deep_mixture_against_a_convolution():
    """A depth-3 linear FCN's evidence and its derivative in C against the mixture built here
    by plain convolution: the density of log u = Σ v_l on a uniform grid (step 0.004; NumPy
    FFT convolutions of the three log-Gamma densities), integrated against the GP likelihood
    in K's eigenbasis. `renormalise` interpolates the intermediate density: linearly it was
    3·10⁻⁵ off in log Z and 10⁻³ in d log Z/dC (its nodes also moved with C); by cubics on
    fixed nodes, measured 5·10⁻¹⁰ and 10⁻⁸."""
    from scipy.signal import fftconvolve
    from scipy.special import gammaln, logsumexp

    rng = np.random.default_rng(0)
    X, X_test = rng.standard_normal((16, 4)), rng.standard_normal((6, 4))
    Y = 3 * np.tanh(X @ rng.standard_normal(4))
    net = fj.FCN(4.0, 1.2, 0.9, 0.05, fj.Linear(), depth=3)
    lam, V = np.linalg.eigh(1.2**3 * 0.9 * X @ X.T / 4)  # the deep linear NNGP kernel
    lam = np.where(lam > 16 * 1e-16 * lam.max(), lam, 0.0)
    y = V.T @ Y

    def reference(C, h=0.004):
        k = C / 2
        v = np.arange(-40, 12, h)
        p = np.exp(k * np.log(k) - gammaln(k) + k * (v - np.exp(v)))
        density = fftconvolve(fftconvolve(p, p) * h, p) * h
        z = 3 * v[0] + h * np.arange(density.size)
        keep = density > 1e-300
        den = np.exp(z[keep])[:, None] * lam + 0.05
        log_lik = -0.5 * (np.sum(y**2 / den, 1) + np.sum(np.log(den), 1) + 16 * np.log(2 * np.pi))
        return logsumexp(log_lik + np.log(density[keep])) + np.log(h)

    def evidence(C):
        r = fj.renormalise(eqx.tree_at(lambda n: n.width, net, C), X, Y, X_test)
        return r.log_evidence

    np.testing.assert_allclose(evidence(4.0), reference(4.0), rtol=0, atol=1e-8)
    d = 0.01
    slope = 8 * (reference(4 + d) - reference(4 - d)) - (
        reference(4 + 2 * d) - reference(4 - 2 * d)
    )
    np.testing.assert_allclose(jax.grad(evidence)(4.0), slope / (12 * d), rtol=1e-6)


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


def test_singular_kernel_with_large_targets():
    """n = 24 > d = 3: the linear kernel's 21 null directions are ~10⁻¹⁶ λ_max after `eigh`.
    With targets ×10⁸ partly outside the kernel's span they acted as modes of the data and u*
    came out far too large, flagged converged. Against the saddle on the exact spectrum
    (the SVD of X, null eigenvalues 0), solved by bisection here."""
    rng = np.random.default_rng(5)
    n, d, C, s2, scale = 24, 3, 4.0, 0.01, 1e8
    X = rng.standard_normal((n, d))
    Y = scale * (X[:, 0] + 0.5 * np.sin(3 * X[:, 1]))
    Uq, sv, _ = np.linalg.svd(X, full_matrices=True)
    lam = np.concatenate([sv**2 / d, np.zeros(n - d)])
    y2 = (Uq.T @ Y) ** 2
    k = C / 2

    def gap(z):
        u = np.exp(z)
        return k * (u - 1) + 0.5 * u * np.sum(lam / (u * lam + s2) - y2 * lam / (u * lam + s2) ** 2)

    lo, hi = -50.0, 60.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if gap(mid) < 0 else (lo, mid)
    net = fj.FCN(C, 1.0, 1.0, s2, fj.Linear())
    r = fj.renormalise(net, X, Y, X[:2], method="saddle")
    assert bool(r.converged)
    np.testing.assert_allclose(r.scale, np.exp(lo), rtol=1e-6)


def test_saddle_keeps_its_digits_at_tiny_noise():
    """n = 60 > d = 4 with a target partly outside the linear kernel's span, σ² = 10⁻¹²: the
    pull's n − σ² tr R and yᵀRy − σ²yᵀR²y are each ~1/σ² there. u* and its derivatives in
    σ_w² and σ² against 80-digit decimal arithmetic on the exact spectrum (the SVD of X),
    derivatives by central differences (K ∝ σ_w²: the eigenvalues scale). Before stop 42
    u* was off by 2.5·10⁻⁴ here (1.6·10⁻² at 10⁻¹⁴), flagged converged."""
    rng = np.random.default_rng(0)
    n, d, C, noise = 60, 4, 4.0, 1e-12
    X = rng.standard_normal((n, d))
    Y = X[:, 0] + 0.5 * (X[:, 1] ** 2 - 1)
    Uq, sv, _ = np.linalg.svd(X, full_matrices=True)
    y2 = [decimal.Decimal(float(v)) for v in (Uq.T @ Y) ** 2]
    ctx = decimal.Context(prec=80)

    def reference(scale, factor):  # u* at σ_w² = scale, σ² = noise × factor
        with decimal.localcontext(ctx):
            lam = [decimal.Decimal(float(v)) ** 2 / d * scale for v in sv] + [0] * (n - d)
            s = decimal.Decimal(noise) * factor

            def gap(z):  # k(u − 1) + g: the pull in its direct form, cancellation and all
                u = z.exp()
                g = (n - s * sum(1 / (u * l + s) for l in lam)) / 2
                g -= (
                    sum(
                        y / (u * l + s) - s * y / (u * l + s) ** 2
                        for y, l in zip(y2, lam, strict=True)
                    )
                    / 2
                )
                return decimal.Decimal(C / 2) * (u - 1) + g

            lo, hi = decimal.Decimal(-5), decimal.Decimal(5)
            for _ in range(230):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if gap(mid) < 0 else (lo, mid)
            return ((lo + hi) / 2).exp()

    def scale(sigma_w2, s2):
        net = fj.FCN(C, sigma_w2, 1.0, s2, fj.Linear())
        r = fj.renormalise(net, X, Y, X[:2], method="saddle")
        return r.scale, (r.scale, r.converged)

    (d_w, d_n), (u, converged) = jax.jit(jax.jacobian(scale, (0, 1), has_aux=True))(1.0, noise)
    assert bool(converged)
    h = decimal.Decimal("1e-30")
    with decimal.localcontext(ctx):
        ref_w = (reference(1 + h, 1) - reference(1 - h, 1)) / (2 * h)
        ref_n = (reference(1, 1 + h) - reference(1, 1 - h)) / (2 * h * decimal.Decimal(noise))
    np.testing.assert_allclose(u, float(reference(1, 1)), rtol=1e-12)
    np.testing.assert_allclose([d_w, d_n], [float(ref_w), float(ref_n)], rtol=1e-9)


def test_mixture_keeps_its_digits_at_tiny_noise():
    """The saddle test's data (n = 60 > d = 4, a target partly outside the kernel's span): the
    exact posterior's E[u | Y] depends on σ² smoothly, by 5·10⁻¹⁰ between σ² = 10⁻⁸ and
    10⁻¹⁰ here, so at 10⁻¹⁴ it must equal 10⁻¹⁰'s to ~10⁻¹². The log-likelihood's null-mode
    part, Σ y²/σ² ≈ 7·10¹⁴ at 10⁻¹⁴, swamped its z-dependence before stop 42: E[u] came out
    5 % off, converged. The same for ∂E[u]/∂σ_w² (≈ −0.35: it was wrong from σ² = 10⁻⁶ on,
    −2·10⁴ at 10⁻¹⁰) and for ∂ log Z/∂σ_w², whose reverse and forward modes disagreed
    (by 3× at 10⁻⁸ in a bug hunt's case: rounding between K's null modes, divided by σ²)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 4))
    Y = X[:, 0] + 0.5 * (X[:, 1] ** 2 - 1)

    def mixture(sigma_w2, noise):
        r = fj.renormalise(fj.FCN(4.0, sigma_w2, 1.0, noise, fj.Linear()), X, Y, X[:2])
        return jnp.stack([r.scale, r.log_evidence]), (r.scale, r.converged)

    rev = jax.jit(jax.jacrev(mixture, has_aux=True))
    fwd = jax.jit(jax.jacfwd(mixture, has_aux=True))
    (g_small, (u_small, ok_small)), (g_ref, (u_ref, ok_ref)) = rev(1.0, 1e-14), rev(1.0, 1e-10)
    assert bool(ok_small) and bool(ok_ref)
    np.testing.assert_allclose(u_small, u_ref, rtol=1e-10)
    np.testing.assert_allclose(g_small[0], g_ref[0], rtol=1e-8)  # ∂E[u]/∂σ_w²
    # ∂ log Z/∂σ_w²: reverse and forward mode agree at σ² = 10⁻⁸. (Below, the tangent's
    # rounding between null and range modes, ~10⁻¹⁶/σ², is what limits it.)
    np.testing.assert_allclose(rev(1.0, 1e-8)[0][1], fwd(1.0, 1e-8)[0][1], rtol=1e-6)


@pytest.mark.parametrize(
    "case",
    [
        "fcn",
        pytest.param("outputs", marks=pytest.mark.slow),
        pytest.param("patches", marks=pytest.mark.slow),
        "relu",
    ],
)
def test_hyper_parameter_derivatives_at_tiny_noise_against_targets_in_the_span(case):
    """Derivatives of log Z and of the predictions in (σ_w², C) at σ² = 10⁻¹², on
    rank-deficient kernels (n = 24), for targets partly outside the kernel's span against
    the same targets projected onto it, BBᵀY (B an orthonormal basis of the span): the
    predictions are the same, and log Z differs by the null modes' ½ Σ y²/σ², which holds
    neither σ_w² nor C. With no targets on the null modes nothing is divided by σ² there,
    and the projected problem keeps its digits on any version. Cases: a linear FCN (the
    mixture), two outputs and a linear PatchCNN (P = 2, S = 2; saddles), and a ReLU FCN on
    d = 1 inputs (rank 2). Before stop 47, K's tangent along σ_w² (K itself) carried its
    rounding between null and range modes, ~10⁻¹⁶/σ²: ∂ log Z/∂σ_w² up to 10 % off here,
    and ∂(Σ mean)/∂σ_w² ~10⁻³ where it is ~10⁻¹³. (`benchmarks/renormalise_tiny_noise_gradients.py`
    checks against the problem restricted to the span, r inputs BᵀX.)"""
    rng = np.random.default_rng(3)
    n, noise = 24, 1e-12
    X, X_test = rng.standard_normal((n, 4)), rng.standard_normal((3, 4))
    Y = X[:, 0] + 0.5 * (X[:, 1] ** 2 - 1)
    if case == "outputs":
        Y = np.stack([Y, X[:, 2] * X[:, 3] + X[:, 1]], axis=1)
    span = X
    if case == "relu":  # its kernel is a linear FCN's on (max(x, 0), max(−x, 0))
        X, X_test = X[:, :1], X_test[:, :1]
        span = np.concatenate([np.maximum(X, 0), np.maximum(-X, 0)], axis=1)
    Q, sv, _ = np.linalg.svd(span, full_matrices=False)
    B = Q[:, sv > 1e-10 * sv[0]]
    assert B.shape[1] < n

    # Forward mode for two outputs: its reverse mode takes 34 s to compile (forward 19 s);
    # both run the same first-order rule (`_linalg.first_order_term`), and the benchmark
    # checks both.
    @jax.jit
    @functools.partial(jax.jacfwd if case == "outputs" else jax.jacrev, has_aux=True)
    def derivatives(p, Y):
        common = dict(width=p[1], sigma_w2=p[0], sigma_a2=1.0, noise=noise)
        if case == "patches":
            net = fj.PatchCNN(patch_size=2, activation=fj.Linear(), **common)
        else:
            net = fj.FCN(activation=fj.ReLU() if case == "relu" else fj.Linear(), **common)
        method = "mixture" if case == "fcn" else "saddle"
        r = fj.renormalise(net, X, Y, X_test, method=method, draws=256)
        return jnp.stack([r.log_evidence, jnp.sum(r.mean)]), r.converged

    p = jnp.array([1.3, 6.0])
    got, ok = derivatives(p, Y)
    ref, ok_ref = derivatives(p, B @ (B.T @ Y))
    assert bool(ok) and bool(ok_ref)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-9)
    np.testing.assert_allclose(got[1], ref[1], rtol=0, atol=1e-11)
    assert np.all(np.abs(ref[0]) > 1e-3) and np.abs(ref[1, 0]) < 1e-10  # (σ²-small)


def test_real_components_on_clipped_modes_stay():
    """An erf FCN on d = 1 inputs (n = 100): 86 of K's eigenvalues are real but below
    `clip_spectrum`'s level, and K_*'s components along them are real too. The GP mean
    (C = ∞) at σ² = 10⁻⁴ against a dense solve written here, itself ~10⁻¹² from an
    extended-precision one. With `clip_spectrum`'s first level (n·eps·λ_max: 87 clipped),
    a first `cross_components` (floor n·eps·‖row‖) dropped components up to
    68 eps·‖row‖ and the mean was 6·10⁻¹¹ off (a bug hunt, stop 43); at today's level that
    mode is kept, and both floors give 1.4·10⁻¹² here. The log evidence against the dense
    one: this checks the level."""
    rng = np.random.default_rng(2)
    X, X_test = rng.uniform(-2, 2, (100, 1)), rng.uniform(-2, 2, (6, 1))
    Y = np.sin(2 * X[:, 0]) + 0.1 * rng.standard_normal(100)

    def kernel(A, B):  # the erf NNGP kernel, σ_w² = 2, σ_a² = 1
        a, b = 1 + 4 * np.sum(A**2, axis=1), 1 + 4 * np.sum(B**2, axis=1)
        return 2 / np.pi * np.arcsin(4 * A @ B.T / np.sqrt(np.outer(a, b)))

    A = kernel(X, X) + 1e-4 * np.eye(100)
    dense = kernel(X_test, X) @ np.linalg.solve(A, Y)
    r = fj.renormalise(fj.FCN(np.inf, 2.0, 1.0, 1e-4, fj.Erf()), X, Y, X_test, method="saddle")
    np.testing.assert_allclose(r.mean[:, 0], dense, rtol=0, atol=1e-11)
    # The evidence misses Σ log(1 + λ/σ²) over the clipped modes: 1.4·10⁻⁷ with
    # `clip_spectrum`'s first level, n·eps·λ_max; 1.2·10⁻⁸ with 8·eps·λ_max.
    log_z = -0.5 * (Y @ np.linalg.solve(A, Y) + np.linalg.slogdet(A)[1] + 100 * np.log(2 * np.pi))
    assert abs(float(r.log_evidence) - log_z) < 3e-8


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


def test_resolvents_against_dense_algebra():
    """`renormalise`'s resolvents of a kernel on its fixed eigenbasis (`_linalg`), with their
    first-order terms in K, against dense solves differentiated by JAX: values, derivatives
    in K (rank 3 of 8: five null directions) and in the scale, and the mixed derivatives in
    both, reverse inside forward and forward inside reverse."""
    from fls_jax import _linalg

    rng = np.random.default_rng(8)
    X, dX = rng.standard_normal((2, 8, 3))
    y = rng.standard_normal(8)
    B = rng.standard_normal((4, 8))
    c = jnp.array([0.3, 0.7])

    def kernel(t):
        return (X + t * dX) @ (X + t * dX).T

    def spectral(t, u):  # everything through the eigenbasis
        K = kernel(t)
        lam, V = _linalg.kernel_spectrum(K)
        x = V @ _linalg.resolvent_solve(K, y, u, 0.1, lam, V).T
        m = _linalg.resolvent_pull(K, y, u, 0.1, lam, V)
        ld = _linalg.resolvent_logdet(K, u, 0.1, lam, V)
        dg = _linalg.resolvent_diagonal(K, B @ V, c, u, 0.1, lam, V)
        return jnp.concatenate([x.ravel(), m.ravel(), ld, dg])

    def dense(t, u):
        K = kernel(t)
        R = jnp.linalg.inv(u[:, None, None] * K + 0.1 * jnp.eye(8))
        x = jnp.einsum("gij,j->ig", R, y)
        W = u[:, None, None] * K @ R  # the pull ½(tr W − yᵀWRy) and its d/d log u
        eye = jnp.eye(8)
        m = 0.5 * jnp.stack(
            [
                jnp.trace(W, axis1=1, axis2=2) - W @ R @ y @ y,
                jnp.trace(W @ (eye - W), axis1=1, axis2=2) - W @ (eye - 2 * W) @ R @ y @ y,
            ],
            axis=1,
        )
        ld = jnp.linalg.slogdet(u[:, None, None] * K + 0.1 * jnp.eye(8))[1]
        dg = jnp.einsum("ri,gij,rj,g->r", B, R, B, c)
        return jnp.concatenate([x.ravel(), m.ravel(), ld, dg])

    u = jnp.array([0.5, 2.0])
    for f in (
        lambda fn: fn(0.0, u),
        lambda fn: jax.jacfwd(fn)(0.0, u),
        lambda fn: jax.jacrev(fn, 1)(0.0, u),
        lambda fn: jax.jacfwd(jax.jacrev(lambda t, u: fn(t, u)[3], 1), 0)(0.0, u),
        lambda fn: jax.jacrev(jax.jacfwd(lambda t, u: fn(t, u)[19], 0), 1)(0.0, u),
    ):
        got, want = jax.jit(lambda f=f: (f(spectral), f(dense)))()
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ["saddle", "mixture"])
def test_gradients_on_a_singular_kernel(method):
    """Derivatives of every output along a direction in X, Y and C, against central
    differences (Richardson), for a two-layer linear FCN with n = 12 > d = 3: its kernel has
    9 null directions, whose eigenvectors' derivatives (1/(λ_i − λ_j) ≈ 10¹⁶) made the
    gradients of the evidence and the train error 3–900× off when `renormalise`
    differentiated through `eigh`. Reverse mode agrees with forward mode, and a second
    derivative through the kernel raises."""
    rng = np.random.default_rng(3)
    X, dX = rng.standard_normal((2, 12, 3))
    Y, dY = X @ rng.standard_normal(3) + 0.3 * rng.standard_normal(12), rng.standard_normal(12)
    X_test = rng.standard_normal((5, 3))
    Y_test = X_test[:, 0]

    def outputs(t, width=10.0):
        net = fj.FCN(width + 3 * t, 1.3, 0.8, 0.05, fj.Linear(), depth=2)
        r = fj.renormalise(net, X + t * dX, Y + t * dY, X_test, Y_test, method=method)
        assert bool(r.converged)
        fields = (r.log_evidence, r.train_error, r.test_error, r.scale, jnp.mean(r.variance))
        return jnp.stack(fields)

    _, jvp = jax.jvp(outputs, (0.0,), (1.0,))

    def central(h):
        return (outputs(h) - outputs(-h)) / (2 * h)

    fd = (4 * central(5e-5) - central(1e-4)) / 3
    # measured: ≤ 2e-8 relative (the saddle's scale, which bisection finds to 2e-13 in log u)
    np.testing.assert_allclose(jvp, fd, rtol=1e-6)
    weights = jnp.arange(1.0, 6.0)
    vjp = jax.grad(lambda t: outputs(t) @ weights)(0.0)
    np.testing.assert_allclose(vjp, jvp @ weights, rtol=1e-10)
    with pytest.raises(NotImplementedError, match="second derivatives"):
        jax.hessian(lambda t: outputs(t)[0])(0.0)


def test_narrow_posterior_and_a_minimum_beyond_the_range():
    """Two bug-hunt cases on a diagonal kernel (n = 12, C = 1 and 2). A posterior of
    z = log u with standard deviation 0.029: one uniform grid over the prior's long left
    tail had a spacing of 0.063, and the mixture's log Z was 3·10⁻² off, reported converged;
    now it matches a trapezoid rule on 10⁶ points. Targets ×10²⁴, whose S has its minimum
    beyond log u = 50: the bisection shrank onto the end of its range and the saddle was
    reported converged there; now it is flagged."""
    lam = np.array([535.87, 1118.4, 60.04, 13175.9, 29766.3, 183.66, 3.34e-3, 6.07e-3, 1.47e-2])
    lam = np.r_[lam, 2.77e-4, 6.96e-4, 1.56e-2]
    y = np.array([0.73, -0.18, -1.41, 0.33, -1.02, -1.54, 4.88, 22.21, 4.89, 13.96, -21.23, -0.39])
    noise, k = 0.0032357, 0.5
    X = np.diag(np.sqrt(12 * lam))
    r = fj.renormalise(fj.FCN(2 * k, 1.0, 1.0, noise, fj.Linear()), X, y, X[:2])
    z = np.linspace(-80, 30, 1_000_001)
    var = np.exp(z)[:, None] * lam + noise
    lw = k * np.log(k) - math.lgamma(k) + k * z - k * np.exp(z)
    lw = lw - 0.5 * np.sum(y**2 / var + np.log(2 * np.pi * var), axis=1)
    top = lw.max()
    assert bool(r.converged)
    np.testing.assert_allclose(
        float(r.log_evidence), top + np.log(np.trapezoid(np.exp(lw - top), z)), atol=1e-8
    )
    net = fj.FCN(2.0, 1.0, 1.0, 0.1, fj.Linear())
    z = np.linspace(-50, 150, 200_001)
    for scale in (1e10, 1e24):
        var = np.exp(z)[:, None] * lam + 0.1
        S = np.expm1(z) - z + 0.5 * np.sum((scale * y) ** 2 / var + np.log(var), axis=1)
        beyond = z[np.argmin(S)] > 50
        assert beyond == (scale > 1e20)
        saddle = fj.renormalise(net, X, scale * y, X[:2], method="saddle")
        assert bool(saddle.converged) != beyond
        if not beyond:
            np.testing.assert_allclose(np.log(float(saddle.scale)), z[np.argmin(S)], atol=1e-3)


@pytest.mark.slow
def test_lower_minimum_where_u_is_tiny():
    """A stop-43 hunt's case (diag K: 211 eigenvalues 5.6·10⁴ with small targets, 93 of
    2.9·10⁻⁷ with targets 0.134; C = 2): S(log u) has minima at log u = −15.61 and 6.88,
    the first 450 lower. The scan compared S at v = log(1 − g/k), which at the rough root of
    the lower one (u = 1.7·10⁻⁷, the condition's slope ~10⁹) was log of −1.4·10⁻⁷, clipped:
    S came out 5000 too high and the upper minimum was taken, reported converged. Now the
    saddle is the lower, against S minimised here on a grid, its layer scale is e^z to
    rounding (it was 6·10⁻⁸ off), and the mixture's log Z is a quadrature of the exact
    posterior of log u on its window."""
    nb, ns, noise, C = 211, 93, 0.000181, 2.0
    lam = np.r_[np.full(nb, 5.6e4), np.full(ns, 2.9e-7)]
    y = np.r_[np.random.default_rng(5).normal(0, 0.1, nb), np.full(ns, 0.134)]
    n = nb + ns
    X = np.diag(np.sqrt(n * lam))  # the linear kernel XXᵀ/d is diag(λ)
    net = fj.FCN(C, 1.0, 1.0, noise, fj.Linear())
    z = np.linspace(-25, 10, 35_001)
    var = np.exp(z)[:, None] * lam + noise
    log_lik = -0.5 * np.sum(y**2 / var + np.log(2 * np.pi * var), axis=1)
    k = C / 2  # z = log u has the log-density k log k − log Γ(k) + k(z − e^z)
    lw = k * np.log(k) - math.lgamma(k) + k * (z - np.exp(z)) + log_lik  # −S + const
    peaks = np.flatnonzero((lw[1:-1] > lw[:-2]) & (lw[1:-1] > lw[2:])) + 1
    assert len(peaks) == 2 and lw[peaks[0]] > lw[peaks[1]] + 400
    saddle = fj.renormalise(net, X, y, X[:2], method="saddle")
    assert bool(saddle.converged)
    np.testing.assert_allclose(np.log(float(saddle.scale)), z[peaks[0]], atol=1e-3)
    np.testing.assert_allclose(saddle.layer_scales, [saddle.scale], rtol=1e-13)
    mixture = fj.renormalise(net, X, y, X[:2])
    assert bool(mixture.converged)
    window = np.abs(z - z[peaks[0]]) < 5
    top = lw[window].max()
    exact = top + np.log(np.trapezoid(np.exp(lw[window] - top), z[window]))
    np.testing.assert_allclose(float(mixture.log_evidence), exact, rtol=1e-12)


def test_saddle_picks_the_lower_of_two_minima():
    """K = diag(10 × 1e4, 2 × 1e-2) with targets only along the small eigenvalues: S(log u)
    has two minima, at log u ≈ −12.9 (the lower, where the exact posterior lies) and 2.9
    (S 9.9 higher; a bug hunt's grid of 200 001 points). A bisection over the whole range
    found the upper one and reported it converged. The saddle is now the lower minimum,
    against S = C/2 (u − 1 − log u) − log N(y; 0, uK + σ²I) minimised on a grid of 200 001
    points here; the mixture's grid, about that minimum, holds the posterior. With the
    targets along the large eigenvalues S has one minimum and both stand. A third case
    (80 + 20 points, C = 16) has its second minimum 15.2 above the lowest behind a barrier
    of 288, beyond the mixture's grid: the saddle stands, the mixture is flagged (its grid
    passes the edge test; measured: log Z 4·10⁻⁸ low, reported converged without the flag)."""
    lam = np.r_[np.full(10, 1e4), np.full(2, 1e-2)]
    X = np.diag(np.sqrt(12 * lam))  # the linear kernel XXᵀ/d is diag(λ)
    C, noise = 2.0, 0.1
    net = fj.FCN(C, 1.0, 1.0, noise, fj.Linear())
    two_minima = np.r_[np.zeros(10), np.full(2, np.sqrt(10.0))]
    one_minimum = np.r_[np.full(10, 30.0), np.zeros(2)]
    z = np.linspace(-50, 50, 200_001)
    k = C / 2
    log_prior = k * np.log(k) - math.lgamma(k) + k * z - k * np.exp(z)  # of z = log u
    for Y in (two_minima, one_minimum):
        var = np.exp(z)[:, None] * lam + noise  # uK + σ²I in K's eigenbasis
        log_lik = -0.5 * np.sum(Y**2 / var + np.log(2 * np.pi * var), axis=1)
        lw = log_prior + log_lik  # −S, up to a constant
        saddle = fj.renormalise(net, X, Y, X[:2], method="saddle")
        assert bool(saddle.converged)
        np.testing.assert_allclose(np.log(float(saddle.scale)), z[np.argmax(lw)], atol=1e-3)
        mixture = fj.renormalise(net, X, Y, X[:2])
        assert bool(mixture.converged)
        top = lw.max()
        exact = top + np.log(np.trapezoid(np.exp(lw - top), z))
        np.testing.assert_allclose(float(mixture.log_evidence), exact, atol=1e-6)
    lam = np.r_[np.full(80, 1e4), np.full(20, 1e-2)]
    X, Y = np.diag(np.sqrt(100 * lam)), np.r_[np.zeros(80), np.full(20, 3.0)]
    net = fj.FCN(16.0, 1.0, 1.0, noise, fj.Linear())
    var = np.exp(z)[:, None] * lam + noise
    lw = 8 * z - 8 * np.exp(z) - 0.5 * np.sum(Y**2 / var + np.log(var), axis=1)
    saddle = fj.renormalise(net, X, Y, X[:2], method="saddle")
    assert bool(saddle.converged)
    np.testing.assert_allclose(np.log(float(saddle.scale)), z[np.argmax(lw)], atol=1e-3)
    assert not bool(fj.renormalise(net, X, Y, X[:2]).converged)


def test_cubic_interpolation_on_its_grid_only():
    """The depth-≥3 prior's table lookup (`_cubic_interpolation`): Catmull–Rom cubics are exact
    on a quadratic, and −∞ outside the grid start + i·step, beyond either end by any amount.
    (Stop 61 first tested the bounds on the offset within a cell, which let points up to
    about a grid's length past the end through.)"""
    from fls_jax._renorm import _cubic_interpolation

    start, step = -1.0, 0.25
    nodes = start + step * np.arange(9)
    inside = np.array([-1.0, -0.6, 0.1, 0.55, 1.0])
    outside = np.array([-3.0, -1.01, 1.01, 1.2, 2.0, 2.9])
    got = _cubic_interpolation(
        jnp.asarray(np.concatenate([inside, outside])),
        jnp.asarray(start),
        jnp.asarray(step),
        jnp.asarray(nodes**2 + 0.5 * nodes),
    )
    np.testing.assert_allclose(got[: inside.size], inside**2 + 0.5 * inside, rtol=0, atol=1e-14)
    assert np.all(np.isneginf(np.asarray(got[inside.size :])))
