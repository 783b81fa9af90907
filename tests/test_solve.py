"""The EoS engine against independent computations (SPEC §2–4).

Every reference here is written in plain NumPy in this file: GP regression with the NNGP
kernel, the linear PatchCNN EoS in closed form and their fixed-point iteration, the erf EoS
with a hand-derived kernel derivative, and central finite differences.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
import pytest
from scipy.special import erf

import fls_jax as fj
from fls_jax._linalg import _pack


def _patches(X, S):
    n, d = X.shape
    return np.transpose(X.reshape(n, d // S, S), (1, 0, 2))


def _phi_np(kind, a, b, c):
    if kind == "linear":
        return c + 0 * (a + b)
    if kind == "erf":
        return 2 / np.pi * np.arcsin(2 * c / np.sqrt((1 + 2 * a) * (1 + 2 * b)))
    ab = np.sqrt(a * b)
    cos = np.clip(c / ab, -1, 1)
    th = np.arccos(cos)
    return ab / (2 * np.pi) * (np.sin(th) + (np.pi - th) * cos)


def _nngp(kind, X1, X2, S, sigma_w2, sigma_a2):
    """Q_f at Σ = Σ₀ = σ_w²/S I, built directly from the closed forms (SPEC §2)."""
    P1, P2 = _patches(X1, S), _patches(X2, S)
    s0 = sigma_w2 / S
    a = s0 * np.einsum("pns,pns->pn", P1, P1)
    b = s0 * np.einsum("pns,pns->pn", P2, P2)
    c = s0 * np.einsum("pns,pms->pnm", P1, P2)
    return sigma_a2 * np.mean(_phi_np(kind, a[:, :, None], b[:, None, :], c), axis=0)


CASES = [
    ("patchcnn", "linear"),
    ("fcn", "erf"),
    ("fcn", "relu"),
]


def _make(arch, kind, width, task, **kw):
    act = {"linear": fj.Linear(), "erf": fj.Erf(), "relu": fj.ReLU()}[kind]
    args = dict(width=width, sigma_w2=1.3, sigma_a2=0.8, noise=0.02, activation=act) | kw
    if arch == "patchcnn":
        return fj.PatchCNN(patch_size=4, **args), 4
    return fj.FCN(**args), task.X.shape[1]


@pytest.mark.parametrize("arch,kind", CASES)
def test_gp_limit_equals_direct_gp_regression(arch, kind, patch_task, fcn_task):
    task = patch_task if arch == "patchcnn" else fcn_task
    # At C = 1e9 the EoS shift Σ by O(|∂tr[AQ_f]|/C) ≈ 1e-8 relative on this data (physics,
    # not error), so the 1e-8 comparison with the GP is made at C = 1e10.
    net, S = _make(arch, kind, 1e10, task)
    sol = fj.solve(net, task.X, task.Y)
    pred = fj.predict(sol, task.X_test, task.Y_test)
    assert bool(sol.converged)
    sigma0 = 1.3 / S * np.eye(S)
    assert np.linalg.norm(sol.sigma - sigma0) < 1e-8 * np.linalg.norm(sigma0)

    K = _nngp(kind, task.X, task.X, S, 1.3, 0.8) + 0.02 * np.eye(len(task.X))
    Ks = _nngp(kind, task.X_test, task.X, S, 1.3, 0.8)
    kss = np.diag(_nngp(kind, task.X_test, task.X_test, S, 1.3, 0.8))
    mean = Ks @ np.linalg.solve(K, task.Y)
    var = kss - np.einsum("ij,ji->i", Ks, np.linalg.solve(K, Ks.T))
    np.testing.assert_allclose(pred.mean, mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(pred.variance, var, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(pred.test_error, np.mean((mean - task.Y_test) ** 2), rtol=1e-8)
    # F at C = ∞ is the GP negative log marginal likelihood.
    sol = fj.solve(eqx.tree_at(lambda m: m.width, net, jnp.asarray(jnp.inf)), task.X, task.Y)
    n = len(task.X)
    nll = 0.5 * task.Y[:, 0] @ np.linalg.solve(K, task.Y[:, 0])
    nll += 0.5 * np.linalg.slogdet(K)[1] + 0.5 * n * np.log(2 * np.pi)
    np.testing.assert_allclose(sol.free_energy, nll, rtol=1e-8)


def test_infinite_width_is_exact_gp(patch_task):
    net, _ = _make("patchcnn", "linear", jnp.inf, patch_task)
    sol = fj.solve(net, patch_task.X, patch_task.Y)
    assert bool(sol.converged) and int(sol.num_steps) == 0
    np.testing.assert_allclose(sol.sigma, 1.3 / 4 * np.eye(4), rtol=1e-15, atol=1e-16)


def _linear_patch_rhs(Sigma, X, Y, S, C, sigma_w2, sigma_a2, noise):
    """Right-hand side of the closed linear-PatchCNN EoS (SPEC §3)."""
    Xp = _patches(X, S)
    P = Xp.shape[0]
    Qf = sigma_a2 / P * sum(Xi @ Sigma @ Xi.T for Xi in Xp)
    Kinv = np.linalg.inv(Qf + noise * np.eye(len(X)))
    T = Kinv @ Y
    A = T @ T.T - Y.shape[1] * Kinv
    return S / sigma_w2 * np.eye(S) - sigma_a2 / (C * P) * sum(Xi.T @ A @ Xi for Xi in Xp)


@pytest.mark.parametrize("width", [4.0, 32.0])
def test_linear_patchcnn_closed_form_eos_and_numpy_fixed_point(width, patch_task):
    X, Y = patch_task.X, patch_task.Y
    net, S = _make("patchcnn", "linear", width, patch_task)
    sol = fj.solve(net, X, Y)
    assert bool(sol.converged) and float(sol.residual) < 1e-10
    Sigma = np.asarray(sol.sigma)
    rhs = _linear_patch_rhs(Sigma, X, Y, S, width, 1.3, 0.8, 0.02)
    inv = np.linalg.inv(Sigma)
    assert np.linalg.norm(inv - rhs) / np.linalg.norm(inv) < 1e-10

    # Independent solver: a damped fixed-point iteration in the precision domain.
    lam = S / 1.3 * np.eye(S)
    for _ in range(5000):
        new = _linear_patch_rhs(np.linalg.inv(lam), X, Y, S, width, 1.3, 0.8, 0.02)
        if np.linalg.norm(new - lam) < 1e-13 * np.linalg.norm(lam):
            break
        lam = 0.5 * lam + 0.5 * new
    np.testing.assert_allclose(Sigma, np.linalg.inv(lam), rtol=1e-9, atol=1e-12)


def _erf_fcn_eos_residual(Sigma, X, Y, C, sigma_w2, sigma_a2, noise):
    """Erf FCN EoS with the kernel derivative written by hand (SPEC §2–3)."""
    n, d = X.shape
    K = X @ Sigma @ X.T
    a = np.diag(K)
    D = np.sqrt(np.outer(1 + 2 * a, 1 + 2 * a))
    u = 2 * K / D
    Qf = sigma_a2 * 2 / np.pi * np.arcsin(u)
    Kinv = np.linalg.inv(Qf + noise * np.eye(n))
    T = Kinv @ Y
    A = T @ T.T - Y.shape[1] * Kinv
    dphi_du = sigma_a2 * 2 / np.pi / np.sqrt(1 - u**2)
    phi_c = dphi_du * 2 / D
    phi_a = dphi_du * (-u / (1 + 2 * a)[:, None])  # ∂/∂a with a = K_μμ of the row
    M = A * phi_c + np.diag((A * phi_a).sum(1) + (A * phi_a.T).sum(0))
    G = X.T @ M @ X
    return d / sigma_w2 * np.eye(d) - np.linalg.inv(Sigma) - G / C


@pytest.mark.parametrize("width", [2.0, 8.0, 64.0])
def test_erf_fcn_satisfies_hand_derived_eos(width, fcn_task):
    net, _ = _make("fcn", "erf", width, fcn_task)
    sol = fj.solve(net, fcn_task.X, fcn_task.Y)
    assert bool(sol.converged)
    R = _erf_fcn_eos_residual(np.asarray(sol.sigma), fcn_task.X, fcn_task.Y, width, 1.3, 0.8, 0.02)
    assert np.linalg.norm(R) / np.linalg.norm(sol.precision) < 1e-9


def test_free_energy_minimiser_at_one_hidden_layer(fcn_task):
    """`minimise_free_energy`, the trust-region Newton–CG of `solve(minimise=True)`, at one
    hidden layer, where its unknowns are Λ alone (no K^(l), the whitening Λ^{1/2}): from the
    prior Λ = d/σ_w² I at C = 2, where the GP limit is far from the root (‖R‖ ≈ 8‖Λ‖), it
    reaches the root of the hand-derived EoS in tens of iterations (19 on the development
    machine), the continuation's solution (the deep networks' tests run it at depth 3)."""
    from fls_jax._minimise import minimise_free_energy

    X, Y = fcn_task.X, fcn_task.Y
    d = X.shape[1]
    net = _make("fcn", "erf", 2.0, fcn_task)[0]
    lam0 = d / 1.3 * jnp.eye(d, dtype=jnp.float64)
    R0 = _erf_fcn_eos_residual(np.linalg.inv(lam0), X, Y, 2.0, 1.3, 0.8, 0.02)
    assert np.linalg.norm(R0) / np.linalg.norm(lam0) > 1
    run = jax.jit(lambda lam: minimise_free_energy(net, X, Y, lam, (), jnp.array(True)))
    lam, shifts, iterations, products = run(lam0)
    assert shifts == () and 1 < int(iterations) < 100 and int(products) > int(iterations)
    Sigma = np.linalg.inv(np.asarray(lam))
    R = _erf_fcn_eos_residual(Sigma, X, Y, 2.0, 1.3, 0.8, 0.02)
    assert np.linalg.norm(R) / np.linalg.norm(lam) < 1e-11
    fresh = fj.solve(net, X, Y)
    np.testing.assert_allclose(Sigma, fresh.sigma, rtol=1e-9, atol=1e-11)


def test_precision0_starts_there_without_a_continuation(fcn_task):
    # From the C = 8 solution, C = 6 is one root find from `precision0` (no continuation
    # stage) to the root the continuation from the GP limit reaches, held to the
    # hand-derived EoS. With one iteration per solver it fails, says so, and returns its start.
    X, Y = fcn_task.X, fcn_task.Y
    start = fj.solve(_make("fcn", "erf", 8.0, fcn_task)[0], X, Y)
    net = _make("fcn", "erf", 6.0, fcn_task)[0]
    fresh = fj.solve(net, X, Y)
    warm = fj.solve(net, X, Y, precision0=start.precision)
    assert bool(warm.converged) and int(warm.num_stages) == 0 and int(warm.num_steps) > 0
    assert float(warm.width_reached) == 6.0
    np.testing.assert_allclose(warm.sigma, fresh.sigma, rtol=1e-8, atol=1e-12)
    R = _erf_fcn_eos_residual(np.asarray(warm.sigma), X, Y, 6.0, 1.3, 0.8, 0.02)
    assert np.linalg.norm(R) / np.linalg.norm(warm.precision) < 1e-9
    stuck = fj.solve(net, X, Y, precision0=start.precision, max_steps=1)
    assert not bool(stuck.converged)
    assert stuck.result == optx.RESULTS.nonlinear_max_steps_reached
    np.testing.assert_allclose(stuck.precision, start.precision, rtol=1e-15)
    assert np.isnan(float(stuck.width_reached))  # its start solves no known width


def test_matrix_free_newton_for_many_unknowns(fcn_task):
    # Above 256 first-layer unknowns the Newton system is solved by GMRES on Jacobian-vector
    # products; here it is forced on the small task and held to the same hand-derived EoS,
    # through the continuation (C = 2, strong feature learning).
    from fls_jax._solve import _krylov, _newton

    assert isinstance(_newton(jnp.float64, 1, 22).linear_solver, fj.DenseLU)  # 253
    assert isinstance(_newton(jnp.float64, 1, 23).linear_solver, fj.RelativeGMRES)  # 276
    net, _ = _make("fcn", "erf", 2.0, fcn_task)
    newton = fj.DampedNewton(rtol=1e-11, atol=0.0, linear_solver=_krylov(1e-4))
    sol = fj.solve(net, fcn_task.X, fcn_task.Y, solver=newton)
    assert bool(sol.converged) and int(sol.num_stages) > 1
    R = _erf_fcn_eos_residual(np.asarray(sol.sigma), fcn_task.X, fcn_task.Y, 2.0, 1.3, 0.8, 0.02)
    assert np.linalg.norm(R) / np.linalg.norm(sol.precision) < 1e-9

    # The default chain tries Anderson acceleration first and falls back to Newton where it
    # fails: with Anderson capped at 2 iterations it fails at every stage, and the chain must
    # then walk exactly Newton's path, 2 Anderson iterations more per stage.
    anderson = fj.Anderson(rtol=1e-11, atol=0.0)
    chain = fj.solve(net, fcn_task.X, fcn_task.Y, solver=(anderson, newton), max_steps=(2, 12))
    assert bool(chain.converged) and int(chain.num_stages) == int(sol.num_stages)
    assert int(chain.num_steps) == int(sol.num_steps) + 2 * int(sol.num_stages)
    np.testing.assert_allclose(chain.sigma, sol.sigma, rtol=1e-13, atol=1e-15)


def test_free_energy_gradient_gives_the_eos_residual(fcn_task, rng):
    # The descent's handover rule reads the EoS residual off the gradient of F/C in the
    # packed precision, R = −2 Λ (∂f/∂Λ) Λ: checked against eos_residual away from the root.
    from fls_jax._descent import _residual_from_gradient
    from fls_jax._solve import _pack, _state_free_energy

    net, d = _make("fcn", "erf", 3.0, fcn_task)
    A = rng.normal(size=(d, d))
    lam = d / 1.3 * (np.eye(d) + 0.1 * (A + A.T) / np.linalg.norm(A + A.T, 2))
    y = _pack(jnp.asarray(lam))

    @jax.jit  # one program: op by op this costs ~300 small compilations
    def residuals(y, lam, net, X, Y):
        g = jax.grad(_state_free_energy)(y, (net, X, Y))
        return *_residual_from_gradient(y, g), fj.eos_residual(lam, net, X, Y)

    X, Y = jnp.asarray(fcn_task.X), jnp.asarray(fcn_task.Y)
    R, Lam, ref = residuals(y, jnp.asarray(lam), net, X, Y)
    np.testing.assert_allclose(Lam, lam, rtol=1e-15)
    np.testing.assert_allclose(R, ref, rtol=1e-9, atol=1e-9 * float(jnp.abs(ref).max()))
    assert float(jnp.abs(ref).max()) > 1e-2  # a point off the solution


@pytest.mark.parametrize("use_inverse", [True, False])
def test_free_energy_bfgs_updates_its_curvature_as_optimistix_bfgs(use_inverse):
    # FreeEnergyBFGS keeps its curvature as a dense matrix (optimistix's pytree operator
    # fails inside shard_map); with its own stopping rule off it must take optimistix
    # BFGS's steps, on a function that is not the free energy (6-d Rosenbrock).
    def rosenbrock(y, args):
        return jnp.sum(100 * (y[1:] - y[:-1] ** 2) ** 2 + (1 - y[:-1]) ** 2)

    y0 = jnp.array([-1.2, 1.0, -0.5, 0.3, 0.8, -1.0])
    ours = fj.FreeEnergyBFGS(handover=0.0, use_inverse=use_inverse)
    ref = optx.BFGS(rtol=0.0, atol=0.0, use_inverse=use_inverse)
    a = optx.minimise(rosenbrock, ours, y0, max_steps=20, throw=False)
    b = optx.minimise(rosenbrock, ref, y0, max_steps=20, throw=False)
    assert float(rosenbrock(a.value, None)) < 0.5 * float(rosenbrock(y0, None))
    np.testing.assert_allclose(a.value, b.value, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_free_energy_descent_brings_newton_within_reach(fcn_task):
    # At C = 1 damped Newton from the GP limit needs a continuation (the test above, at
    # C = 2). The BFGS descent on F from there stops at a relative residual of 1e-2
    # (measured here with the package's residual). With Anderson capped at 2 iterations
    # solver="descent" fails its first stage (Anderson alone), so a later stage must go
    # through the descent and Newton, from the continuation's last converged point; it
    # reaches the hand-derived EoS and the solution of the chain without the descent.
    from fls_jax._solve import _gp_state, _state_free_energy, _state_residual, _unpack

    net, d = _make("fcn", "erf", 1.0, fcn_task)
    X, Y = fcn_task.X, fcn_task.Y
    descent = fj.FreeEnergyBFGS(handover=1e-2)
    start = optx.minimise(
        _state_free_energy, descent, _gp_state(net, X), args=(net, X, Y), max_steps=1000
    )
    rel = lambda y: float(  # noqa: E731
        jnp.linalg.norm(_state_residual(y, (net, X, Y))) / jnp.linalg.norm(_unpack(y, d))
    )
    assert rel(start.value) <= 1e-2 < rel(_gp_state(net, X))
    assert 1 < int(start.stats["num_steps"]) < 1000

    # solver="descent" is (Anderson, FreeEnergyBFGS(handover=1e-2), Newton).
    sol = fj.solve(net, X, Y, solver="descent", max_steps=(2, 1000, 12))
    # Stage 1 tries u = f (the aimed first stage, `_first_fraction`) with Anderson alone and
    # fails; from then on every stage runs the descent and Newton and succeeds, the step
    # doubling: u = f/4, 3f/4, 7f/4, …, 1. Had a success switched the descent off again,
    # each following stage would fail and quarter the step.
    from fls_jax._solve import _first_fraction

    f = float(_first_fraction(_state_residual, net, X, Y, jnp.asarray(0.0), _gp_state(net, X)))
    successes = next(k for k in range(1, 64) if (2**k - 1) * f / 4 >= 1)
    assert bool(sol.converged) and int(sol.num_stages) == 1 + successes
    R = _erf_fcn_eos_residual(np.asarray(sol.sigma), X, fcn_task.Y, 1.0, 1.3, 0.8, 0.02)
    assert np.linalg.norm(R) / np.linalg.norm(sol.precision) < 1e-9
    ref = fj.solve(net, X, Y, solver="anderson-newton")
    assert bool(ref.converged)
    np.testing.assert_allclose(sol.sigma, ref.sigma, atol=1e-9 * float(jnp.abs(ref.sigma).max()))
    # The same chain with the descent started from Σ-whitened curvature: the same solution
    # (F has one minimum here) in fewer iterations (103 against 379 when written).
    white = fj.solve(net, X, Y, solver="whitened-descent", max_steps=(2, 1000, 12))
    assert bool(white.converged) and int(white.num_stages) == int(sol.num_stages)
    assert int(white.num_steps) < 0.5 * int(sol.num_steps), (white.num_steps, sol.num_steps)
    np.testing.assert_allclose(white.sigma, ref.sigma, atol=1e-9 * float(jnp.abs(ref.sigma).max()))


def test_anderson_failure_is_reported_per_element(fcn_task):
    # Anderson alone, one stage of 30 iterations, vmapped over an easy and a hard width: the
    # easy one converges to the default solver's root, the hard one says it did not, with
    # finite values (the last finite iterate), not NaN.
    net, _ = _make("fcn", "erf", 1.0, fcn_task)
    anderson = fj.Anderson(rtol=1e-11, atol=0.0, memory=30)

    def run(C):
        n = eqx.tree_at(lambda m: m.width, net, C)
        return fj.solve(n, fcn_task.X, fcn_task.Y, solver=anderson, max_steps=30, max_stages=1)

    sols = jax.jit(jax.vmap(run))(jnp.array([4096.0, 0.25]))
    assert [bool(c) for c in sols.converged] == [True, False]
    assert bool(jnp.all(jnp.isfinite(sols.sigma))) and float(sols.residual[1]) > 1e-10
    # The failed element says how far it got: its one stage aimed at a wider width
    # (`_first_fraction`) and converged there, and its Σ solves the EoS at that width.
    reached = float(sols.width_reached[1])
    assert float(sols.width_reached[0]) == 4096.0 and 0.25 < reached < np.inf
    X, Y = fcn_task.X, fcn_task.Y
    R = _erf_fcn_eos_residual(np.asarray(sols.sigma[1]), X, Y, reached, 1.3, 0.8, 0.02)
    assert np.linalg.norm(R) / np.linalg.norm(sols.precision[1]) < 1e-9
    wide = eqx.tree_at(lambda m: m.width, net, jnp.asarray(4096.0))
    ref = fj.solve(wide, fcn_task.X, fcn_task.Y)
    np.testing.assert_allclose(sols.sigma[0], ref.sigma, rtol=1e-9, atol=1e-13)


class _CountingNewton(fj.DampedNewton):
    """Damped Newton that counts its steps on the host (also inside vmapped loops)."""

    def step(self, fn, y, args, options, state, tags):
        jax.debug.callback(_NEWTON_STEPS.append, 1)
        return super().step(fn, y, args, options, state, tags)


_NEWTON_STEPS: list = []


@pytest.mark.slow
def test_vmapped_chain_skips_the_fallback_where_not_needed(fcn_task):
    # Under vmap the chain's `lax.cond` runs both branches; the fallback must still take no
    # step where every element's Anderson converged, and must run where Anderson failed.
    net, _ = _make("fcn", "erf", 1.0, fcn_task)
    newton = _CountingNewton(rtol=1e-11, atol=0.0)

    def run(C, anderson_steps):
        n = eqx.tree_at(lambda m: m.width, net, C)
        chain = (fj.Anderson(rtol=1e-11, atol=0.0, memory=30), newton)
        return fj.solve(n, fcn_task.X, fcn_task.Y, solver=chain, max_steps=(anderson_steps, 12))

    widths = jnp.array([4096.0, 1024.0])
    _NEWTON_STEPS.clear()
    sols = jax.jit(jax.vmap(lambda C: run(C, 200)))(widths)
    jax.effects_barrier()
    assert bool(jnp.all(sols.converged)) and len(_NEWTON_STEPS) == 0
    sols = jax.jit(jax.vmap(lambda C: run(C, 1)))(widths)  # Anderson cannot converge in 1
    jax.effects_barrier()
    assert bool(jnp.all(sols.converged)) and len(_NEWTON_STEPS) > 0


def test_anderson_patience_gives_up_on_a_stall_only():
    # R(y) = 1 + y² has no real root: the residual cannot keep halving, so with patience 5
    # Anderson gives up within a few iterations (without it, it runs to max_steps). On a
    # contraction, R(y) = b − y − 0.5 tanh(y), whose residual keeps halving, the same
    # patience does not stop it short of the root.
    def stall(y, _):
        return 1 + y**2

    def contraction(y, _):
        return jnp.linspace(-1.0, 1.0, 4) - y - 0.5 * jnp.tanh(y)

    def run(fn, patience):
        solver = fj.Anderson(rtol=1e-12, atol=0.0, memory=3, patience=patience)
        return optx.root_find(fn, solver, jnp.zeros(4), max_steps=100, throw=False)

    patient, impatient = run(stall, 0), run(stall, 5)
    assert int(patient.stats["num_steps"]) == 100
    assert int(impatient.stats["num_steps"]) <= 10
    assert impatient.result == optx.RESULTS.nonlinear_divergence
    sol = run(contraction, 5)
    assert sol.result == optx.RESULTS.successful
    np.testing.assert_allclose(contraction(sol.value, None), 0.0, atol=1e-11)


def test_anderson_adaptive_mixing_recovers_from_a_too_large_step():
    # R(y) = 50 (log y* − log y) is NaN outside y > 0, and the plain step y + R(y) from
    # y = 1 leaves that domain. With a fixed β = 1 every step is cut back and restarts the
    # history; adaptive mixing halves β on each cut instead, and the history builds up. Both
    # must reach the closed-form root y = y*; the adaptive run in far fewer iterations.
    target = jnp.linspace(0.5, 2.0, 4)

    def fn(y, _):
        return 50.0 * (jnp.log(target) - jnp.log(y))

    def run(adaptive):
        solver = fj.Anderson(rtol=1e-12, atol=0.0, memory=4, adaptive_mixing=adaptive)
        return optx.root_find(fn, solver, jnp.ones(4), max_steps=100, throw=False)

    fixed, adaptive = run(False), run(True)
    for sol in (fixed, adaptive):
        assert sol.result == optx.RESULTS.successful
        np.testing.assert_allclose(sol.value, target, rtol=1e-12)
    assert int(adaptive.stats["num_steps"]) <= 20
    assert int(fixed.stats["num_steps"]) >= 2 * int(adaptive.stats["num_steps"])


def test_anderson_on_a_linear_map_terminates_like_gmres_from_far_away():
    # On R(y) = b − A y with memory ≥ N, Anderson (type II, β = 1) is GMRES in exact
    # arithmetic (Walker & Ni 2011): the residual is zero after at most N + 1 steps. From a
    # start 10⁶ away the first differences are 10⁶× the last ones; a ridge relative to the
    # raw history's size then drowned the recent rows and took 122 steps here.
    N = 20
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    A = jnp.asarray(Q @ np.diag(np.geomspace(0.1, 50.0, N)) @ Q.T)
    b = jnp.asarray(rng.standard_normal(N))
    y_star = jnp.asarray(np.linalg.solve(np.asarray(A), np.asarray(b)))
    solver = fj.Anderson(rtol=1e-12, atol=0.0, memory=2 * N)
    sol = optx.root_find(lambda y, _: b - A @ y, solver, y_star + 1e6, max_steps=200, throw=False)
    assert sol.result == optx.RESULTS.successful
    assert int(sol.stats["num_steps"]) <= N + 5
    np.testing.assert_allclose(sol.value, y_star, rtol=0, atol=1e-9)


def test_learned_subspace_map_scales_the_named_components(rng):
    # For U = (u₁, u₂) orthonormal: M R = R + Σ_{i≤j} (D_ij − 1) ⟨Ê_ij, R⟩ Ê_ij
    # + Σ_i (c_i − 1) Σ_v ⟨F_iv, R⟩ F_iv over the Frobenius-orthonormal Ê_ij ∝ u_i u_jᵀ + u_j u_iᵀ
    # and F_iv = (u_i vᵀ + v u_iᵀ)/√2 (v an orthonormal basis of U⊥), written out here in
    # NumPy; on packed matrices its eigenvalues are the three D_ij, each c_i S − 2 times and 1
    # (the rest), so it is invertible and keeps R's roots.
    from fls_jax._linalg import _pack, _unpack
    from fls_jax._solve import _Subspace

    S, D, c = 5, np.array([[0.1, 0.3], [0.3, 0.5]]), np.array([0.4, 0.7])
    Q, _ = np.linalg.qr(rng.standard_normal((S, S)))
    U, V = Q[:, :2], Q[:, 2:]
    M = _Subspace(U=jnp.asarray(U), D=jnp.asarray(D), c=jnp.asarray(c))
    R = rng.standard_normal((S, S))
    R = R + R.T
    want = R.copy()
    for i in range(2):
        for j in range(i, 2):
            E = np.outer(U[:, i], U[:, j]) + np.outer(U[:, j], U[:, i])
            E /= np.linalg.norm(E)
            want += (D[i, j] - 1) * np.sum(E * R) * E
        for v in V.T:
            F = (np.outer(U[:, i], v) + np.outer(v, U[:, i])) / np.sqrt(2)
            want += (c[i] - 1) * np.sum(F * R) * F
    np.testing.assert_allclose(_unpack(M(_pack(jnp.asarray(R))), S), want, atol=1e-12)
    N = S * (S + 1) // 2
    packed = np.stack([np.asarray(M(e)) for e in jnp.eye(N)], axis=1)
    eig = np.sort(np.linalg.eigvals(packed).real)
    want_eig = [0.1, 0.3, 0.5] + [0.4] * (S - 2) + [0.7] * (S - 2) + [1] * (N - 3 - 2 * (S - 2))
    np.testing.assert_allclose(eig, np.sort(want_eig), atol=1e-12)


def test_learned_subspace_quotients_match_finite_differences(fcn_task):
    # On a two-index teacher at C = 4 (Σ learns two directions), the preconditioner's
    # quotients −⟨E, J E⟩/⟨E, E⟩ along E = u_i u_jᵀ + u_j u_iᵀ (i ≤ j, u the top two
    # eigenvectors of Σ) and along u_i z_iᵀ + z_i u_iᵀ (z_i ⊥ u₁, u₂) against central differences
    # of the EoS residual. With one direction, only u₁'s quotient; inactive, the identity.
    from fls_jax._linalg import _pack, _unpack
    from fls_jax._solve import _LearnedSubspace

    task = fj.datasets.multi_index_teacher(n=32, n_test=4, d=6, k=2, seed=2)
    net, _ = _make("fcn", "erf", 4.0, task)
    X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
    lam = np.asarray(fj.solve(net, X, Y).precision)
    S = lam.shape[0]
    residual = jax.jit(lambda L: fj.eos_residual(L, net, X, Y))
    fn = lambda v, _: (_pack(residual(_unpack(v, S))), None)  # noqa: E731
    y = _pack(jnp.asarray(lam))
    build = jax.jit(lambda active: _LearnedSubspace(directions=2).build(fn, y, None, active))
    M = build(jnp.asarray(True))
    U = np.linalg.eigh(np.linalg.inv(lam))[1][:, ::-1][:, :2]
    np.testing.assert_allclose(np.abs(np.sum(np.asarray(M.U) * U, axis=0)), 1, atol=1e-10)
    U = np.asarray(M.U)  # the same, signs included
    # Σ has learned the teacher's plane (principal cosines 0.998 and 0.994 when written)
    assert np.linalg.svd(task.teacher.T @ U, compute_uv=False).min() > 0.98
    z = np.asarray(jax.random.normal(jax.random.key(0), (S, 2), jnp.float64))
    z = z - U @ (U.T @ z)
    z /= np.linalg.norm(z, axis=0)
    h = 1e-6

    def quotient(a, b):
        E = np.outer(a, b) + np.outer(b, a)

        def R(t):
            return np.asarray(residual(jnp.asarray(lam + t * E)))

        return -np.sum(E * (R(h) - R(-h)) / (2 * h)) / np.sum(E * E)

    q = np.array([[quotient(U[:, i], U[:, j]) for j in range(2)] for i in range(2)])
    r = np.array([quotient(U[:, i], z[:, i]) for i in range(2)])
    assert q.min() > 1.5 and r.min() > 1.5  # both directions stiff, none at the floor
    np.testing.assert_allclose(1 / np.asarray(M.D), q, rtol=1e-6)
    np.testing.assert_allclose(1 / np.asarray(M.c), r, rtol=1e-6)
    one = _LearnedSubspace(directions=1).build(fn, y, None, jnp.asarray(True))
    np.testing.assert_allclose(1 / float(one.D[0, 0]), q[0, 0], rtol=1e-6)
    off = build(jnp.asarray(False))
    assert np.all(np.asarray(off.D) == 1) and np.all(np.asarray(off.c) == 1)


def test_first_stage_aims_where_the_gp_residual_is_one(fcn_task):
    # At the GP limit Λ = Σ₀⁻¹ the one-layer residual is 2u ∂_Σ D(Σ₀), linear in u = 1/C; the
    # first stage of a solve from there aims at the width where its relative (packed) norm is
    # 1, checked by evaluating the residual at that width.
    from fls_jax._solve import _first_fraction, _gp_state, _state_residual

    X, Y = jnp.asarray(fcn_task.X), jnp.asarray(fcn_task.Y)
    nets = [_make("fcn", "erf", C, fcn_task)[0] for C in (0.5, 1.0, 4.0)]
    lam0 = nets[0].prior_precision(X.shape[1])
    R = [np.asarray(fj.eos_residual(lam0, n, X, Y)) for n in nets]
    np.testing.assert_allclose(R[0], 2 * R[1], rtol=1e-12, atol=0)
    np.testing.assert_allclose(R[0], 8 * R[2], rtol=1e-12, atol=0)
    y0 = _gp_state(nets[0], X)
    frac = float(_first_fraction(_state_residual, nets[0], X, Y, jnp.asarray(0.0), y0))
    assert 0 < frac < 1
    first = eqx.tree_at(lambda m: m.width, nets[0], jnp.asarray(0.5 / frac))
    r = jnp.linalg.norm(_state_residual(y0, (first, X, Y))) / jnp.linalg.norm(y0)
    np.testing.assert_allclose(float(r), 1.0, rtol=1e-12)
    warm = _first_fraction(_state_residual, nets[0], X, Y, jnp.asarray(0.25), y0)
    assert float(warm) == 1.0  # from a converged width: the target directly


@pytest.mark.slow
def test_warm_start_preconditioner_keeps_the_roots_and_saves_iterations():
    # A path sweep down to C = 1 on a two-index teacher with the default chain, its
    # preconditioner on Σ's top three directions, on one, and off: the same free energies,
    # and far fewer iterations with three (80 against 131 with one and 517 without when
    # written; `benchmarks/warm_preconditioner.py` measures larger n and k-index teachers).
    from fls_jax._solve import _LearnedSubspace, _resolve_solver

    task = fj.datasets.multi_index_teacher(n=32, n_test=4, d=6, k=2, seed=2)
    net, _ = _make("fcn", "erf", 1.0, task)
    X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
    default = _resolve_solver(None, X.dtype, 1, X.shape[1])
    assert default[0].preconditioner == _LearnedSubspace(directions=3)
    one = eqx.tree_at(lambda c: c[0].preconditioner, default, _LearnedSubspace(directions=1))
    off = eqx.tree_at(lambda c: c[0].preconditioner, default, None, is_leaf=lambda x: x is None)
    widths = jnp.array([64.0, 16.0, 4.0, 1.0])
    runs = [
        fj.sweep(net, X, Y, widths, X[:4], schedule="path", solver=c)[0]
        for c in (default, one, off)
    ]
    assert all(bool(jnp.all(s.converged)) for s in runs)
    for s in runs[1:]:
        np.testing.assert_allclose(runs[0].free_energy, s.free_energy, rtol=1e-9)
    steps = [int(jnp.sum(s.num_steps)) for s in runs]
    assert steps[0] < 0.8 * steps[1] and steps[0] < 0.5 * steps[2], steps


@pytest.mark.parametrize("arch,kind", CASES)
def test_free_energy_is_stationary_at_the_solution(arch, kind, patch_task, fcn_task):
    task = patch_task if arch == "patchcnn" else fcn_task
    net, S = _make(arch, kind, 6.0, task)
    sol = fj.solve(net, task.X, task.Y)
    assert bool(sol.converged)
    g = jax.grad(fj.free_energy, argnums=1)(
        net, sol.sigma, jnp.asarray(task.X), jnp.asarray(task.Y)
    )
    scale = 6.0 * np.linalg.norm(sol.precision) / 2  # size of C ∂KL/∂Σ's terms
    assert np.linalg.norm(g) < 1e-9 * scale
    # And it is a minimum along random symmetric directions (F is larger nearby).
    rng = np.random.default_rng(0)
    for _ in range(3):
        E = rng.standard_normal((S, S))
        E = 1e-3 * (E + E.T) * np.linalg.norm(sol.sigma)
        f0 = fj.free_energy(net, sol.sigma, task.X, task.Y)
        assert fj.free_energy(net, sol.sigma + E, task.X, task.Y) > f0
        assert fj.free_energy(net, sol.sigma - E, task.X, task.Y) > f0


def test_mean_field_equals_standard_with_rescaled_readout(fcn_task):
    C = 5.0
    mf, _ = _make("fcn", "erf", C, fcn_task, scaling="mean_field", sigma_a2=0.8 * C)
    st, _ = _make("fcn", "erf", C, fcn_task)
    s_mf = fj.solve(mf, fcn_task.X, fcn_task.Y)
    s_st = fj.solve(st, fcn_task.X, fcn_task.Y)
    np.testing.assert_allclose(s_mf.sigma, s_st.sigma, rtol=1e-10)


@pytest.mark.parametrize("arch", ["fcn", "patchcnn"])
def test_targets_scale_with_the_readout_and_the_noise(arch, patch_task, fcn_task):
    """The EoS' symmetry (SPEC §3): with σ_a² → λσ_a², σ² → λσ² and Y → √λ Y, K_f scales by λ,
    A = K_f⁻¹YYᵀK_f⁻¹ − K_f⁻¹ by 1/λ and tr[A Q_f] not at all, so Σ, χ and the continuation
    are the same, the predictions scale by √λ (errors and variance by λ) and F rises by
    (n/2) log λ, the log det K_f term. Large targets are small σ_a² and σ² in disguise
    (README, "Targets far above the noise"). Measured in a probe (n = 24, C = 4, λ = 37): erf
    FCNs and PatchCNNs, Σ to 4·10⁻¹⁵ with the same stages and iterations, 1.7·10⁻¹¹ at
    depth 2 (`benchmarks/RESULTS.md`, stop 62)."""
    task = patch_task if arch == "patchcnn" else fcn_task
    lam = 37.0
    net, _ = _make(arch, "erf", 3.0, task)
    scaled, _ = _make(arch, "erf", 3.0, task, sigma_a2=0.8 * lam, noise=0.02 * lam)
    root = np.sqrt(lam)
    one, other = fj.solve(net, task.X, task.Y), fj.solve(scaled, task.X, root * task.Y)
    assert bool(one.converged) and bool(other.converged)
    assert int(one.num_stages) == int(other.num_stages) > 1  # feature learning: a continuation
    np.testing.assert_allclose(other.sigma, one.sigma, rtol=1e-12, atol=1e-14)
    n = len(task.X)
    np.testing.assert_allclose(other.free_energy, one.free_energy + n / 2 * np.log(lam), rtol=1e-12)
    p, q = (
        fj.predict(one, task.X_test, task.Y_test),
        fj.predict(other, task.X_test, root * task.Y_test),
    )
    np.testing.assert_allclose(q.mean, root * p.mean, rtol=1e-10, atol=1e-12)
    for field in ("variance", "train_error", "test_error", "test_error_draw"):
        np.testing.assert_allclose(getattr(q, field), lam * getattr(p, field), rtol=1e-10)
    for field in ("chi", "chi_proxy"):
        np.testing.assert_allclose(getattr(q, field), getattr(p, field), rtol=1e-10)


@pytest.mark.parametrize("arch", ["fcn", "patchcnn"])
def test_inputs_scale_with_the_first_layer_prior(arch, patch_task, fcn_task):
    """X → αX, σ_w² → σ_w²/α² (first layer): the pre-activations w·x keep their law, so the
    EoS' Σ is Σ/α² (SPEC §3: Q_f depends on XΣXᵀ, Σ⁻¹'s prior term is S/σ_w²) and the
    predictions, χ and F do not change. Measured in a probe (n = 24, C = 4, α = 3): erf FCNs
    and PatchCNNs, Σ to 3·10⁻¹⁵, the predictions to 2·10⁻¹⁴; deep FCNs (σ_w² per layer, the
    first one scaled) to 10⁻¹⁰ (`tests/test_deep.py` checks their solver at α = 1000)."""
    task = patch_task if arch == "patchcnn" else fcn_task
    alpha = 3.0
    net, _ = _make(arch, "erf", 3.0, task)
    scaled, _ = _make(arch, "erf", 3.0, task, sigma_w2=1.3 / alpha**2)
    one, other = fj.solve(net, task.X, task.Y), fj.solve(scaled, alpha * task.X, task.Y)
    assert bool(one.converged) and bool(other.converged)
    np.testing.assert_allclose(alpha**2 * other.sigma, one.sigma, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(other.free_energy, one.free_energy, rtol=1e-12)
    p = fj.predict(one, task.X_test, task.Y_test)
    q = fj.predict(other, alpha * task.X_test, task.Y_test)
    np.testing.assert_allclose(q.mean, p.mean, rtol=1e-10, atol=1e-12)
    for field in ("variance", "test_error", "test_error_draw", "chi", "chi_proxy"):
        np.testing.assert_allclose(getattr(q, field), getattr(p, field), rtol=1e-10)


@pytest.mark.parametrize("schedule", ["parallel", "path"])
def test_sweep_equals_loop_and_jit_equals_eager(patch_task, schedule):
    widths = [12.0, 3.0, jnp.inf, 48.0]  # unsorted: the path schedule sorts and unsorts
    net, _ = _make("patchcnn", "erf", 1.0, patch_task)
    sols, preds = fj.sweep(
        net,
        patch_task.X,
        patch_task.Y,
        widths,
        patch_task.X_test,
        patch_task.Y_test,
        schedule=schedule,
    )
    assert bool(jnp.all(sols.converged))
    np.testing.assert_array_equal(sols.network.width, widths)
    # The path schedule reaches each root from another start: equal to the solver tolerance
    # (a residual of 1e-11 relative to the norm: small entries get an absolute tolerance).
    rtol, atol = (1e-10, 1e-14) if schedule == "parallel" else (1e-9, 1e-11)
    for k, C in enumerate(widths):
        one = eqx.tree_at(lambda n: n.width, net, jnp.asarray(C, float))
        sol = fj.solve(one, patch_task.X, patch_task.Y)
        pred = fj.predict(sol, patch_task.X_test, patch_task.Y_test)
        np.testing.assert_allclose(sols.sigma[k], sol.sigma, rtol=rtol, atol=atol)
        np.testing.assert_allclose(preds.mean[k], pred.mean, rtol=rtol, atol=atol)
        np.testing.assert_allclose(preds.test_error[k], pred.test_error, rtol=rtol)
    if schedule == "parallel":
        return  # the solve under an outer jit below is one more compilation: once is enough
    jitted = eqx.filter_jit(fj.solve)(
        eqx.tree_at(lambda n: n.width, net, jnp.asarray(12.0)), patch_task.X, patch_task.Y
    )
    np.testing.assert_allclose(jitted.sigma, sols.sigma[0], rtol=rtol, atol=atol)


def test_implicit_gradient_matches_finite_differences(fcn_task):
    """d(test error)/d(σ², σ_w², σ_a², C) by implicit differentiation vs central differences."""
    net, _ = _make("fcn", "erf", 8.0, fcn_task)
    fields = ("noise", "sigma_w2", "sigma_a2", "width")

    @jax.jit
    def loss(theta):
        n = eqx.tree_at(lambda m: [getattr(m, f) for f in fields], net, list(theta))
        sol = fj.solve(n, fcn_task.X, fcn_task.Y)
        return fj.predict(sol, fcn_task.X_test, fcn_task.Y_test).test_error

    theta = jnp.asarray([float(getattr(net, f)) for f in fields])
    value_and_grad = jax.jit(jax.value_and_grad(loss))  # one program for both
    g = value_and_grad(theta)[1]
    for i in range(len(fields)):
        h = 1e-4 * theta[i]
        e = jnp.zeros_like(theta).at[i].set(h)
        fd = (value_and_grad(theta + e)[0] - value_and_grad(theta - e)[0]) / (2 * h)
        np.testing.assert_allclose(g[i], fd, rtol=1e-5, err_msg=fields[i])


def test_non_convergence_is_reported_not_nan(fcn_task):
    net, _ = _make("fcn", "erf", 1.0, fcn_task)
    sol = fj.solve(net, fcn_task.X, fcn_task.Y, max_steps=1, max_stages=1)
    assert not bool(sol.converged)
    assert sol.result == optx.RESULTS.nonlinear_max_steps_reached
    pred = fj.predict(sol, fcn_task.X_test, fcn_task.Y_test)
    for leaf in jax.tree_util.tree_leaves((sol.sigma, sol.residual, pred.mean, pred.test_error)):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert not bool(pred.converged)


def test_single_output_vector_targets(patch_task):
    net, _ = _make("patchcnn", "linear", 8.0, patch_task)
    a = fj.solve(net, patch_task.X, patch_task.Y[:, 0])
    b = fj.solve(net, patch_task.X, patch_task.Y)
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=1e-12)


def test_erf_reference_numbers_are_plausible(fcn_task):
    """Feature learning moves Σ towards the teacher as C falls (SPEC §4)."""
    net, _ = _make("fcn", "erf", 1.0, fcn_task)
    w = fcn_task.teacher
    align = []
    for C in (256.0, 16.0, 2.0):
        sol = fj.solve(eqx.tree_at(lambda n: n.width, net, jnp.asarray(C)), fcn_task.X, fcn_task.Y)
        s = np.asarray(sol.sigma)
        align.append(w @ s @ w / np.trace(s))
    assert align[0] < align[1] < align[2]
    assert abs(erf(0.0)) == 0.0


def test_linear_readout_in_feature_space_equals_dense_formulas(patch_task):
    """Linear φ with P·S < n: `predict` works in r = P·S dimensions (Woodbury); compare every
    readout quantity with the n×n formulas of SPEC §4 from the learned Σ, in NumPy."""
    net, S = _make("patchcnn", "linear", 3.0, patch_task)
    assert net.linear_features(patch_task.X)[0].shape[1] < len(patch_task.X)
    sol = fj.solve(net, patch_task.X, patch_task.Y)
    pred = fj.predict(sol, patch_task.X_test, patch_task.Y_test)
    assert bool(sol.converged)
    Sigma = np.asarray(sol.sigma)
    Xp, Xs = _patches(patch_task.X, S), _patches(patch_task.X_test, S)
    P, n = Xp.shape[0], len(patch_task.X)
    Qf = 0.8 / P * sum(a @ Sigma @ a.T for a in Xp)
    Qs = 0.8 / P * sum(b @ Sigma @ a.T for a, b in zip(Xp, Xs, strict=True))
    qss = 0.8 / P * sum(np.einsum("ns,st,nt->n", b, Sigma, b) for b in Xs)
    K = Qf + 0.02 * np.eye(n)
    T = np.linalg.solve(K, patch_task.Y)
    mean = Qs @ T
    np.testing.assert_allclose(pred.mean, mean, rtol=1e-9, atol=1e-12)
    var = qss - np.einsum("ij,ji->i", Qs, np.linalg.solve(K, Qs.T))
    np.testing.assert_allclose(pred.variance, var, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(pred.train_error, 0.02**2 * np.mean(T**2), rtol=1e-9)
    np.testing.assert_allclose(pred.test_error, np.mean((mean - patch_task.Y_test) ** 2), rtol=1e-9)
    np.testing.assert_allclose(pred.chi_proxy, np.sum(T * (Qf @ T)) / 3.0, rtol=1e-9)
    shift = 0.8 / (3.0 * P) * sum(a.T @ T @ T.T @ a for a in Xp)
    np.testing.assert_allclose(pred.chi, np.linalg.eigvalsh(1.3 / S * shift)[-1], rtol=1e-9)


def test_whitened_descent_start_turns_the_hessian_of_f_into_minus_the_jacobian(fcn_task):
    """`FreeEnergyBFGS(whiten=True)`'s initial inverse Hessian (`_whitening`) times the Hessian
    of f = F/C in the packed Λ, both by autodiff at a solution, is −J = −∂R/∂Λ there."""
    from fls_jax._descent import _whitening
    from fls_jax._solve import _state_free_energy, _state_residual

    net, _ = _make("fcn", "erf", 8.0, fcn_task)
    sol = fj.solve(net, fcn_task.X, fcn_task.Y)
    y = _pack(sol.precision)
    args = (net, jnp.asarray(fcn_task.X), jnp.asarray(fcn_task.Y))

    @jax.jit  # one program: op by op this costs ~400 small compilations
    def matrices(y, args):
        H = jax.hessian(_state_free_energy)(y, args)
        return H, jax.jacfwd(_state_residual)(y, args), _whitening(y)

    H, J, H0 = matrices(y, args)
    np.testing.assert_allclose(H0 @ H, -J, rtol=1e-6, atol=1e-8 * float(jnp.abs(J).max()))
    assert float(jnp.linalg.eigvalsh(H0)[0]) > 0


def test_relative_gmres_meets_its_tolerance_where_the_right_side_has_zeros():
    """`fj.RelativeGMRES` stops on ‖Ax − b‖ ≤ rtol ‖b‖ (checked with numpy) also where b has
    exact zeros, as the EoS residual has in the rows of an input coordinate that is zero on
    every training point, where they stay zero: those rows decouple. lineax's own GMRES
    scales its test entry by entry by |b_i|, reads the 0/0 as converged after one restart
    cycle and reports success far from the solution: asserted below, so that this test says
    when lineax no longer needs the wrapper."""
    rng = np.random.default_rng(3)
    N = 60
    A = np.eye(N) + np.diag(np.logspace(0, 2, N)) + 0.3 * rng.standard_normal((N, N)) / np.sqrt(N)
    A[:5], A[:, :5] = 0.0, 0.0
    A[:5, :5] = -np.eye(5)  # as the residual's rows of a blank input coordinate: decoupled
    b = rng.standard_normal(N)
    b[:5] = 0.0
    op = lx.MatrixLinearOperator(jnp.asarray(A))
    for rtol in (1e-4, 1e-10):
        sol = lx.linear_solve(op, jnp.asarray(b), fj.RelativeGMRES(rtol, restart=5), throw=False)
        assert sol.result == lx.RESULTS.successful
        assert np.linalg.norm(A @ np.asarray(sol.value) - b) <= rtol * np.linalg.norm(b)
    plain = lx.GMRES(rtol=1e-4, atol=0.0, restart=5, max_steps=100)
    sol = lx.linear_solve(op, jnp.asarray(b), plain, throw=False)
    assert sol.result == lx.RESULTS.successful and int(sol.stats["num_steps"]) <= 2
    assert np.linalg.norm(A @ np.asarray(sol.value) - b) > 1e-2 * np.linalg.norm(b)
    # Reverse mode solves with Aᵀ (the implicit adjoint's case), on a cotangent with zeros.
    c = rng.standard_normal(N)
    c[-3:] = 0.0
    bar = jax.grad(
        lambda v: jnp.sum(jnp.asarray(c) * lx.linear_solve(op, v, fj.RelativeGMRES(1e-10)).value)
    )(jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(bar), np.linalg.solve(A.T, c), rtol=1e-8, atol=1e-12)


def test_krylov_or_dense_falls_back_where_gmres_fails():
    """The one-layer adjoint's linear solver: GMRES where it meets its tolerance, a dense LU
    where not; per element under vmap, with the dense columns built only if one needs them.
    Checked against numpy.linalg.solve on a well-conditioned matrix (GMRES converges) and an
    ill-conditioned non-normal one that 3 GMRES steps cannot solve."""
    rng = np.random.default_rng(0)
    N = 12
    easy = np.eye(N) + 0.05 * rng.standard_normal((N, N))
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    hard = Q @ np.diag(np.logspace(0, 6, N)) @ np.triu(rng.standard_normal((N, N)) + 3 * np.eye(N))
    b = rng.standard_normal(N)
    solver = fj.KrylovOrDense(lx.GMRES(rtol=1e-10, atol=0.0, restart=3, max_steps=3), columns=5)

    def solve(A, b):  # a matrix-free operator, as the implicit adjoint's Jacobian is
        op = lx.FunctionLinearOperator(lambda v: A @ v, jax.ShapeDtypeStruct((N,), jnp.float64))
        return lx.linear_solve(op, b, solver).value

    for A in (easy, hard):
        x = jax.jit(solve)(jnp.asarray(A), jnp.asarray(b))
        np.testing.assert_allclose(np.asarray(A) @ np.asarray(x), b, rtol=1e-8, atol=1e-8)
    xs = jax.jit(jax.vmap(solve))(
        jnp.asarray(np.stack([easy, hard])), jnp.asarray(np.stack([b, b]))
    )
    for A, x in zip((easy, hard), np.asarray(xs), strict=True):
        np.testing.assert_allclose(A @ x, b, rtol=1e-8, atol=1e-8)
    with pytest.raises(AssertionError):  # GMRES alone does not solve the hard one
        x = lx.linear_solve(
            lx.MatrixLinearOperator(jnp.asarray(hard)),
            jnp.asarray(b),
            lx.GMRES(rtol=1e-10, atol=0.0, restart=3, max_steps=3),
            throw=False,
        ).value
        np.testing.assert_allclose(hard @ np.asarray(x), b, rtol=1e-8, atol=1e-8)
