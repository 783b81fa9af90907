"""How close `fj.renormalise`'s m×m and P×P saddle points are to the minimum (SPEC §5).

    python benchmarks/matrix_saddle_digits.py

For one hidden layer the kernel is linear in the scale, A(U) = Σ_ab U_ab B_ab + σ²I (B_ab =
E_ab ⊗ K for m outputs, the patch-pair kernels κ_ab for a PatchCNN), and the action

    S(U) = k(tr U − log det U) + ½ yᵀA⁻¹y + ½ log det A,    k = C/2,

has the gradient and Hessian in U's upper triangle written out here (NumPy, closed forms), so
Newton's method from scipy's BFGS minimum finds U* to ~10⁻¹⁵. The kernels themselves are
taken from fls_jax (`_gp_post_kernels`, `_patch_pair_kernels`): what is checked is the
minimisation, not the kernels. Printed per case: max |U − U*| / max |U*|, the mean
predictor's max relative error (the GP's mean at U*, dense NumPy), the Laplace log evidence's
error (the reference's, in `renormalise`'s coordinates), the reference's gradient
norm, and the least wall time of 7 jit-compiled calls after the first (compiling) one, of
the solve and of a reverse-mode gradient (of the mean's sum plus log Z in σ_w² and σ²).

A deep linear FCN (two layers, m = 2) has no closed-form reference here; its line prints the
largest entry of the action's gradient at fls_jax's layer scales, in the saddle's own local
coordinates (jax), which is zero at the minimum.

Run it on two versions back to back, e.g. with ``PYTHONPATH`` on a git worktree. About a
minute on 2 cores.
"""

import platform
import time
import warnings

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import scipy.optimize  # noqa: E402
from scipy.special import multigammaln  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._free_energy import _gp_post_kernels  # noqa: E402
from fls_jax._renorm import _patch_pair_kernels  # noqa: E402


def directions(q):
    """The symmetric unit directions D (E_aa, or E_ab + E_ba) of U's upper triangle."""
    out = []
    for a, b in zip(*np.triu_indices(q), strict=True):
        D = np.zeros((q, q))
        D[a, b] = D[b, a] = 1.0
        out.append(D)
    return np.stack(out)


def reference(B, y, k, noise, U0):
    """U* by Newton's method on S's closed-form gradient and Hessian, from scipy's BFGS
    started at U0 (a cross-check that both agree)."""
    q, N = B.shape[0], B.shape[2]
    Ds = directions(q)
    BD = np.einsum("dab,abij->dij", Ds, B)  # B(D) for each direction

    def parts(U):
        A = np.einsum("ab,abij->ij", U, B) + noise * np.eye(N)
        Ai = np.linalg.inv(A)
        alpha = Ai @ y
        Ui = np.linalg.inv(U)
        return A, Ai, alpha, Ui

    def action(U):
        A = parts(U)[0]
        return (
            k * (np.trace(U) - np.linalg.slogdet(U)[1])
            + 0.5 * y @ np.linalg.solve(A, y)
            + 0.5 * np.linalg.slogdet(A)[1]
        )

    def gradient(U):
        _, Ai, alpha, Ui = parts(U)
        prior = k * np.einsum("dab,ba->d", Ds, np.eye(q) - Ui)
        data = 0.5 * (np.einsum("ij,dji->d", Ai, BD) - np.einsum("i,dij,j->d", alpha, BD, alpha))
        return prior + data

    def hessian(U):
        _, Ai, alpha, Ui = parts(U)
        UiD = np.einsum("ab,dbc->dac", Ui, Ds)
        prior = k * np.einsum("dab,eba->de", UiD, UiD)
        AiB = np.einsum("ij,djk->dik", Ai, BD)
        data = -0.5 * np.einsum("dij,eji->de", AiB, AiB)
        BA = np.einsum("dij,j->di", BD, alpha)
        data += np.einsum("di,ij,ej->de", BA, Ai, BA)
        return prior + data

    def to_U(u):
        return np.einsum("d,dab->ab", u, Ds)

    u = U0[np.triu_indices(q)]
    start = scipy.optimize.minimize(
        lambda t: action(to_U(t)) if np.all(np.linalg.eigvalsh(to_U(t)) > 0) else np.inf,
        u,
        jac=lambda t: gradient(to_U(t)),
        method="BFGS",
        options=dict(gtol=1e-9),
    )
    u = start.x
    for _ in range(20):
        u = u - np.linalg.solve(hessian(to_U(u)), gradient(to_U(u)))
    U = to_U(u)
    # The Laplace evidence in `renormalise`'s coordinates U^{1/2} e^Z U^{1/2}: Z ↦ U^{1/2} Z
    # U^{1/2} has determinant det U^{(q+1)/2} on symmetric matrices; the Wishart density with
    # respect to det U^{−(q+1)/2} dU is exp(kq log k − kq − log Γ_q(k) − k(tr U − log det U − q)).
    A = parts(U)[0]
    logdet_u = np.linalg.slogdet(U)[1]
    nll = 0.5 * (y @ np.linalg.solve(A, y) + np.linalg.slogdet(A)[1] + N * np.log(2 * np.pi))
    log_prior = k * q * np.log(k) - k * q - multigammaln(k, q) - k * (np.trace(U) - logdet_u - q)
    logdet_h = np.linalg.slogdet(hessian(U))[1] + (q + 1) * logdet_u
    log_z = -nll + log_prior + 0.5 * (len(u) * np.log(2 * np.pi) - logdet_h)
    return U, float(np.max(np.abs(gradient(U)))), np.linalg.solve(A, y), log_z


def timed(f, *args):
    """f(*args) and the least wall time of 7 calls after the first (compiling) one."""
    out = jax.block_until_ready(f(*args))
    seconds = []
    for _ in range(7):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        seconds.append(time.perf_counter() - t)
    return out, min(seconds)


def gradient_time(net, X, Y, X_test):
    """The least time of a reverse-mode gradient of Σ mean + log Z in (σ_w², σ²)."""

    def scalar(hyper):
        at = eqx.tree_at(lambda m: (m.sigma_w2, m.noise), net, (hyper[0], hyper[1]))
        r = fj.renormalise(at, X, Y, X_test, method="saddle")
        return jnp.sum(r.mean) + r.log_evidence

    hyper = jnp.array([float(net.sigma_w2), float(net.noise)])
    return timed(jax.jit(jax.grad(scalar)), hyper)[1]


def fcn_case(name, act, m, C, noise, n=40, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X, X_test = rng.standard_normal((n, d)), rng.standard_normal((10, d))
    beta = rng.standard_normal((d, m)) / np.sqrt(d)
    Y = np.tanh(X @ beta) + 0.3 * np.tanh(X @ beta[:, ::-1])
    net = fj.FCN(C, 1.3, 1.0, noise, act)
    f = jax.jit(lambda X, Y, X_test: fj.renormalise(net, X, Y, X_test, method="saddle"))
    r, seconds = timed(f, X, Y, X_test)
    seconds = (seconds, gradient_time(net, X, Y, X_test))
    full = np.asarray(_gp_post_kernels(net, jnp.concatenate([X, X_test]))[-1])
    K, Ks = full[:n, :n], full[n:, :n]
    B = np.zeros((m, m, n * m, n * m))
    for a in range(m):
        for b in range(m):
            E = np.zeros((m, m))
            E[a, b] = 1.0
            B[a, b] = np.kron(E, K)
    y = Y.T.reshape(-1)
    U, g, alpha, log_z = reference(B, y, C / 2, noise, np.asarray(r.scale_matrix))
    mean = (np.kron(U, Ks) @ alpha).reshape(m, -1).T
    report(name, r, U, g, mean, log_z, seconds)


def patch_case(name, act, S, C, noise, n=48, d=16, seed=1):
    rng = np.random.default_rng(seed)
    X, X_test = rng.standard_normal((n, d)), rng.standard_normal((10, d))
    beta = 2 * rng.standard_normal(d) / np.sqrt(d)
    Y = np.tanh(X @ beta)
    net = fj.PatchCNN(C, 1.0, 1.0, noise, act, patch_size=S)
    f = jax.jit(lambda X, Y, X_test: fj.renormalise(net, X, Y, X_test, method="saddle"))
    r, seconds = timed(f, X, Y, X_test)
    seconds = (seconds, gradient_time(net, X, Y, X_test))
    B = np.asarray(_patch_pair_kernels(net, jnp.asarray(X), jnp.asarray(X)))
    Bt = np.asarray(_patch_pair_kernels(net, jnp.asarray(X_test), jnp.asarray(X)))
    U, g, alpha, log_z = reference(B, Y, C / 2, noise, np.asarray(r.scale_matrix))
    mean = (np.einsum("ab,abxi->xi", U, Bt) @ alpha)[:, None]
    report(name, r, U, g, mean, log_z, seconds)


def report(name, r, U, g, mean, log_z, seconds):
    dU = np.max(np.abs(np.asarray(r.scale_matrix) - U)) / np.max(np.abs(U))
    dm = np.max(np.abs(np.asarray(r.mean) - mean)) / np.max(np.abs(mean))
    dz = abs(float(r.log_evidence) - log_z)
    print(
        f"{name:34s} converged {bool(r.converged)!s:5s}  |ΔU|/|U| {dU:8.1e}  "
        f"|Δmean|/|mean| {dm:8.1e}  |Δlog Z| {dz:8.1e}  (reference |∇S| {g:.0e})  "
        f"{seconds[0] * 1e3:6.1f} ms, gradient {seconds[1] * 1e3:6.1f} ms"
    )


def deep_case():
    from fls_jax._renorm import _matrix_saddle

    rng = np.random.default_rng(2)
    n, d, m = 40, 6, 2
    X = rng.standard_normal((n, d))
    Y = np.stack([X[:, 0] + 0.3 * X[:, 1], X[:, 1] - 0.5 * X[:, 2]], axis=1)
    net = fj.FCN(5.0, 1.3, 1.0, 0.05, fj.Linear(), depth=2, width_ratios=(1.0, 0.6))
    K = np.asarray(_gp_post_kernels(net, jnp.asarray(X))[-1])
    lam, V = np.linalg.eigh(K)
    y = V.T @ Y

    def nll(U):  # −log N(Y; 0, U ⊗ K + σ²I) up to a constant, in K's eigenbasis
        M = lam[:, None, None] * U + 0.05 * jnp.eye(m)
        return 0.5 * jnp.sum(
            jnp.einsum("ia,iab,ib->i", y, jnp.linalg.inv(M), y) + jnp.linalg.slogdet(M)[1]
        )

    saddle = jax.jit(lambda: _matrix_saddle(nll, m, net, jnp.float64))()
    k = np.array([2.5, 1.5])
    roots = np.stack([np.real(scipy.linalg.sqrtm(v)) for v in np.asarray(saddle.layers)])

    def local(z):  # S at V_l = roots_l e^{Z_l} roots_l, chol(U) = R_2 R_1
        Z = jnp.stack(
            [jnp.array([[z[3 * i], z[3 * i + 1]], [z[3 * i + 1], z[3 * i + 2]]]) for i in range(2)]
        )
        Vs = jnp.asarray(roots) @ jax.vmap(jax.scipy.linalg.expm)(Z) @ jnp.asarray(roots)
        R = jnp.linalg.cholesky(Vs)
        L = R[1] @ R[0]
        prior = jnp.sum(k * (jnp.trace(Vs, axis1=1, axis2=2) - jnp.linalg.slogdet(Vs)[1]))
        return prior + nll(L @ L.T)

    g = np.max(np.abs(np.asarray(jax.grad(local)(jnp.zeros(6)))))
    print(
        f"{'deep linear FCN, depth 2, m = 2':34s} converged {bool(saddle.converged)!s:5s}  "
        f"max |∂S/∂Z| at the layer scales {g:.1e}"
    )


def main():
    warnings.simplefilter("ignore")
    print(f"# {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')} {fj.__file__}")
    fcn_case("linear FCN, m = 2, C = 6", fj.Linear(), 2, 6.0, 0.05)
    fcn_case("erf FCN, m = 3, C = 4", fj.Erf(), 3, 4.0, 0.01)
    fcn_case("erf FCN, m = 3, C = 200", fj.Erf(), 3, 200.0, 0.01)
    patch_case("linear PatchCNN, P = 4, C = 8", fj.Linear(), 4, 8.0, 0.05)
    patch_case("erf PatchCNN, P = 8, C = 8", fj.Erf(), 2, 8.0, 0.01)
    patch_case("erf PatchCNN, P = 8, C = 64", fj.Erf(), 2, 64.0, 1e-3)
    deep_case()


if __name__ == "__main__":
    main()
