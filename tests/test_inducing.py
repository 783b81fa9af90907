"""Inducing points: the Nyström (FITC) readout of one hidden layer, checked against the same
approximation written densely here, and against the exact kernel when U holds every input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fls_jax as fj


NOISE, SW2, SA2 = 0.02, 1.3, 0.8


def _erf_kernel(Sigma, X1, X2):
    """σ_a² (2/π) arcsin(2 x Σ x' / √((1 + 2 xΣx)(1 + 2 x'Σx'))), written out here."""
    a = jnp.einsum("ns,st,nt->n", X1, Sigma, X1)
    b = jnp.einsum("ns,st,nt->n", X2, Sigma, X2)
    c = X1 @ Sigma @ X2.T
    return SA2 * 2 / jnp.pi * jnp.arcsin(2 * c / jnp.sqrt((1 + 2 * a[:, None]) * (1 + 2 * b)))


def _fitc(Sigma, X, U):
    """K_f = Q_XU Q_UU⁻¹ Q_UX + diag(Q_XX − that) + σ²I, and the cross-covariance factor."""
    Quu = _erf_kernel(Sigma, U, U)
    Quu = Quu + 1e-10 * jnp.mean(jnp.diagonal(Quu)) * jnp.eye(len(U))
    Qxu = _erf_kernel(Sigma, X, U)
    nys = Qxu @ jnp.linalg.solve(Quu, Qxu.T)
    diag = jnp.diagonal(_erf_kernel(Sigma, X, X))
    return nys + jnp.diag(diag - jnp.diagonal(nys)) + NOISE * jnp.eye(len(X)), Qxu, Quu


def _free_energy_dense(Sigma, X, Y, U, C):
    """F of SPEC §3 with the FITC K_f, in n×n matrices."""
    K = _fitc(Sigma, X, U)[0]
    n, m = Y.shape
    _, logdet = jnp.linalg.slogdet(K)
    data = 0.5 * jnp.sum(Y * jnp.linalg.solve(K, Y)) + 0.5 * m * logdet
    data = data + 0.5 * n * m * jnp.log(2 * jnp.pi)
    S = Sigma.shape[0]
    prior = SW2 / S
    kl = 0.5 * (jnp.trace(Sigma) / prior - jnp.linalg.slogdet(Sigma / prior)[1] - S)
    return data + C * kl


def _net(width, U=None):
    return fj.FCN(width=width, sigma_w2=SW2, sigma_a2=SA2, noise=NOISE, inducing=U)


@jax.jit
def _dense_fitc_reference(Sigma, X, Y, U, X_test):
    """The dense FITC formulas at Σ, as one compiled program (op by op they cost ~400 small
    compilations): F and its gradient in Σ, and the predictive mean, variance, train error
    and χ proxy."""
    F, grad = jax.value_and_grad(_free_energy_dense)(Sigma, X, Y, U, 4.0)
    K, Qxu, Quu = _fitc(Sigma, X, U)
    cross = _erf_kernel(Sigma, X_test, U) @ jnp.linalg.solve(Quu, Qxu.T)  # FITC's Q_f(x*, X)
    qss = jnp.diagonal(_erf_kernel(Sigma, X_test, X_test))
    T = jnp.linalg.solve(K, Y)
    Qf = K - NOISE * jnp.eye(len(X))  # the FITC readout kernel, diagonal included
    return dict(
        F=F,
        grad=grad,
        mean=cross @ T,
        variance=qss - jnp.sum(cross * jnp.linalg.solve(K, cross.T).T, 1),
        train_error=NOISE**2 * jnp.mean(T**2),
        chi=jnp.sum(T * (Qf @ T)) / 4.0,
    )


def test_nystrom_readout_equals_dense_fitc_formulas(fcn_task):
    """Solve with 12 inducing points (n = 32, C = 4): the dense FITC free energy, written
    here, is stationary at the solution and equals `free_energy`; `predict` gives the dense
    FITC predictive mean and variance."""
    X, Y = jnp.asarray(fcn_task.X), jnp.asarray(fcn_task.Y)
    U = fj.inducing_points(_net(4.0), X, 12)
    net = _net(4.0, U)
    sol = fj.solve(net, X, Y)
    pred = fj.predict(sol, fcn_task.X_test, fcn_task.Y_test)
    assert bool(sol.converged) and float(sol.residual) < 1e-10

    ref = _dense_fitc_reference(sol.sigma, X, Y, U, jnp.asarray(fcn_task.X_test))
    np.testing.assert_allclose(sol.free_energy, ref["F"], rtol=1e-10)
    grad = ref["grad"]
    scale = 4.0 * 0.5 * jnp.linalg.norm(sol.precision)  # the KL term's gradient parts
    assert float(jnp.linalg.norm(grad + grad.T) / 2) < 1e-8 * float(scale)
    np.testing.assert_allclose(pred.mean, ref["mean"], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(pred.variance, ref["variance"], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(pred.train_error, ref["train_error"], rtol=1e-8)
    np.testing.assert_allclose(pred.chi_proxy, ref["chi"], rtol=1e-8)


def test_inducing_points_on_every_input_give_the_exact_solution(fcn_task):
    """With U = every distinct input the Nyström readout is Q_f itself (up to its 10⁻¹⁰
    jitter): Σ and the predictions equal the dense solve's. The 32 training points repeat 12
    distinct inputs (each with its own target), so that both solves are programs that other
    tests compile too (n = 32, and r = 12 as above)."""
    X, Y = fcn_task.X[np.arange(32) % 12], fcn_task.Y
    exact = fj.solve(_net(4.0), X, Y)
    U = fj.inducing_points(_net(4.0), X, 12)
    assert sorted(map(tuple, np.asarray(U))) == sorted(map(tuple, fcn_task.X[:12]))
    sol = fj.solve(_net(4.0, U), X, Y)
    assert bool(exact.converged) and bool(sol.converged)
    np.testing.assert_allclose(sol.sigma, exact.sigma, rtol=1e-7, atol=1e-9)
    a = fj.predict(sol, fcn_task.X_test, fcn_task.Y_test)
    b = fj.predict(exact, fcn_task.X_test, fcn_task.Y_test)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(a.variance, b.variance, rtol=1e-6, atol=1e-8)


def test_inducing_points_follow_pivoted_cholesky(fcn_task):
    """`inducing_points` picks the pivots of a greedy pivoted Cholesky of the GP kernel,
    here re-done in NumPy on the dense kernel; too many points for the data is an error."""
    X = np.asarray(fcn_task.X)
    K = np.asarray(_erf_kernel(SW2 / 6 * np.eye(6), X, X))
    residual, picked = K.copy(), []
    for _ in range(10):
        i = int(np.argmax(np.diagonal(residual)))
        picked.append(i)
        residual = residual - np.outer(residual[:, i], residual[i]) / residual[i, i]
    U = fj.inducing_points(_net(4.0), X, 10)
    np.testing.assert_array_equal(np.asarray(U), X[picked])
    with pytest.raises(ValueError, match="fewer inducing points"):
        fj.inducing_points(_net(4.0), np.repeat(X[:3], 4, axis=0), 4)
    with pytest.raises(ValueError, match="r must be"):
        fj.inducing_points(_net(4.0), X, 0)
    # NaN inputs or a non-positive prior variance are named (they made a NaN pivot, which
    # read as "fewer inducing points")
    with pytest.raises(ValueError, match="X contains NaN"):
        fj.inducing_points(_net(4.0), np.where(X > 1, np.nan, X), 4)
    for bad in (-1.0, np.nan):
        net = fj.FCN(width=4.0, sigma_w2=bad, sigma_a2=SA2, noise=NOISE)
        with pytest.raises(ValueError, match="sigma_w2 must be > 0"):
            fj.inducing_points(net, X, 4)
    with pytest.raises(ValueError, match="one hidden layer"):
        fj.FCN(width=4.0, sigma_w2=SW2, sigma_a2=SA2, noise=NOISE, depth=2, inducing=X[:3])
    with pytest.raises(ValueError, match="columns"):
        fj.solve(_net(4.0, X[:3, :5]), X, fcn_task.Y)
