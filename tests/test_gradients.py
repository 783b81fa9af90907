"""Issue 5: gradients of predictions through the solved EoS, and `tune`.

Every derivative is checked against something computed another way: central finite differences
of the same pipeline, the gradient of GP regression written directly in the test, or a
brute-force scan of the objective.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

import fls_jax as fj


FIELDS = ("noise", "sigma_w2", "sigma_a2", "width")


def _net(arch, kind, width):
    act = {"linear": fj.Linear(), "erf": fj.Erf(), "relu": fj.ReLU()}[kind]
    kw = dict(width=width, sigma_w2=1.3, sigma_a2=0.8, noise=0.02, activation=act)
    return fj.PatchCNN(patch_size=4, **kw) if arch == "patchcnn" else fj.FCN(**kw)


def _pipeline(arch, kind, width, task):
    """test error as a function of (θ = hyper-parameters, X), jitted once per case."""
    net = _net(arch, kind, width)

    @jax.jit
    def loss(theta, X):
        n = eqx.tree_at(lambda m: [getattr(m, f) for f in FIELDS], net, list(theta))
        sol = fj.solve(n, X, task.Y)
        pred = fj.predict(sol, task.X_test, task.Y_test)
        return pred.test_error, (pred.chi, sol.converged)

    theta = jnp.asarray([float(getattr(net, f)) for f in FIELDS])
    return loss, theta


# Widths where feature learning is strong on the linear-teacher task (χ ≥ 1 is asserted below;
# the FCN sees the whole 12-d input). tests/test_solve.py checks the erf FCN at C = 8 as well.
# ReLU: its kernel's second derivatives were NaN under `lax.scan` on the diagonal, where
# ρ = 1 (`fls_jax._activation._arccos_j1_jvp`), so every ReLU gradient failed.
STRONG = [
    ("patchcnn", "linear", 2.0),
    pytest.param("patchcnn", "erf", 2.0, marks=pytest.mark.slow),
    ("fcn", "erf", 1.0),
    pytest.param("fcn", "relu", 1.0, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch,kind,width", STRONG)
def test_hyperparameter_and_input_gradients_match_finite_differences(arch, kind, width, patch_task):
    task = patch_task
    loss, theta = _pipeline(arch, kind, width, task)
    X = jnp.asarray(task.X)
    # One compiled program for the gradient and the finite differences' values alike.
    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, (chi, ok)), (g_theta, g_X) = value_and_grad(theta, X)
    assert bool(ok) and float(chi) >= 1.0, f"want strong feature learning, χ = {float(chi)}"

    def f(t, x):
        return float(value_and_grad(t, x)[0][0])

    for i, name in enumerate(FIELDS):
        h = 1e-4 * theta[i]
        e = jnp.zeros_like(theta).at[i].set(h)
        fd = (f(theta + e, X) - f(theta - e, X)) / (2 * h)
        np.testing.assert_allclose(g_theta[i], fd, rtol=1e-5, err_msg=name)
    # Inputs: a random direction in X-space.
    V = jnp.asarray(np.random.default_rng(0).standard_normal(X.shape))
    h = 1e-5
    fd = (f(theta, X + h * V) - f(theta, X - h * V)) / (2 * h)
    np.testing.assert_allclose(jnp.sum(g_X * V), fd, rtol=1e-5)
    if (arch, kind) == ("patchcnn", "erf"):
        # Forward mode through the implicit adjoint (lineax's forward rule solves with the
        # Jacobian itself, not its transpose) equals the reverse-mode gradient checked above.
        # Here, on the same compiled pipeline, rather than in a test of its own.
        fwd = jax.jit(jax.jacfwd(lambda t: loss(t, X)[0]))(theta)
        np.testing.assert_allclose(fwd, g_theta, rtol=1e-8)


def _gp_nll_and_test_error(params, X, Y, X_test, Y_test, S):
    """Linear PatchCNN GP regression written directly: NNGP = σ_a² σ_w²/S · mean_p X_p X_pᵀ."""
    noise, sw2, sa2 = params

    def gram(A, B):
        Ap = A.reshape(len(A), -1, S)
        Bp = B.reshape(len(B), -1, S)
        return sa2 * sw2 / S * jnp.einsum("nps,mps->nm", Ap, Bp) / Ap.shape[1]

    K = gram(X, X) + noise * jnp.eye(len(X))
    alpha = jnp.linalg.solve(K, Y)
    nll = 0.5 * jnp.sum(Y * alpha) + 0.5 * jnp.linalg.slogdet(K)[1]
    nll = nll + 0.5 * Y.size * jnp.log(2 * jnp.pi)
    mean = gram(X_test, X) @ alpha
    return nll, jnp.mean((mean - Y_test) ** 2)


def test_gp_limit_gradients_equal_direct_gp_regression_gradients(patch_task):
    t = patch_task
    net = _net("patchcnn", "linear", jnp.inf)
    fields = ("noise", "sigma_w2", "sigma_a2")

    @jax.jit
    def ours(p):
        n = eqx.tree_at(lambda m: [getattr(m, f) for f in fields], net, list(p))
        sol = fj.solve(n, t.X, t.Y)
        return sol.free_energy, fj.predict(sol, t.X_test, t.Y_test).test_error

    p = jnp.asarray([0.02, 1.3, 0.8])
    args = (jnp.asarray(t.X), jnp.asarray(t.Y), jnp.asarray(t.X_test), jnp.asarray(t.Y_test), 4)
    J_ours = jax.jit(jax.jacrev(ours))(p)  # one program each, rather than op by op
    J_gp = jax.jit(jax.jacrev(_gp_nll_and_test_error), static_argnums=5)(p, *args)
    np.testing.assert_allclose(J_ours[0], J_gp[0], rtol=1e-9)
    np.testing.assert_allclose(J_ours[1], J_gp[1], rtol=1e-9)


@pytest.mark.slow
def test_gradient_on_real_data_with_blank_pixels_matches_finite_differences():
    """d(test error)/dσ_w² of an erf FCN on the digits' pixels (n = 64, d = 64: five pixels
    are zero in every image), by the implicit adjoint against central differences. The
    adjoint's cotangent is zero in those pixels' rows, where lineax's GMRES used to read its
    entrywise test as converged one restart cycle early: 1.2·10⁻⁶ relative error then, under
    10⁻⁸ with `fj.RelativeGMRES` (measured while fixing it)."""
    pytest.importorskip("sklearn")
    t = fj.datasets.digits(64, 128, labels="parity", seed=1)
    assert np.sum(np.all(t.X == 0, axis=0)) > 0  # the case under test
    X, Y, Xt, Yt = (jnp.asarray(a) for a in (t.X, t.Y, t.X_test, t.Y_test))

    def loss(sigma_w2):
        sol = fj.solve(fj.FCN(16.0, sigma_w2, 1.0, 0.01, fj.Erf()), X, Y)
        return fj.predict(sol, Xt, Yt).test_error

    value_and_grad = jax.jit(jax.value_and_grad(loss))  # one program for both
    g = value_and_grad(1.0)[1]
    h = 1e-4
    fd = (value_and_grad(1.0 + h)[0] - value_and_grad(1.0 - h)[0]) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-7)


def test_gradient_through_failed_solve_is_finite_and_flagged(fcn_task):
    net = _net("fcn", "erf", 1.0)

    def loss(noise):
        sol = fj.solve(
            eqx.tree_at(lambda m: m.noise, net, noise),
            fcn_task.X,
            fcn_task.Y,
            max_steps=1,
            max_stages=1,
        )
        return fj.predict(sol, fcn_task.X_test, fcn_task.Y_test).test_error, sol.converged

    (value, ok), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(0.02))
    assert not bool(ok)
    assert bool(jnp.isfinite(value)) and bool(jnp.isfinite(g))


def test_vmapped_gradient_over_widths_equals_loop(patch_task):
    """Each element of a vmapped gradient equals its own. One element with a NaN cotangent
    (weight NaN) gets a NaN gradient and leaves the others alone: its adjoint's right side
    is NaN, and lineax's error for it aborted the whole batch."""
    t = patch_task
    net = _net("patchcnn", "linear", 1.0)

    def loss(noise, width, weight):
        n = eqx.tree_at(lambda m: [m.noise, m.width], net, [noise, width])
        return weight * fj.predict(fj.solve(n, t.X, t.Y), t.X_test, t.Y_test).test_error

    grad = jax.jit(jax.grad(loss))
    widths, weights = jnp.asarray([3.0, 10.0, 40.0]), jnp.asarray([1.0, 1.0, jnp.nan])
    batched = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(
        jnp.asarray(0.02), widths, weights
    )
    for k, C in enumerate(widths[:2]):
        np.testing.assert_allclose(batched[k], grad(jnp.asarray(0.02), C, 1.0), rtol=1e-9)
    assert bool(jnp.isnan(batched[2]))


# ------------------------------------------------------------------------------------- tune


def test_tune_finds_the_evidence_optimum_of_the_noise(patch_task):
    """Tuning σ² on F in the GP limit must land on the maximum-evidence σ², found here by a
    bounded scalar search on the directly written GP marginal likelihood (labels made noisy,
    so that the optimum is interior)."""
    import optax

    t = patch_task
    Y = t.Y + 0.2 * np.random.default_rng(5).standard_normal(t.Y.shape)
    args = (jnp.asarray(t.X), jnp.asarray(Y), jnp.asarray(t.X_test), jnp.asarray(t.Y_test), 4)

    def nll(log_noise):
        p = jnp.asarray([np.exp(log_noise), 1.3, 0.8])
        return float(_gp_nll_and_test_error(p, *args)[0])

    opt = minimize_scalar(nll, bounds=(-10, 2), method="bounded", options={"xatol": 1e-9})
    assert -9 < opt.x < 1  # interior
    steps = 120
    res = fj.tune(
        _net("patchcnn", "linear", jnp.inf),
        t.X,
        Y,
        params="noise",  # one name as a string (it was read letter by letter)
        objective="free_energy",
        optimizer=optax.adam(optax.cosine_decay_schedule(0.2, steps)),
        steps=steps,
        progress=False,
    )
    assert res.converged
    assert res.history["objective"].shape == (steps,)
    assert res.history["objective"][-1] < res.history["objective"][0]
    np.testing.assert_allclose(float(res.network.noise), np.exp(opt.x), rtol=1e-3)
    np.testing.assert_allclose(res.history["objective"].min(), opt.fun, rtol=1e-7)


@pytest.mark.slow
def test_tune_validation_error_respects_bounds_and_improves(patch_task):
    t = patch_task
    res = fj.tune(
        _net("patchcnn", "linear", 4.0),
        t.X,
        t.Y,
        params=("sigma_w2", "noise"),
        X_val=t.X_test,
        Y_val=t.Y_test,
        bounds={"noise": (1e-3, 0.05)},
        steps=25,
        progress=False,
    )
    assert res.converged
    h = res.history
    assert np.all((h["noise"] > 1e-3) & (h["noise"] < 0.05))
    assert h["objective"].min() < h["objective"][0]
    best = fj.predict(res.solution, t.X_test, t.Y_test).test_error
    np.testing.assert_allclose(best, h["objective"].min(), rtol=1e-10)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(params=("depth",)), "cannot tune"),
        (dict(params=()), "at least one"),
        (dict(params=("noise",), bounds={"sigma_w2": (0.1, 1.0)}), "not tuned"),
        (dict(params=("noise",), bounds={"noise": (0.1, 1.0)}), "outside its bounds"),
        (dict(params=("noise",), objective="validation_error"), "X_val and Y_val"),
        (dict(params=("noise",), objective="nope"), "objective must be"),
        (dict(params=("noise",), bounds={"noise": 0.1}), "pair of numbers"),
        (dict(params=("noise",), bounds={"noise": (0.1, 1.0, 2.0)}), "pair of numbers"),
        (dict(params=("noise",), steps=2.0), "integer"),
        (dict(params=("noise",), optimizer="adam"), "GradientTransformation"),
    ],
)
def test_tune_bad_input(kwargs, match, patch_task):
    t = patch_task
    kwargs = {"objective": "free_energy", "steps": 1, "progress": False} | kwargs
    with pytest.raises(ValueError if "optimizer" not in kwargs else TypeError, match=match):
        fj.tune(_net("patchcnn", "linear", 4.0), t.X, t.Y, **kwargs)


def test_tune_names_a_bad_objective(patch_task):
    """A callable objective that is not a scalar, or not finite where the solve converged:
    they raised JAX's "Gradient only defined for scalar-output functions", and "the first
    solve did not converge" (it had)."""
    t, net = patch_task, _net("patchcnn", "linear", 4.0)
    kwargs = {"params": ("noise",), "steps": 1, "progress": False}
    with pytest.raises(ValueError, match=r"objective must return a scalar, got shape \(4, 4\)"):
        fj.tune(net, t.X, t.Y, objective=lambda s: s.sigma, **kwargs)
    with pytest.raises(RuntimeError, match=r"objective is inf .* at a converged solve"):
        fj.tune(net, t.X, t.Y, objective=lambda s: jnp.inf + s.free_energy, **kwargs)
