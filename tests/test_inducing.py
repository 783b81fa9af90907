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

    Sigma = sol.sigma
    np.testing.assert_allclose(sol.free_energy, _free_energy_dense(Sigma, X, Y, U, 4.0), rtol=1e-10)
    grad = jax.grad(_free_energy_dense)(Sigma, X, Y, U, 4.0)
    scale = 4.0 * 0.5 * jnp.linalg.norm(sol.precision)  # the KL term's gradient parts
    assert float(jnp.linalg.norm(grad + grad.T) / 2) < 1e-8 * float(scale)

    K, Qxu, Quu = _fitc(Sigma, X, U)
    Xs = jnp.asarray(fcn_task.X_test)
    cross = _erf_kernel(Sigma, Xs, U) @ jnp.linalg.solve(Quu, Qxu.T)  # FITC's Q_f(x*, X)
    qss = jnp.diagonal(_erf_kernel(Sigma, Xs, Xs))
    np.testing.assert_allclose(pred.mean, cross @ jnp.linalg.solve(K, Y), rtol=1e-8, atol=1e-10)
    var = qss - jnp.sum(cross * jnp.linalg.solve(K, cross.T).T, 1)
    np.testing.assert_allclose(pred.variance, var, rtol=1e-7, atol=1e-10)
    T = jnp.linalg.solve(K, Y)
    np.testing.assert_allclose(pred.train_error, NOISE**2 * jnp.mean(T**2), rtol=1e-8)
    Qf = K - NOISE * jnp.eye(len(X))  # the FITC readout kernel, diagonal included
    np.testing.assert_allclose(pred.chi_proxy, jnp.sum(T * (Qf @ T)) / 4.0, rtol=1e-8)


def test_inducing_points_on_every_input_give_the_exact_solution(fcn_task):
    """With U = all n inputs the Nyström readout is Q_f itself (up to its 10⁻¹⁰ jitter):
    Σ and the predictions equal the dense solve's."""
    X, Y = fcn_task.X, fcn_task.Y
    exact = fj.solve(_net(4.0), X, Y)
    U = fj.inducing_points(_net(4.0), X, len(X))
    assert sorted(map(tuple, np.asarray(U))) == sorted(map(tuple, X))
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
    with pytest.raises(ValueError, match="one hidden layer"):
        fj.FCN(width=4.0, sigma_w2=SW2, sigma_a2=SA2, noise=NOISE, depth=2, inducing=X[:3])
    with pytest.raises(ValueError, match="columns"):
        fj.solve(_net(4.0, X[:3, :5]), X, fcn_task.Y)
