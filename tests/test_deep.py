"""Deep fully connected networks (issue 4, SPEC §2–4) against independent computations.

References written here in NumPy: the deep NNGP recursion and GP regression with it, the
erf kernel's derivative by hand (for the layer EoS), a plain fixed-point iteration of the
deep linear EoS, and the reference solver's numbers in ../shared/reference/fcn3_erf_n128.
"""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import fls_jax as fj


# A copy of ../shared/reference/fcn3_erf_n128's data (the values are quoted in the test).
REF = Path(__file__).resolve().parent / "data" / "fcn3_erf_n128"


def _erf_np(K):
    a = 1 + 2 * np.diag(K)
    D = np.sqrt(np.outer(a, a))
    s = 2 * K / D
    return 2 / np.pi * np.arcsin(s), s, D, a


def _erf_cross(kss, ktt, kst):
    return 2 / np.pi * np.arcsin(2 * kst / np.sqrt(np.outer(1 + 2 * kss, 1 + 2 * ktt)))


def _erf_pullback_np(G, K):
    """∂ tr[G Φ_erf(K)] / ∂K by hand, the diagonal's dependence included."""
    _, s, D, a = _erf_np(K)
    H = G / np.sqrt(1 - s**2) * 2 / np.pi
    return 2 * H / D - np.diag(2 * (H * s).sum(1) / a)


def _deep_nngp(X1, X2, depth, sw2, sa2):
    """The deep erf NNGP by its recursion (SPEC §2), on train (X1) × test (X2) jointly."""
    Z = np.concatenate([X1, X2])
    K = sw2 / Z.shape[1] * Z @ Z.T
    for layer in range(depth):
        K = (sa2 if layer == depth - 1 else sw2) * _erf_np(K)[0]
    n = len(X1)
    return K[:n, :n], K[n:, :n], np.diag(K)[n:]


def _net(width, depth, act=None, **kw):
    args = dict(sigma_w2=1.5, sigma_a2=0.7, noise=0.01, activation=act or fj.Erf())
    return fj.FCN(width=width, depth=depth, **(args | kw))


@pytest.fixture(scope="module")
def deep_task():
    return fj.datasets.deep_erf_teacher(n=20, n_test=30, d=5, depth=2, seed=3)


@pytest.mark.parametrize("depth", [pytest.param(2, marks=pytest.mark.slow), 3])
def test_gp_limit_equals_deep_nngp_regression(deep_task, depth):
    t = deep_task
    net = _net(np.inf, depth)
    sol = fj.solve(net, t.X, t.Y)
    pred = fj.predict(sol, t.X_test, t.Y_test)
    assert bool(sol.converged)
    Qf, Qst, qss = _deep_nngp(t.X, t.X_test, depth, 1.5, 0.7)
    Kf = Qf + 0.01 * np.eye(len(t.X))
    mean = Qst @ np.linalg.solve(Kf, t.Y)
    var = qss - np.sum(Qst * np.linalg.solve(Kf, Qst.T).T, 1)
    np.testing.assert_allclose(pred.mean, mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(pred.variance, var, rtol=1e-7, atol=1e-10)
    # K^(L) = Q^(L-1): the last pre-kernel is the NNGP of depth L - 1, scaled by σ_w².
    K_prev = _deep_nngp(t.X, t.X[:0], depth - 1, 1.5, 1.5)[0]
    np.testing.assert_allclose(sol.kernels[-1], K_prev, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pred.layer_stretch, 0.0, atol=1e-8)
    # At C = 10¹² (the same compiled solve) F is the GP's but for O(1/C): the layers' KL
    # terms, computed as differences of O(n eps) terms, left 10⁻³ in F (`_shifted_kl`).
    wide = fj.solve(_net(1e12, depth), t.X, t.Y)
    assert bool(wide.converged)
    assert abs(float(wide.free_energy) - float(sol.free_energy)) < 1e-8


@pytest.fixture(scope="module")
def deep_solutions(deep_task):
    t = deep_task
    out = {}
    for depth in (2, 3):
        sol = fj.solve(_net(3.0, depth), t.X, t.Y)
        assert bool(sol.converged), depth
        out[depth] = sol
    return out


def test_solve_does_not_see_the_input_scale(deep_task, deep_solutions):
    """Inputs ×α with the first layer's σ_w² ÷α² are the same network (`tests/test_solve.py`:
    Σ → Σ/α², the rest unchanged). The solvers measure Σ⁻¹ in units of 1/σ_w²(1), so they
    take the same path: in Σ⁻¹'s own units a depth-2 erf FCN that took 1 stage at α = 1
    reported `converged=False` after 64 stages at α = 1000 (stop 62). α = 2¹⁰ scales every
    float exactly, so the path must be the same to the iteration (in one program: the
    fixture's scalar σ_w² compiles another)."""
    t, alpha = deep_task, 2.0**10
    one, other = (
        fj.solve(_net(3.0, 2, sigma_w2=jnp.array([1.5 / a**2, 1.5])), a * t.X, t.Y)
        for a in (1.0, alpha)
    )
    assert bool(one.converged) and bool(other.converged)
    assert int(other.num_stages) == int(one.num_stages)
    assert int(other.num_steps) == int(one.num_steps)
    np.testing.assert_allclose(one.sigma, deep_solutions[2].sigma, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(alpha**2 * other.sigma, one.sigma, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(other.kernels[0], one.kernels[0], rtol=1e-8, atol=1e-10)


def test_solve_does_not_see_a_homogeneous_rescaling():
    """For a homogeneous φ, weights into every hidden layer ×√c with the readout's ÷c^(L/2)
    are the same network: σ_w² → cσ_w², σ_a² → σ_a²/c^L, and the layer-l covariance (Σ,
    K^(2), …) scales by c^l. The solvers measure each layer's unknowns in its own units
    (`_solve._state_scale`), so they take the same path. With Δ_l in raw units, stop 62's
    code needed 4 stages for this deep linear FCN at c = 2¹⁰ where c = 1 takes 1, and a
    depth-3 ReLU FCN reported `converged=False` with its last pair of layers rescaled by
    10³ (stop 63, `benchmarks/input_scale.py`). The program is the one-stage test's below."""
    t = fj.datasets.linear_patch_teacher(64, 50, patch_size=16, patches=1, seed=0)
    c, sols = 2.0**10, []
    for scale in (1.0, c):
        net = fj.FCN(4.0, 1.2 * scale, 0.9 / scale**2, 0.05, fj.Linear(), depth=2)
        sols.append(fj.solve(net, t.X, t.Y))
        assert bool(sols[-1].converged), scale
    one, other = sols
    # c = 2¹⁰ scales every float exactly: the same path to the iteration.
    assert int(other.num_stages) == int(one.num_stages) == 1
    assert int(other.num_steps) == int(one.num_steps)
    np.testing.assert_allclose(other.sigma / c, one.sigma, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(other.kernels[0] / c**2, one.kernels[0], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(
        fj.predict(other, t.X_test).mean, fj.predict(one, t.X_test).mean, rtol=1e-8, atol=1e-10
    )


@pytest.mark.slow
@pytest.mark.parametrize("pair", [1, 2, 3])
def test_relu_solve_does_not_see_a_rescaled_pair_of_layers(deep_task, pair):
    """A depth-3 ReLU FCN with σ_w²(l) ×c and σ_w²(l+1) ÷c (σ_a² ÷c for l = 3): the same
    network, with layer l's covariance ×c. c = 2¹⁰ scales every float exactly, so the path
    must be the same to the iteration: with c = 10³ rounding alone set this 14-stage path
    apart (9–11 stages). Stop 62's code took 20 and 17 stages for l = 1 and 2 where c = 1 took
    9, and reported `converged=False` for l = 3."""
    t, c = deep_task, 2.0**10
    sols = []
    for scale in (1.0, c):
        sw2 = np.array([1.3, 1.1, 1.1])
        sw2[pair - 1] *= scale
        if pair < 3:
            sw2[pair] /= scale
        sa2 = 0.7 / (scale if pair == 3 else 1.0)
        net = fj.FCN(3.0, jnp.asarray(sw2), sa2, 0.01, fj.ReLU(), depth=3)
        sols.append(fj.solve(net, t.X, t.Y))
        assert bool(sols[-1].converged), scale
    one, other = sols
    assert int(other.num_stages) == int(one.num_stages)
    assert int(other.num_steps) == int(one.num_steps)
    covs = [(s.sigma, *s.kernels) for s in sols]
    for layer in range(3):
        factor = c if layer == pair - 1 else 1.0
        np.testing.assert_allclose(covs[1][layer] / factor, covs[0][layer], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(
        fj.predict(other, t.X_test).mean, fj.predict(one, t.X_test).mean, rtol=1e-7, atol=1e-9
    )


def test_state_units_are_the_gp_kernels_mean_diagonals(deep_task):
    """The deep solvers' units (`_solve._state_scale`): σ_w²(1)/2 for Σ⁻¹, and for Δ_l the
    mean diagonal of K^(l) in the GP limit, here from the NumPy NNGP recursion."""
    from fls_jax._solve import _state_scale

    t = deep_task
    factors = _state_scale(_net(3.0, 3), jnp.asarray(t.X))
    assert len(factors) == 3 and float(factors[0]) == 0.75
    for layer in (2, 3):
        K = _deep_nngp(t.X, t.X[:0], layer - 1, 1.5, 1.5)[0]
        np.testing.assert_allclose(float(factors[layer - 1]), np.mean(np.diag(K)), rtol=1e-13)
    # A PatchCNN's Q^(1) averages the patches' kernels (S = 2, P = 3).
    X = np.random.default_rng(0).standard_normal((7, 6))
    patch = fj.PatchCNN(3.0, jnp.array([0.8, 1.7]), 0.7, 0.01, fj.Erf(), depth=2, patch_size=2)
    Q = np.mean([_erf_np(0.8 / 2 * X[:, i : i + 2] @ X[:, i : i + 2].T)[0] for i in (0, 2, 4)], 0)
    factors = _state_scale(patch, jnp.asarray(X))
    np.testing.assert_allclose(float(factors[1]), 1.7 * np.mean(np.diag(Q)), rtol=1e-13)


@pytest.mark.parametrize("depth", [2, 3])
def test_free_energy_is_stationary_at_the_solution(deep_task, deep_solutions, depth):
    t, sol = deep_task, deep_solutions[depth]
    assert float(sol.residual) < 1e-10

    def F(covs):
        return fj.free_energy(sol.network, covs[0], t.X, t.Y, tuple(covs[1:]))

    grad_F = jax.jit(jax.grad(F))  # one program: op by op it costs ~300 small compilations
    covs = [sol.sigma, *sol.kernels]
    grads = grad_F(covs)
    for cov, g in zip(covs, grads, strict=True):
        # F is O(C ‖cov⁻¹‖ n), its gradient at the solution is roundoff only.
        scale = float(sol.network.width) * float(jnp.linalg.norm(jnp.linalg.inv(cov)))
        assert float(jnp.linalg.norm(g)) < 1e-9 * scale
    # ... and it does move away from it: a perturbation has a non-zero gradient.
    bumped = [covs[0] * 1.01, *covs[1:]]
    assert float(jnp.linalg.norm(grad_F(bumped)[0])) > 1e-3


def test_middle_layer_eos_by_hand(deep_task, deep_solutions):
    """L = 3: K^(2)⁻¹ = Q^(1)⁻¹ − (C_3/C_2) ∂_K tr[B^(3) Q^(2)(K)], and the last layer's
    K^(3)⁻¹ = Q^(2)⁻¹ − (1/C_3) ∂_K tr[A Q_f(K)], in NumPy with the hand-written derivative."""
    t = deep_task
    _assert_three_layer_erf_eos(deep_solutions[3], t.X, t.Y, 3.0, 1.5, 0.7, 0.01)


def _assert_three_layer_erf_eos(sol, X, Y, C, sw2, sa2, noise):
    """The three layers' EoS of a depth-3 erf FCN (one width C) in NumPy, to 1e-8."""
    X, Y = np.asarray(X), np.asarray(Y)
    Sigma, (K2, K3) = np.asarray(sol.sigma), [np.asarray(k) for k in sol.kernels]
    Q1 = sw2 * _erf_np(X @ Sigma @ X.T)[0]
    Q2 = sw2 * _erf_np(K2)[0]
    Q2i = np.linalg.inv(Q2)
    B3 = Q2i @ K3 @ Q2i - Q2i
    rhs2 = np.linalg.inv(Q1) - sw2 * _erf_pullback_np(B3, K2)
    np.testing.assert_allclose(np.linalg.inv(K2), rhs2, rtol=1e-8, atol=1e-8 * np.abs(rhs2).max())
    Kfi = np.linalg.inv(sa2 * _erf_np(K3)[0] + noise * np.eye(len(X)))
    T = Kfi @ Y
    A = T @ T.T - Kfi
    rhs3 = Q2i - sa2 * _erf_pullback_np(A, K3) / C
    np.testing.assert_allclose(np.linalg.inv(K3), rhs3, rtol=1e-8, atol=1e-8 * np.abs(rhs3).max())
    # and the first layer: Σ⁻¹ = Σ₀⁻¹ − (C_2/C_1) ∂_Σ tr[B^(2) Q^(1)(XΣXᵀ)]
    Q1i = np.linalg.inv(Q1)
    B2 = Q1i @ K2 @ Q1i - Q1i
    rhs1 = (
        X.shape[1] / sw2 * np.eye(X.shape[1])
        - X.T @ (sw2 * _erf_pullback_np(B2, X @ Sigma @ X.T)) @ X
    )
    np.testing.assert_allclose(
        np.linalg.inv(Sigma), rhs1, rtol=1e-8, atol=1e-8 * np.abs(rhs1).max()
    )


def _sine_targets(X, seed):
    """y = sin(2 w·x), w ~ N(0, I/d) drawn with `seed` (`benchmarks/deep_narrow_scan.py`)."""
    w = np.random.default_rng(seed).standard_normal(X.shape[1]) / np.sqrt(X.shape[1])
    return np.sin(2 * X @ w)[:, None]


def _covariance_index(sol) -> int:
    """The negative eigenvalues of F's Hessian in the upper triangles of SPEC §3's own
    variables (Σ, K^(2), …, K^(L)), F from the public `fj.free_energy`: other coordinates
    than `fj.hessian_index`'s (Σ⁻¹ and the shifts Δ_l), with the same count at a stationary
    point of F only (Sylvester's law of inertia)."""
    mats = [np.asarray(sol.sigma), *map(np.asarray, sol.kernels)]
    ius = [np.triu_indices(len(m)) for m in mats]
    cuts = np.cumsum([len(iu[0]) for iu in ius])[:-1]

    def F(v):
        sym = []
        for part, m, iu in zip(jnp.split(v, cuts), mats, ius, strict=True):
            M = jnp.zeros(m.shape).at[iu].set(part)
            sym.append(M + jnp.triu(M, 1).T)
        return fj.free_energy(sol.network, sym[0], sol.X, sol.Y, tuple(sym[1:]))

    v = jnp.concatenate([jnp.asarray(m[iu]) for m, iu in zip(mats, ius, strict=True)])
    eig = np.linalg.eigvalsh(np.asarray(jax.hessian(F)(v)))
    return int(np.sum(eig < -1e-10 * np.abs(eig).max()))


def test_narrow_three_layer_erf_from_the_gp_limit(deep_task):
    """A depth-3 erf FCN in the authors' style (σ_w² = 2, small σ_a²) at C = 1, from the GP
    limit with no schedule. With Anderson capped at 200 iterations per stage, root finds
    still converging were cut off, each cut quartered the continuation's step, and it ran
    out of its 64 stages (`converged=False`, stop 63); with 600 it takes 9 stages (stop 64).
    The solution is checked against the EoS written out in NumPy."""
    X = np.asarray(deep_task.X)
    Y = _sine_targets(X, 3)
    net = fj.FCN(width=1.0, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=0.01)
    sol = fj.solve(net, X, Y)
    assert bool(sol.converged), (int(sol.num_stages), float(sol.residual))
    assert float(sol.width_reached) == 1.0
    _assert_three_layer_erf_eos(sol, X, Y, 1.0, 2.0, 0.25, 0.01)


@pytest.mark.slow
def test_a_fold_is_reported_with_the_width_reached(deep_task):
    """The same network with another target and σ² = 10⁻³ at C = 2: its branch of solutions
    ends in a fold at C* ≈ 3.5768 (the EoS Jacobian's smallest singular value falls as
    √(C − C*) and a real eigenvalue goes to zero; stop 64). The continuation stops short of
    it, says so, and its unknowns solve the EoS at the width it reports, checked in NumPy."""
    X = np.asarray(deep_task.X)
    Y = _sine_targets(X, 0)
    net = fj.FCN(width=2.0, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=1e-3)
    sol = fj.solve(net, X, Y)
    assert not bool(sol.converged)
    reached = float(sol.width_reached)
    assert 3.576 < reached < 3.58, reached
    _assert_three_layer_erf_eos(sol, X, Y, reached, 2.0, 0.25, 1e-3)


def test_past_folds_reaches_the_branch_beyond_two_folds(deep_task):
    """The network of `test_a_fold_is_reported_with_the_width_reached` at C = 3, below the
    fold at C* ≈ 3.577 where the continuation stops. `solve(past_folds=True)` goes on by
    pseudo-arclength from there, around both folds of the S-shaped curve of solutions
    (`test_trace_passes_the_fold_and_finds_three_solutions`), and lands on the third branch
    at C = 3: a solution of the three layers' EoS written out in NumPy."""
    X = np.asarray(deep_task.X)
    Y = _sine_targets(X, 0)
    net = fj.FCN(width=3.0, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=1e-3)
    sol = fj.solve(net, X, Y, past_folds=True, max_stages=16)
    assert bool(sol.converged) and float(sol.width_reached) == 3.0
    assert int(sol.num_folds) == 2 and int(sol.num_stages) > 16
    assert float(sol.residual) < 1e-10
    _assert_three_layer_erf_eos(sol, X, Y, 3.0, 2.0, 0.25, 1e-3)
    # The branch it lands on is a minimum of F, in the solver's coordinates and in SPEC's.
    assert int(fj.hessian_index(sol)) == 0 == _covariance_index(sol)
    # Away from a stationary point the count depends on the coordinates: none is given.
    assert int(fj.hessian_index(eqx.tree_at(lambda s: s.converged, sol, False))) == -1
    # Lanczos: 0 too; with 3 steps its lowest Ritz value is neither negative nor converged.
    assert int(fj.hessian_index(sol, "lanczos")) == 0
    assert int(fj.hessian_index(sol, "lanczos", max_steps=3)) == -1
    # `minimise=True` gets there without a path through the folds: from the point where the
    # continuation stopped (C ≈ 3.577), a matrix-free trust-region Newton–CG on F at C = 3,
    # then the root finders. The same solution as the dense arclength's.
    mini = fj.solve(net, X, Y, minimise=True, max_stages=16)
    assert bool(mini.converged) and float(mini.width_reached) == 3.0
    assert int(mini.num_folds) == 0 and float(mini.residual) < 1e-10
    _assert_three_layer_erf_eos(mini, X, Y, 3.0, 2.0, 0.25, 1e-3)
    np.testing.assert_allclose(float(mini.free_energy), float(sol.free_energy), rtol=1e-9)
    for a, b in zip((mini.sigma, *mini.kernels), (sol.sigma, *sol.kernels), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * float(jnp.abs(b).max()))
    assert int(fj.hessian_index(mini)) == 0


def test_past_folds_refuses_what_it_cannot_do(deep_task):
    X, Y = np.asarray(deep_task.X), np.asarray(deep_task.Y)
    net = fj.FCN(width=3.0, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=0.01)
    start = (np.eye(5), np.zeros((20, 20)), np.zeros((20, 20)))
    with pytest.raises(ValueError, match="no precision0"):
        fj.solve(net, X, Y, past_folds=True, precision0=start)
    X40 = np.random.default_rng(0).standard_normal((40, 5))
    with pytest.raises(ValueError, match="3215 unknowns"):
        fj.solve(net, X40, X40[:, :1], past_folds=True)
    with pytest.raises(ValueError, match="3215 unknowns"):
        fj.sweep(net, X40, X40[:, :1], [4.0, 3.0], X40[:2], past_folds=True)
    one = fj.FCN(3.0, 1.0, 1.0, noise=0.01, activation=fj.ReLU(), weight_mean=True)
    for rescue in ("past_folds", "minimise"):
        with pytest.raises(ValueError, match=rf"{rescue} does not support .* weight mean"):
            fj.solve(one, X, Y, **{rescue: True})
        with jax.enable_x64(False), pytest.raises(TypeError, match=f"{rescue} needs float64"):
            net32 = fj.FCN(width=3.0, sigma_w2=2.0, sigma_a2=0.25, noise=0.01)
            fj.solve(net32, X.astype(np.float32), Y.astype(np.float32), **{rescue: True})
    with pytest.raises(ValueError, match=r"minimise does not support .* weight mean"):
        fj.sweep(one, X, Y, [4.0, 3.0], X[:2], minimise=True)


def test_past_folds_continuation_does_not_jump_to_another_branch():
    """`solve(past_folds=True)` hands its arclength the continuation's last converged point,
    which must lie on the GP limit's branch. A toy residual with a fold shows the check that
    keeps it there: R(x; u) = (x² − 1 + u)(x − 3), u = 1/C, whose branch from x = 1 at the
    GP limit ends in a fold at u = 1, while x = 3 solves it at every u. Newton from x = 1 at
    the target u = 2 converges to x = 3, and the plain continuation reports the target
    solved there; with `keep_sign` (det ∂R/∂x is −1 on the first branch, +1 at x = 3) that
    root is refused, and the continuation creeps up to the fold and stops. On a deep network
    this happened with XLA's default code generation on an AMD EPYC (stop 67; the tests'
    optimisation level 0 does not jump there): `benchmarks/deep_narrow_scan.py`."""
    import optimistix as optx

    from fls_jax._arclength import jacobian_sign
    from fls_jax._solve import _continuation

    def fn(x, args):
        return (x**2 - 1 + 1 / args[0].width) * (x - 3)

    net = fj.FCN(width=0.5, depth=2, sigma_w2=1.0, sigma_a2=1.0, noise=0.1)
    X, Y = jnp.zeros((2, 1)), jnp.zeros((2, 1))
    chain = ((optx.Newton(rtol=1e-12, atol=1e-12), 40),)
    x0, u0 = jnp.ones(1), jnp.zeros(())
    plain = _continuation(fn, chain, u0, x0, net, X, Y, 30)
    assert bool(plain.done) and abs(float(plain.lam[0]) - 3) < 1e-10
    kept = _continuation(fn, chain, u0, x0, net, X, Y, 30, keep_sign=True)
    assert not bool(kept.done) and 0.99 < float(kept.u) < 1
    x, u = float(kept.lam[0]), float(kept.u)
    assert 0 < x < 0.1 and abs((x**2 - 1 + u) * (x - 3)) < 1e-10
    # The sign itself, against NumPy's determinant, through LU pivoting.
    rng = np.random.default_rng(0)
    for _ in range(6):
        A, z = rng.standard_normal((5, 5)), rng.standard_normal(5)
        ref = np.sign(np.linalg.det(A + np.diag(0.3 * z**2)))
        assert float(jacobian_sign(lambda v, A=A: A @ v + 0.1 * v**3, jnp.asarray(z))) == ref


def test_lanczos_lowest_against_numpy_eigenvalues():
    """`lanczos_lowest` (the matrix-free Hessian index's eigensolver) on a symmetric matrix
    of known spectrum, three eigenvalues negative: run until the lowest Ritz value above
    the negative ones has converged, it counts three and finds the four lowest eigenvalues
    to their residual bounds; after 6 steps each Ritz value bounds the eigenvalue of its rank from
    above (Cauchy interlacing) and has an eigenvalue within its residual bound; on a
    spectrum of 4 distinct values it stops after 4 steps with those values; a step's Ritz
    values from a leading block are the whole tridiagonal's."""
    from fls_jax._linalg import _ritz, _ritz_leading, lanczos_lowest, negative_ritz

    rng = np.random.default_rng(0)
    N = 200
    O = np.linalg.qr(rng.standard_normal((N, N)))[0]
    lam = np.sort(np.concatenate([[-2.0, -0.5, -0.01], rng.uniform(0.1, 10.0, N - 3)]))
    A = jnp.asarray((O * lam) @ O.T)
    v0 = jnp.asarray(rng.standard_normal(N))
    theta, bound, k = lanczos_lowest(lambda v: A @ v, v0, 150, 1e-10, 1e-8)
    count, settled, first, scale = negative_ritz(theta, bound, k, 1e-8, 1e-10)
    assert int(k) < 150 and int(count) == 3 == int(first) and bool(settled)
    assert abs(float(scale) - np.abs(lam).max()) <= 1e-8 * np.abs(lam).max()
    assert float(bound[3]) <= 1e-10 * 10 and lam[3] > 0
    for i in range(4):
        assert abs(float(theta[i]) - lam[i]) <= float(bound[i]) + 1e-12
    theta, bound, k = lanczos_lowest(lambda v: A @ v, v0, 6, 1e-10, 1e-8)
    theta, bound = np.asarray(theta), np.asarray(bound)
    assert int(k) == 6 and np.all(theta[:6] >= lam[:6] - 1e-12)
    for t, b in zip(theta[:6], bound[:6], strict=True):
        assert np.abs(lam - t).min() <= b + 1e-12
    # Flat directions (F flat to rounding: ±10⁻¹³) neither count nor settle the count.
    flat = np.concatenate([[-0.02], 1e-13 * rng.standard_normal(30), lam[31:]])
    B = jnp.asarray((O * flat) @ O.T)
    theta, bound, k = lanczos_lowest(lambda v: B @ v, v0, 150, 1e-10, 1e-8)
    count, settled, first, _ = negative_ritz(theta, bound, k, 1e-8, 1e-10)
    assert int(count) == 1 and bool(settled) and float(theta[int(first)]) > 0.05
    four = jnp.asarray((O * np.repeat([-1.0, 0.5, 2.0, 7.0], N // 4)) @ O.T)
    theta, bound, k = lanczos_lowest(lambda v: four @ v, v0, 50, 1e-10, 1e-8)
    assert int(k) == 4
    np.testing.assert_allclose(theta[:4], [-1.0, 0.5, 2.0, 7.0], atol=1e-12)
    # A step's Ritz values from the smallest leading block that holds the k steps: those of
    # the whole padded tridiagonal, on each side of the blocks' edges (64, 128).
    alpha, beta = jnp.asarray(rng.standard_normal(150)), jnp.asarray(rng.random(150))
    for steps in (5, 64, 65, 128, 129, 150):
        whole = _ritz(alpha, beta, jnp.asarray(steps))
        leading = _ritz_leading(alpha, beta, jnp.asarray(steps), (64, 128))
        for a, b in zip(whole, leading, strict=True):
            np.testing.assert_allclose(b[:steps], a[:steps], rtol=1e-12, atol=1e-12)


def test_steihaug_step_against_numpy():
    """`_steihaug`, the trust-region step of `solve(minimise=True)`: on a positive-definite
    quadratic with a wide region, the Newton step −H⁻¹g (NumPy's solve); with a narrow one,
    a step on the boundary; on an indefinite H with a wide region, a boundary step along
    the non-positive curvature it must meet (CG's pivots have as many negative signs as H
    has negative eigenvalues). Every step lowers the model g·p + ½ p·Hp at least as far as
    the Cauchy point (the model's minimum along −g within the region) does, and the model's
    value returned (from CG's residual, no product) is the one formed here."""
    from fls_jax._minimise import _steihaug

    rng = np.random.default_rng(3)
    N = 30
    O = np.linalg.qr(rng.standard_normal((N, N)))[0]
    g = rng.standard_normal(N)
    run = jax.jit(lambda g, H, r, tol: _steihaug(g, lambda v: H @ v, r, tol, 100))

    def step(lam, radius):
        H = (O * lam) @ O.T
        p, model, k, negative = run(jnp.asarray(g), jnp.asarray(H), jnp.asarray(radius), 1e-12)
        p = np.asarray(p)
        # The model's value that CG carries, against g·p + ½ p·Hp formed here.
        exact = g @ p + 0.5 * p @ H @ p
        assert abs(float(model) - exact) <= 1e-10 * max(1.0, abs(exact))
        gHg, gn = g @ H @ g, np.linalg.norm(g)
        tau = 1.0 if gHg <= 0 else min(gn**3 / (radius * gHg), 1.0)
        cauchy = -tau * radius * g / gn
        assert exact <= g @ cauchy + 0.5 * cauchy @ H @ cauchy + 1e-12
        return p, int(k), bool(negative), H

    lam = rng.uniform(0.5, 5.0, N)
    p, k, negative, H = step(lam, 1e3)
    np.testing.assert_allclose(p, -np.linalg.solve(H, g), rtol=1e-9, atol=1e-12)
    assert not negative and k <= N + 1
    p, _, negative, _ = step(lam, 0.1)
    assert not negative and abs(np.linalg.norm(p) - 0.1) < 1e-12
    lam[[3, 7]] = [-1.0, -0.2]
    p, _, negative, _ = step(lam, 1e3)
    assert negative and abs(np.linalg.norm(p) - 1e3) < 1e-9


def test_past_folds_reaches_a_minimum_where_the_default_converges_to_a_saddle(deep_task):
    """Target seed 11 at σ² = 10⁻³, C = 2 (`benchmarks/deep_narrow_scan.py --part saddles`):
    the curve of solutions has a narrow S (folds at C ≈ 2.669 and 2.697), and the plain
    continuation jumps across it to a solution of the EoS that is a saddle of F, reported
    converged (on the development machine at XLA's default optimisation and at the tests'
    level 0 alike). `past_folds` refuses that root (the sign of det ∂R/∂Λ), goes through
    both folds and lands on a minimum of F, with the lower F. The index is checked in SPEC
    §3's coordinates too, and the solution against the EoS written out in NumPy."""
    X = np.asarray(deep_task.X)
    Y = _sine_targets(X, 11)
    net = fj.FCN(width=2.0, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=1e-3)
    sol = fj.solve(net, X, Y, past_folds=True, max_stages=16)
    assert bool(sol.converged) and int(sol.num_folds) == 2
    _assert_three_layer_erf_eos(sol, X, Y, 2.0, 2.0, 0.25, 1e-3)
    assert int(fj.hessian_index(sol)) == 0 == _covariance_index(sol)
    assert int(fj.hessian_index(sol, "lanczos")) == 0
    plain = fj.solve(net, X, Y, max_stages=16)
    if bool(plain.converged):  # where the continuation jumped: a saddle, with a higher F
        _assert_three_layer_erf_eos(plain, X, Y, 2.0, 2.0, 0.25, 1e-3)
        assert int(fj.hessian_index(plain)) == 1 == _covariance_index(plain)
        assert int(fj.hessian_index(plain, "lanczos")) == 1
        assert float(sol.free_energy) < float(plain.free_energy) - 0.5
        # `minimise=True` after the same continuation (the program of the test above): its
        # first CG at the saddle meets the negative curvature, and it ends at a minimum of F
        # below the saddle (another one than `past_folds`': the saddle lies between two;
        # `benchmarks/deep_minimise.py`).
        mini = fj.solve(net, X, Y, minimise=True, max_stages=16)
        assert bool(mini.converged)
        _assert_three_layer_erf_eos(mini, X, Y, 2.0, 2.0, 0.25, 1e-3)
        assert int(fj.hessian_index(mini)) == 0 == _covariance_index(mini)
        assert float(mini.free_energy) < float(plain.free_energy) - 0.1


@pytest.mark.slow
def test_minimise_from_a_saddle_given_as_precision0(deep_task):
    """`solve(precision0=saddle, minimise=True)`: the root find from the start converges at
    once (it is a root), and the minimiser leaves it for a minimum of F below it, the one
    that `minimise=True` after the continuation reaches."""
    X = np.asarray(deep_task.X)
    Y = _sine_targets(X, 11)
    net = fj.FCN(width=2.0, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=1e-3)
    plain = fj.solve(net, X, Y, max_stages=16)
    if not (bool(plain.converged) and int(fj.hessian_index(plain)) == 1):
        pytest.skip("the continuation did not land on the saddle here (rounding)")
    start = (plain.precision, *plain.kernel_shifts)
    mini = fj.solve(net, X, Y, precision0=start, minimise=True)
    assert bool(mini.converged) and int(fj.hessian_index(mini)) == 0
    _assert_three_layer_erf_eos(mini, X, Y, 2.0, 2.0, 0.25, 1e-3)
    after = fj.solve(net, X, Y, minimise=True, max_stages=16)
    np.testing.assert_allclose(float(mini.free_energy), float(after.free_energy), rtol=1e-9)


@pytest.mark.slow
def test_past_folds_through_a_near_fold(deep_task):
    """Seed 1 at σ² = 10⁻³: no fold, but the Jacobian's smallest singular value dips to
    8·10⁻⁵ near C = 1.92, and the continuation in 1/C creeps to a halt at C ≈ 1.97 (stop
    65). `solve(past_folds=True)` passes it, no fold counted, to a solution of the EoS in
    NumPy at C = 1.5."""
    X = np.asarray(deep_task.X)
    Y = _sine_targets(X, 1)
    net = fj.FCN(width=1.5, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=1e-3)
    assert not bool(fj.solve(net, X, Y, max_stages=16).converged)
    sol = fj.solve(net, X, Y, past_folds=True, max_stages=16)
    assert bool(sol.converged) and int(sol.num_folds) == 0
    _assert_three_layer_erf_eos(sol, X, Y, 1.5, 2.0, 0.25, 1e-3)


@pytest.mark.slow
def test_past_folds_in_sweeps(deep_task):
    """Sweeps through the S-shaped curve of seed 0: the path schedule (one solve after the
    other, each from the last) and the parallel one (vmapped solves from the GP limit)
    reach the same solutions with `past_folds`, each counting the folds it passed, and with
    `minimise`."""
    X = np.asarray(deep_task.X)
    Y = _sine_targets(X, 0)
    net = fj.FCN(width=8.0, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=1e-3)
    widths = jnp.asarray([8.0, 3.65, 3.0, 2.0])
    out = {}
    for schedule in ("path", "parallel"):
        sols, _ = fj.sweep(
            net, X, Y, widths, X[:4], schedule=schedule, past_folds=True, max_stages=16
        )
        assert bool(jnp.all(sols.converged)), schedule
        out[schedule] = sols
    np.testing.assert_array_equal(out["path"].num_folds, [0, 0, 2, 0])  # on from C = 3
    np.testing.assert_array_equal(out["parallel"].num_folds, [0, 0, 2, 2])
    np.testing.assert_allclose(out["path"].sigma, out["parallel"].sigma, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(out["path"].free_energy, out["parallel"].free_energy, rtol=1e-10)
    # `minimise=True` in both schedules (vmapped: per element): the same solutions, none of
    # them through the folds, all minima of F.
    for schedule in ("path", "parallel"):
        mini, _ = fj.sweep(
            net, X, Y, widths, X[:4], schedule=schedule, minimise=True, max_stages=16
        )
        assert bool(jnp.all(mini.converged)), schedule
        np.testing.assert_allclose(mini.free_energy, out["path"].free_energy, rtol=1e-9)
        np.testing.assert_array_equal(fj.hessian_index(mini), 0)


def test_trace_agrees_with_solve_where_there_is_no_fold(deep_task):
    """`fj.trace` (pseudo-arclength, dense Jacobians, chord Newton) against `fj.solve`'s
    continuation from the GP limit (Anderson, then Newton–Krylov): where the curve of
    solutions has no fold, both find the same solution at the same width, and F agrees."""
    X = np.asarray(deep_task.X)
    Y = _sine_targets(X, 3)
    net = fj.FCN(width=3.0, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=0.01)
    tr = fj.trace(net, X, Y, 2.0)
    assert tr.completed, tr.message
    assert len(tr.folds) == 0 and int(tr.index.max()) == 0
    assert float(tr.widths[-1]) <= 2.0 < float(tr.widths[-2])
    assert float(tr.residual.max()) < 1e-10
    k = len(tr.widths) // 2
    for i in (k, len(tr.widths) - 1):
        C = float(tr.widths[i])
        sol = fj.solve(eqx.tree_at(lambda n: n.width, net, jnp.asarray(C)), X, Y)
        assert bool(sol.converged)
        np.testing.assert_allclose(tr.unknowns[0][i], sol.precision, rtol=1e-8, atol=1e-8)
        for d_trace, d_solve in zip(tr.unknowns[1:], sol.kernel_shifts, strict=True):
            scale = float(jnp.abs(d_solve).max())
            np.testing.assert_allclose(d_trace[i], d_solve, rtol=0, atol=1e-8 * scale)
        np.testing.assert_allclose(float(tr.free_energy[i]), float(sol.free_energy), rtol=1e-9)
    # `at` interpolates a start on the one branch, between the solutions either side (its
    # use as `precision0` is the slow test's); a width the curve did not pass has none.
    ((branch, start),) = tr.at(2.5)
    at = fj.solve(eqx.tree_at(lambda n: n.width, net, jnp.asarray(2.5)), X, Y)
    assert branch == 0
    np.testing.assert_allclose(
        start[0], at.precision, atol=1e-3 * float(jnp.abs(at.precision).max())
    )
    assert tr.at(10.0) == []


def test_trace_refuses_what_it_cannot_do(deep_task):
    X, Y = np.asarray(deep_task.X), np.asarray(deep_task.Y)
    net = fj.FCN(width=3.0, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=0.01)
    with pytest.raises(ValueError, match="to_width"):
        fj.trace(net, X, Y, 3.0)
    with pytest.raises(TypeError, match="to_width must be a number, got '2'"):
        fj.trace(net, X, Y, "2")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="finite positive width"):
        fj.trace(eqx.tree_at(lambda n: n.width, net, jnp.asarray(np.inf)), X, Y, 2.0)
    with jax.enable_x64(False), pytest.raises(TypeError, match="float64"):
        net32 = fj.FCN(width=3.0, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=0.01)
        fj.trace(net32, X.astype(np.float32), Y.astype(np.float32), 2.0)
    X40 = np.random.default_rng(0).standard_normal((40, 5))
    with pytest.raises(ValueError, match="3215 unknowns"):
        fj.trace(net, X40, X40[:, :1], 2.0)


def test_hessian_index_refuses_what_it_cannot_do(deep_task, deep_solutions):
    sol = deep_solutions[3]
    with pytest.raises(TypeError, match="Solution"):
        fj.hessian_index(sol.sigma)
    X40 = np.random.default_rng(0).standard_normal((40, 5))
    with pytest.raises(ValueError, match="3215 unknowns"):
        fj.hessian_index(eqx.tree_at(lambda s: s.X, sol, jnp.asarray(X40)), "dense")
    with jax.enable_x64(False), pytest.raises(TypeError, match="float64"):
        fj.hessian_index(eqx.tree_at(lambda s: s.X, sol, sol.X.astype(np.float32)))
    with jax.enable_x64(False), pytest.raises(TypeError, match="float64"):
        fj.hessian_index(eqx.tree_at(lambda s: s.X, sol, sol.X.astype(np.float32)), "lanczos")
    with pytest.raises(ValueError, match="method"):
        fj.hessian_index(sol, "arnoldi")
    for steps in (1, 2.5, True):
        with pytest.raises(ValueError, match="max_steps"):
            fj.hessian_index(sol, "lanczos", max_steps=steps)  # type: ignore[arg-type]


@pytest.mark.slow
def test_trace_one_hidden_layer_agrees_with_solve(deep_task):
    """`trace` on a one-hidden-layer erf FCN (its unknown is Σ⁻¹ alone) from C = 8 to 2: no
    fold, a minimum of F throughout, and at two of its widths the same Σ⁻¹ and F as `solve`."""
    t = deep_task
    net = fj.FCN(width=8.0, sigma_w2=1.0, sigma_a2=1.0, noise=0.01, activation=fj.Erf())
    tr = fj.trace(net, t.X, t.Y, 2.0)
    assert tr.completed and len(tr.folds) == 0 and int(tr.index.max()) == 0
    for i in (len(tr.widths) // 2, len(tr.widths) - 1):
        at = eqx.tree_at(lambda n: n.width, net, tr.widths[i])
        sol = fj.solve(at, t.X, t.Y)
        np.testing.assert_allclose(tr.unknowns[0][i], sol.precision, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(float(tr.free_energy[i]), float(sol.free_energy), rtol=1e-9)


def test_trace_passes_the_fold_and_finds_three_solutions(deep_task):
    """The fold of `test_a_fold_is_reported_with_the_width_reached` is one of two: the curve
    of solutions is S-shaped, and for C between them the EoS have three solutions. `trace`
    from C = 3.8 (one solution) to 3.5 turns twice; the middle branch is a saddle of F (its
    Hessian has one negative eigenvalue) between two minima. At C = 3.65 the three starts it
    gives each lead `solve` to a distinct solution of the EoS written out in NumPy, and the
    branch that goes on below the first fold (where `solve` stops) has the lowest F there
    (stop 65)."""
    X = np.asarray(deep_task.X)
    Y = _sine_targets(X, 0)
    net = fj.FCN(width=3.8, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=1e-3)
    tr = fj.trace(net, X, Y, 3.5)
    assert tr.completed, tr.message
    assert len(tr.folds) == 2
    C, branch, index = (np.asarray(v) for v in (tr.widths, tr.branch, tr.index))
    for b, count in enumerate((0, 1, 0)):  # minimum of F, saddle, minimum
        assert set(index[branch == b].tolist()) == {count}
    # The first fold is the one `solve` stopped at (3.5768, stop 64), from both sides.
    lower = C[branch < 2].min()
    assert 3.5765 < lower < 3.59, lower
    assert 3.72 < C[branch == 1].max() < C[branch == 0].max()
    sols = []
    for b, start in tr.at(3.65):
        sol = fj.solve(
            eqx.tree_at(lambda n: n.width, net, jnp.asarray(3.65)), X, Y, precision0=start
        )
        assert bool(sol.converged), b
        _assert_three_layer_erf_eos(sol, X, Y, 3.65, 2.0, 0.25, 1e-3)
        sols.append(sol)
    assert len(sols) == 3
    for i in range(3):
        for j in range(i):
            gap = jnp.abs(sols[i].sigma - sols[j].sigma).max() / jnp.abs(sols[j].sigma).max()
            assert float(gap) > 0.05, (i, j)
    F = [float(s.free_energy) for s in sols]
    assert F[2] < F[0] < F[1], F
    # The middle branch's solution is a saddle of F, the others minima, as the trace says:
    # in the solver's coordinates, and in SPEC §3's (Σ, K^(2), K^(3)), written in the test.
    assert [int(fj.hessian_index(s)) for s in sols] == [0, 1, 0]
    assert [_covariance_index(s) for s in sols] == [0, 1, 0]
    # And matrix-free (Lanczos on Hessian-vector products in whitened coordinates).
    assert [int(fj.hessian_index(s, "lanczos")) for s in sols] == [0, 1, 0]


def test_deep_linear_against_numpy_fixed_point():
    """A deep linear network (L = 2, n ≤ d so that Q^(1) = σ_w² XΣXᵀ is invertible) against a
    SciPy root find (MINPACK hybrid) of the same EoS written in NumPy, in (Σ⁻¹, Δ = K⁻¹ − Q⁻¹):
    Σ⁻¹ = Σ₀⁻¹ − σ_w² Xᵀ B X with B = Q⁻¹KQ⁻¹ − Q⁻¹, and Δ = −(σ_a²/C) A (SPEC §3)."""
    rng = np.random.default_rng(0)
    n, d, C, sw2, sa2, noise = 8, 12, 4.0, 1.2, 0.9, 0.05
    X = rng.standard_normal((n, d))
    Y = X[:, :1] + 0.3 * X[:, 1:2]
    net = fj.FCN(width=C, sigma_w2=sw2, sigma_a2=sa2, noise=noise, activation=fj.Linear(), depth=2)
    sol = fj.solve(net, X, Y)
    assert bool(sol.converged)
    iu_d, iu_n = np.triu_indices(d), np.triu_indices(n)

    def sym(v, m, iu):
        M = np.zeros((m, m))
        M[iu] = v
        return M + np.triu(M, 1).T

    def eos(v):
        S_inv, delta = sym(v[: len(iu_d[0])], d, iu_d), sym(v[len(iu_d[0]) :], n, iu_n)
        Qi = np.linalg.inv(sw2 * X @ np.linalg.inv(S_inv) @ X.T)
        K = np.linalg.inv(Qi + delta)
        B = Qi @ K @ Qi - Qi
        Kfi = np.linalg.inv(sa2 * K + noise * np.eye(n))
        T = Kfi @ Y
        r1 = d / sw2 * np.eye(d) - sw2 * X.T @ B @ X - S_inv
        r2 = -sa2 * (T @ T.T - Kfi) / C - delta
        return np.concatenate([r1[iu_d], r2[iu_n]]), K

    v0 = np.concatenate([(d / sw2 * np.eye(d))[iu_d], np.zeros(len(iu_n[0]))])
    root = scipy.optimize.root(lambda v: eos(v)[0], v0, method="hybr", tol=1e-14)
    assert np.abs(eos(root.x)[0]).max() < 1e-10, root.message
    S_inv, K = sym(root.x[: len(iu_d[0])], d, iu_d), eos(root.x)[1]
    # The solver's tolerance is relative to the whole state, not to each entry: entries near 0
    # (2.8e-5 of a 0.15 diagonal) are compared to 1e-8 of the largest one.
    sigma_ref = np.linalg.inv(S_inv)
    np.testing.assert_allclose(sol.sigma, sigma_ref, rtol=1e-8, atol=1e-8 * np.abs(sigma_ref).max())
    np.testing.assert_allclose(sol.kernels[0], K, rtol=1e-8, atol=1e-10)
    # feature learning is not negligible here: Σ is far from its prior
    assert np.linalg.norm(sol.sigma - sw2 / d * np.eye(d)) > 0.05 * sw2 / d * np.sqrt(d)


def test_deep_linear_narrow_width_from_gp_limit_in_one_stage():
    """A deep linear FCN at C = 4 straight from the GP limit (n = 64, d = 16), where early
    steps have to be cut back. Anderson's β halved at each cut (the deep default
    until 2026-12-02) never recovered: 460 iterations over 6 continuation stages. The fixed
    β = 0.1 takes 69 in one (`benchmarks/deep_mixing.py`)."""
    t = fj.datasets.linear_patch_teacher(64, 50, patch_size=16, patches=1, seed=0)
    net = fj.FCN(4.0, 1.2, 0.9, 0.05, fj.Linear(), depth=2)
    sol = fj.solve(net, t.X, t.Y)
    assert bool(sol.converged) and float(sol.residual) < 1e-10
    assert int(sol.num_stages) == 1 and int(sol.num_steps) < 150


def test_deep_linear_singular_prior_against_weight_space_eos():
    """A deep linear network with n > d, whose GP-limit prior Q^(1) = σ_w² XΣXᵀ has rank d:
    the EoS are solved without Q⁻¹ (K = Q(I + ΔQ)⁻¹). The reference is the same variational
    problem in weight space, written here in NumPy: the second layer's pre-activation is
    h(x) = vᵀx, v ~ N(0, σ_w² Σ) a priori and N(0, S) in the posterior, so K^(2) = XSXᵀ and
    F = D(σ_a² XSXᵀ + σ²I) + C KL(Σ ‖ Σ₀) + C KL(S ‖ σ_w² Σ), all d×d (X has full column
    rank, so the KL on Q's range is the KL in v). Its stationarity conditions,
    S⁻¹ = (σ_w²Σ)⁻¹ − (σ_a²/C) XᵀAX and Σ⁻¹ = Σ₀⁻¹ + Σ⁻¹ − Σ⁻¹SΣ⁻¹/σ_w², are root-found by
    MINPACK. Σ, K^(2), the test predictions and F must agree."""
    rng = np.random.default_rng(1)
    n, d, C, sw2, sa2, noise = 16, 6, 4.0, 1.2, 0.9, 0.05
    X, X_test, w = rng.standard_normal((n, d)), rng.standard_normal((7, d)), rng.standard_normal(d)
    Y = (X @ w)[:, None] + 0.3 * np.tanh(X[:, :1])
    net = fj.FCN(width=C, sigma_w2=sw2, sigma_a2=sa2, noise=noise, activation=fj.Linear(), depth=2)
    sol = fj.solve(net, X, Y)
    pred = fj.predict(sol, X_test)
    assert bool(sol.converged) and float(sol.residual) < 1e-10
    # A minimum of F, its n(n+1)/2 − d(d+1)/2 flat directions (shifts that leave K on Q's
    # range) not counted as negative; Lanczos leaves them out (K's null space).
    assert int(fj.hessian_index(sol)) == 0 == int(fj.hessian_index(sol, "lanczos"))
    iu = np.triu_indices(d)
    k = len(iu[0])

    def sym(v):
        M = np.zeros((d, d))
        M[iu] = v
        return M + np.triu(M, 1).T

    def eos(v):
        S_inv, V_inv = sym(v[:k]), sym(v[k:])
        Sig, Sv = np.linalg.inv(S_inv), np.linalg.inv(V_inv)
        Kf = sa2 * X @ Sv @ X.T + noise * np.eye(n)
        Kfi = np.linalg.inv(Kf)
        T = Kfi @ Y
        r2 = np.linalg.inv(sw2 * Sig) - sa2 / C * X.T @ (T @ T.T - Kfi) @ X - V_inv
        r1 = d / sw2 * np.eye(d) - S_inv @ Sv @ S_inv / sw2
        return np.concatenate([r1[iu], r2[iu]]), (Sig, Sv, Kf)

    v0 = np.concatenate([(d / sw2 * np.eye(d))[iu], (d / sw2**2 * np.eye(d))[iu]])
    root = scipy.optimize.root(lambda v: eos(v)[0], v0, method="hybr", tol=1e-14)
    assert np.abs(eos(root.x)[0]).max() < 1e-10, root.message
    Sig, Sv, Kf = eos(root.x)[1]
    np.testing.assert_allclose(sol.sigma, Sig, rtol=1e-8, atol=1e-8 * np.abs(Sig).max())
    K = X @ Sv @ X.T
    assert np.linalg.matrix_rank(K) == d  # the learned K^(2) is singular too
    np.testing.assert_allclose(sol.kernels[0], K, rtol=1e-8, atol=1e-8 * np.abs(K).max())
    cross = sa2 * X_test @ Sv @ X.T
    np.testing.assert_allclose(pred.mean, cross @ np.linalg.solve(Kf, Y), rtol=1e-8, atol=1e-10)
    var = sa2 * np.einsum("ij,jk,ik->i", X_test, Sv, X_test)
    var = var - np.sum(cross * np.linalg.solve(Kf, cross.T).T, 1)
    np.testing.assert_allclose(pred.variance, var, rtol=1e-8, atol=1e-10)

    def kl(S, P):
        return 0.5 * (np.trace(np.linalg.solve(P, S)) - np.linalg.slogdet(S)[1]
                      + np.linalg.slogdet(P)[1] - d)  # fmt: skip

    D = 0.5 * np.sum(Y * np.linalg.solve(Kf, Y)) + 0.5 * np.linalg.slogdet(Kf)[1]
    F = D + 0.5 * n * np.log(2 * np.pi) + C * kl(Sig, sw2 / d * np.eye(d)) + C * kl(Sv, sw2 * Sig)
    np.testing.assert_allclose(float(sol.free_energy), F, rtol=1e-10)
    assert np.linalg.norm(Sig - sw2 / d * np.eye(d)) > 0.3 * sw2 / d * np.sqrt(d)  # learned


@pytest.mark.slow
def test_duplicate_inputs_equal_halved_noise(deep_task, deep_solutions):
    """Every training point twice, noise σ², is the same posterior over functions as each
    point once with noise σ²/2 (the two likelihood factors multiply to one), so the EoS'
    solutions must agree; the evidence differs by (nm/2) log(4πσ²). With duplicates every
    GP-limit prior Q^(1), Q^(2) of a depth-3 erf FCN is singular: solved without Q⁻¹, its
    K^(l) live on Q's range (here: the duplicated blocks)."""
    t, halved = deep_task, deep_solutions[3]  # noise 0.01
    net = _net(3.0, 3, noise=0.02)
    twice = fj.solve(net, np.concatenate([t.X, t.X]), np.concatenate([t.Y, t.Y]))
    assert bool(twice.converged)
    np.testing.assert_allclose(twice.sigma, halved.sigma, rtol=1e-9, atol=1e-10)
    for K2, K1 in zip(twice.kernels, halved.kernels, strict=True):
        np.testing.assert_allclose(K2, np.tile(K1, (2, 2)), rtol=1e-9, atol=1e-10)
    p2, p1 = fj.predict(twice, t.X_test, t.Y_test), fj.predict(halved, t.X_test, t.Y_test)
    np.testing.assert_allclose(p2.mean, p1.mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(p2.variance, p1.variance, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(p2.layer_stretch, p1.layer_stretch, rtol=1e-8)
    np.testing.assert_allclose(float(p2.chi), float(p1.chi), rtol=1e-8)
    offset = 0.5 * len(t.X) * np.log(4 * np.pi * 0.02)
    np.testing.assert_allclose(float(twice.free_energy - halved.free_energy), offset, rtol=1e-9)
    # and the noise matters: each point once with σ² itself is another solution
    once = fj.solve(net, t.X, t.Y)
    assert np.abs(np.asarray(halved.sigma) - np.asarray(once.sigma)).max() > 1e-3


def test_predict_at_train_points_reproduces_the_train_block(deep_task, deep_solutions):
    t, sol = deep_task, deep_solutions[3]
    pred = fj.predict(sol, t.X, t.Y)
    Qf = np.asarray(sol.network.post_kernel(3, sol.kernels[-1]))
    Kf = Qf + 0.01 * np.eye(len(t.X))
    np.testing.assert_allclose(pred.mean, Qf @ np.linalg.solve(Kf, t.Y), rtol=1e-8, atol=1e-10)
    var = np.diag(Qf - Qf @ np.linalg.solve(Kf, Qf))
    np.testing.assert_allclose(pred.variance, var, rtol=1e-6, atol=1e-10)
    assert pred.layer_stretch.shape == (3,) and bool(np.all(pred.layer_stretch > 0))
    assert len(pred.kernel_eigenvalues) == 2 and float(pred.chi) > 0


def test_sweep_equals_loop_deep(deep_task):
    t = deep_task
    widths = np.array([50.0, 3.0, np.inf])
    net = _net(1.0, 2)
    # The path schedule only: the parallel one is a vmap of `solve`, the same program for
    # every depth, and is checked against the loop in test_solve.py.
    sols, preds = fj.sweep(net, t.X, t.Y, widths, t.X_test, t.Y_test, schedule="path")
    index, lanczos = fj.hessian_index(sols), fj.hessian_index(sols, "lanczos")
    for i, C in enumerate(widths):
        ref = fj.solve(_net(C, 2), t.X, t.Y)
        assert bool(sols.converged[i])
        assert int(index[i]) == int(fj.hessian_index(ref)) == int(lanczos[i]) == 0
        np.testing.assert_allclose(sols.kernels[0][i], ref.kernels[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            preds.mean[i], fj.predict(ref, t.X_test).mean, rtol=1e-8, atol=1e-11
        )


@pytest.fixture(scope="module")
def per_layer_value_and_grad(deep_task):
    """The test error and its gradient in (σ_w² per layer, σ², t) with training inputs
    X + tV along a fixed random V, one compiled program that the finite differences of the
    two tests below also take their values from."""
    t = deep_task
    V = np.random.default_rng(1).standard_normal(np.shape(t.X))

    def loss(p):
        net = fj.FCN(width=3.0, depth=2, sigma_w2=p[:2], sigma_a2=0.7, noise=p[2])
        return fj.predict(fj.solve(net, t.X + p[3] * V, t.Y), t.X_test, t.Y_test).test_error

    return jax.jit(jax.value_and_grad(loss))


def test_gradients_per_layer_priors_match_finite_differences(per_layer_value_and_grad):
    """d(test error)/d(σ_w² per layer, σ², the inputs along V) through the implicit adjoint
    (matrix-free GMRES). Since stop 63 the solver measures each layer's unknowns in units
    that depend on σ_w² and X (`_solve._state_scale`), a change of variables that the
    derivative must not see."""
    value_and_grad = per_layer_value_and_grad
    p = jnp.array([1.5, 1.2, 0.01, 0.0])
    g = value_and_grad(p)[1]
    for i in range(4):
        h = 1e-5 * (float(p[i]) or 1.0)
        e = jnp.zeros(4).at[i].set(h)
        fd = (value_and_grad(p + e)[0] - value_and_grad(p - e)[0]) / (2 * h)
        # relative to the largest component: d/dσ_{w,1}² is ~10⁻³ of the others here
        np.testing.assert_allclose(g[i], fd, rtol=1e-5, atol=1e-6 * float(jnp.abs(g).max()))


@pytest.mark.slow
def test_gradients_through_minimise_match_finite_differences(deep_task):
    """d(test error)/d(σ_w², σ²) at the minimum of F that `solve(minimise=True)` reaches from
    seed 11's saddle (C = 2, σ² = 10⁻³): the implicit adjoint of the final root find, which
    the minimiser before it (its inputs stopped) must not disturb. Against central finite
    differences of solves started at that minimum (`precision0`): which minimum the descent
    from the saddle reaches changes with σ² at 10⁻⁵ relative (stop 70), so differences of
    `minimise=True` solves would compare two minima."""
    X, X_test = np.asarray(deep_task.X), np.asarray(deep_task.X_test)
    Y, Y_test = _sine_targets(X, 11), _sine_targets(X_test, 11)

    def loss(p, start):
        net = fj.FCN(width=2.0, depth=3, sigma_w2=p[0], sigma_a2=0.25, noise=p[1])
        if start is None:
            sol = fj.solve(net, X, Y, minimise=True)
        else:
            sol = fj.solve(net, X, Y, precision0=start)
        aux = (sol.converged, (sol.precision, *sol.kernel_shifts))
        return fj.predict(sol, X_test, Y_test).test_error, aux

    p = jnp.array([2.0, 1e-3])
    (value, (converged, start)), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(p, None)
    assert bool(converged) and np.all(np.isfinite(g))
    at_minimum = jax.jit(lambda p, s: loss(p, s)[0])
    np.testing.assert_allclose(float(at_minimum(p, start)), float(value), rtol=1e-10)
    for i in range(2):
        h = 1e-5 * float(p[i])
        e = jnp.zeros(2).at[i].set(h)
        fd = (at_minimum(p + e, start) - at_minimum(p - e, start)) / (2 * h)
        np.testing.assert_allclose(g[i], fd, rtol=1e-4, atol=1e-6 * float(jnp.abs(g).max()))


@pytest.mark.slow
def test_tune_per_layer_sigma_w2_follows_finite_differences(deep_task, per_layer_value_and_grad):
    """`tune` on a per-layer σ_w² (shape (2,)): its first gradient, in log σ_w², equals
    central finite differences of the predicted test error through `solve` and `predict`,
    and its first steps move each layer's σ_w² against its own derivative."""
    t = deep_task
    sw2 = np.array([1.5, 1.5])

    def net(s):
        return fj.FCN(width=3.0, depth=2, sigma_w2=jnp.asarray(s), sigma_a2=0.7, noise=0.01)

    def err(s):
        return float(per_layer_value_and_grad(jnp.asarray([*s, 0.01, 0.0]))[0])

    h = 1e-4
    fd = np.array(
        [(err(sw2 * np.exp(h * e)) - err(sw2 * np.exp(-h * e))) / (2 * h) for e in np.eye(2)]
    )
    assert np.all(np.abs(fd) > 1e-4)  # both layers matter here
    res = fj.tune(
        net(sw2),
        t.X,
        t.Y,
        params=("sigma_w2",),
        X_val=t.X_test,
        Y_val=t.Y_test,
        steps=2,
        progress=False,
    )
    assert res.converged and res.history["sigma_w2"].shape == (2, 2)
    np.testing.assert_allclose(res.history["grad_norm"][0], np.linalg.norm(fd), rtol=1e-4)
    np.testing.assert_allclose(res.history["objective"][0], err(sw2), rtol=1e-10)
    step = np.log(res.history["sigma_w2"][1] / res.history["sigma_w2"][0])
    assert np.all(np.sign(step) == -np.sign(fd))


def test_reproduces_reference_three_layer_erf():
    """../shared/reference/fcn3_erf_n128: alpha and rmse at C = 10000 and 2000 to 1e-6."""
    X = np.load(REF / "X_train.npy").astype(float)
    Y = np.load(REF / "Y_train.npy").astype(float)
    n = len(Y)
    for C, alpha_ref, rmse_ref in [
        (10000, 73.84511619476987, 0.12941721867627967),
        (2000, 56.25473766764203, 0.1158302079882872),
    ]:
        net = fj.FCN(width=C, sigma_w2=2.0, sigma_a2=2 / 256, noise=1e-3, depth=2)
        sol = fj.solve(net, X, Y)
        assert bool(sol.converged)
        Q = np.asarray(net.post_kernel(2, sol.kernels[0]))
        Kf = Q + 1e-3 * np.eye(n)
        tt = np.linalg.solve(Kf, Y)[:, 0]
        y = Y[:, 0]
        alpha = tt @ y / (y @ y)
        fluct = np.trace(Q - Q @ np.linalg.solve(Kf, Q)) / n
        rmse = np.sqrt((1e-6 * np.mean(tt**2) + fluct) / np.var(y))
        assert abs(alpha / alpha_ref - 1) < 1e-6
        assert abs(rmse / rmse_ref - 1) < 1e-6


def test_deep_bad_input(deep_task):
    with pytest.raises(ValueError, match="sigma_w2"):
        fj.FCN(width=2.0, depth=2, sigma_w2=jnp.ones(3), sigma_a2=1.0, noise=0.1)
    with pytest.raises(ValueError, match="activations"):
        fj.FCN(width=2.0, depth=3, sigma_w2=1.0, sigma_a2=1.0, noise=0.1, activation=(fj.Erf(),))
    with pytest.raises(ValueError, match="width_ratios"):
        fj.FCN(width=2.0, depth=2, sigma_w2=1.0, sigma_a2=1.0, noise=0.1, width_ratios=(1.0, -1))
    with pytest.raises(ValueError, match="depth"):
        fj.FCN(width=2.0, depth=0, sigma_w2=1.0, sigma_a2=1.0, noise=0.1)
    net = _net(2.0, 2)
    with pytest.raises(ValueError, match="depth-1"):
        net.output_kernel(jnp.eye(5), deep_task.X)
    with pytest.raises(ValueError, match="precision0"):
        fj.solve(net, deep_task.X, deep_task.Y, precision0=jnp.eye(5))
    with pytest.raises(ValueError, match="kernels"):
        fj.free_energy(net, jnp.eye(5), deep_task.X, deep_task.Y)
