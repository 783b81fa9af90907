"""Matrix kernel renormalisation (SPEC §5): two outputs of an FCN (m×m) and the patches of a
PatchCNN (P×P), against the exact posterior, sampled networks, simpler theories and the EoS.

    python benchmarks/matrix_renormalisation.py --part outputs
    python benchmarks/matrix_renormalisation.py --part deep
    python benchmarks/matrix_renormalisation.py --part patches
    python benchmarks/matrix_renormalisation.py --part timing
    python benchmarks/matrix_renormalisation.py --part mixture

`fls_jax.renormalise(..., method="saddle")` renormalises the kernel by a matrix U when one
hidden layer serves several outputs (f | U ~ N(0, U ⊗ K)) or several patches (kernel
Σ_ij U_ij κ_ij over patch pairs). For linear networks that is exact as a mixture over
U ~ Wishart(C, I/C); the script integrates that mixture by importance sampling, which gives
the exact posterior without MCMC: U = U*^{1/2} e^Z U*^{1/2} about the saddle point U*, the free
entries of Z drawn from a multivariate t (4 degrees of freedom) shaped by the posterior's
Hessian there, `--draws` draws; the effective sample size (ESS) is printed, and rows with an
ESS below ~1000 are not reliable. For erf
networks the ground truth is HMC (`fls_jax.sampling`, the readout integrated out, 8 chains;
± is the standard error over chains).

`--part outputs`: a linear teacher with two outputs of correlation `--rho` = 0.8, n = 48,
d = 32, targets ×2 (larger than the prior's: the scale grows), label noise σ² = 0.5 (where
the shrinkage σ²/U moves the mean predictor). Besides the saddle point: the scalar
renormalisation of each output alone (`renormalise` per column: exact for a linear network
with that one output), and the EoS (`fj.solve`). Printed: E[U | Y] and U*, the test error of
each mean predictor, and Cov(f_1(x*), f_2(x*)) averaged over test inputs (0 for the
per-output theories and the EoS, whose outputs are independent given the kernel).

`--part deep`: the same two outputs (in d = 64 > n, where the EoS solve deep linear
networks) for a depth-2 linear FCN, whose scale is composed of one m×m factor per layer,
against HMC at the widths `--sampled`; per-output: the exact scalar mixture of each output.

`--part patches`: the two PatchCNN tasks of `theory_vs_sampling.py` (n = 48, σ² = 0.01): a
linear PatchCNN (P = 4 patches of 8) on a linear patch teacher, exact; an erf PatchCNN (P = 8
patches of 4), sampled. Besides the saddle point: the GP (U = I), the EoS, and the scalar
renormalisation U = uI (the saddle restricted to multiples of I, i.e. the FCN theory applied
to the PatchCNN's NNGP kernel). Printed: train and test error, mean ensemble variance, and
the largest off-diagonal entry of U* relative to its diagonal. C must exceed P − 1.

`--part mixture`: `fj.renormalise(..., method="mixture")`, the package's importance sampler
(JAX), against this script's NumPy one (`exact_mixture`) on the two exact tasks above (the
outputs task, the linear PatchCNN), `--draws` draws each, side by side: seconds (the
package's first width includes compilation; later widths reuse it), test error, train error,
mean variance, the largest difference between the two E[U | Y], the ESS of each, and how
many of fls_jax's draws were dropped (`dropped_draws`).

`--part timing`: seconds for the P×P saddle point and for the EoS solve (`fj.solve` +
`fj.predict`) of an erf PatchCNN (P = 8) as n grows, first call (with compilation) and a
second at another width.
"""

import argparse
import json
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import minimize_scalar  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax import sampling as fs  # noqa: E402
from fls_jax._renorm import _patch_pair_kernels  # noqa: E402


def outputs_task(n, n_test, d, rho, scale, noise, seed):
    rng = np.random.default_rng(seed)
    X, X_test = rng.standard_normal((n, d)), rng.standard_normal((n_test, d))
    b1, b2 = rng.standard_normal((2, d))
    B = scale * np.stack([b1, rho * b1 + np.sqrt(1 - rho**2) * b2], axis=1) / np.sqrt(d)
    Y = X @ B + np.sqrt(noise) * rng.standard_normal((n, 2))
    return X, Y, X_test, X_test @ B


def _sym(z, q):
    """Symmetric q×q matrices from their upper triangles (rows of z, row-major)."""
    rows, cols = np.triu_indices(q)
    Z = np.zeros((len(z), q, q))
    Z[:, rows, cols] = z
    Z[:, cols, rows] = z
    return Z


def _log_exp_jacobian(mu):
    """log |d e^Z / dZ| on symmetric matrices (upper-triangle coordinates), from the
    eigenvalues μ of Z: Σ_i μ_i + Σ_{i<j} log((e^{μ_i} − e^{μ_j})/(μ_i − μ_j))."""
    a, b = mu[:, :, None], mu[:, None, :]
    gap = a - b
    safe = np.where(np.abs(gap) < 1e-9, 1.0, gap)
    pair = np.where(
        np.abs(gap) < 1e-9,
        (a + b) / 2,
        np.maximum(a, b) + np.log(-np.expm1(-np.abs(safe))) - np.log(np.abs(safe)),
    )
    q = mu.shape[1]
    iu = np.triu_indices(q, 1)
    return mu.sum(1) + pair[:, iu[0], iu[1]].sum(1)


def exact_mixture(kernels, Y, Y_test, noise, C, U_star, draws, seed, chunk=2000):
    """The posterior of a GP mixture over U ~ Wishart_q(C, I/C), by importance sampling.

    `kernels(U)` maps a stack of q×q matrices to (K, K*, k**): train (s×N×N), cross
    (s×N*×N) and the test blocks of the prior covariance needed (s×N*×b×b, the b outputs
    at each test input) for targets vec(Y) of length N = n·b. Draws are U = R e^Z R with
    R = U*^{1/2} and the free entries of Z from a multivariate t (4 degrees of freedom) whose
    scale is the inverse Hessian of the log posterior at Z = 0 (finite differences), so the
    proposal follows the posterior's shape at any width. Returns E[U | Y], the posterior
    mean predictor's train and test errors, the posterior covariance of the b outputs
    averaged over test inputs (b×b) and the effective sample size."""
    from scipy.stats import multivariate_t

    q = U_star.shape[0]
    p = q * (q + 1) // 2
    n, b = Y.shape
    y = Y.T.reshape(-1)
    mu, V = np.linalg.eigh(U_star)
    root = (V * np.sqrt(mu)) @ V.T

    def unpack(z):
        lam, Q = np.linalg.eigh(_sym(z, q))
        lam = np.clip(lam, -30, 30)  # far outside the posterior: weight 0 below
        Us = root @ np.einsum("sij,sj,skj->sik", Q, np.exp(lam), Q) @ root
        return 0.5 * (Us + Us.transpose(0, 2, 1)), lam

    def posterior(z, moments=False):
        """log prior(U) + log |dU/dZ| + log likelihood, and (moments) the GP's fits."""
        Us, lam = unpack(z)
        logdet_U = np.linalg.slogdet(Us)[1]
        out = (C - q - 1) / 2 * logdet_U - C / 2 * np.trace(Us, axis1=1, axis2=2)
        out = out + _log_exp_jacobian(lam)
        out = np.where(np.abs(lam).max(1) < 30, out, -np.inf)
        K, Ks, kss = kernels(Us)
        with np.errstate(all="ignore"):
            L = np.linalg.cholesky(K + noise * np.eye(n * b))
        half = np.linalg.solve(L, np.broadcast_to(y, K.shape[:2])[..., None])[..., 0]
        out = out - 0.5 * np.sum(half**2, 1) - np.sum(np.log(np.diagonal(L, axis1=1, axis2=2)), 1)
        if not moments:
            return out
        alpha = np.linalg.solve(L.transpose(0, 2, 1), half[..., None])[..., 0]
        proj = np.linalg.solve(L, Ks.transpose(0, 2, 1))  # (s, N, N*)
        proj = proj.reshape(len(K), n * b, b, Ks.shape[1] // b)
        cov = kss - np.einsum("sjax,sjbx->sxab", proj, proj)
        fit = np.einsum("sij,sj->si", K, alpha)
        return out, (Us, fit, np.einsum("sij,sj->si", Ks, alpha), cov)

    # The Hessian at Z = 0 by central differences (step h in every pair of coordinates).
    h, eye = 1e-3, np.eye(p)
    steps = [np.zeros(p)]
    for i in range(p):
        for j in range(i, p):
            for si in (1, -1):
                for sj in (1, -1):
                    steps.append(h * (si * eye[i] + sj * eye[j]))
    f = posterior(np.stack(steps))
    hess = np.zeros((p, p))
    k = 1
    for i in range(p):
        for j in range(i, p):
            pp, pm, mp, mm = f[k : k + 4]
            hess[i, j] = hess[j, i] = (pp - pm - mp + mm) / (4 * h * h)
            k += 4
    # i = j: steps ±2h, so (f(2h) − 2f(0) + f(−2h))/(4h²) is the second derivative.
    for i in range(p):
        base = 1 + 4 * sum(p - r for r in range(i))
        hess[i, i] = (f[base] - 2 * f[0] + f[base + 3]) / (4 * h * h)
    proposal = multivariate_t(loc=np.zeros(p), shape=np.linalg.inv(-hess), df=4)
    z = proposal.rvs(draws, random_state=seed).reshape(draws, p)
    log_w, parts = [], []
    for s in range(0, draws, chunk):
        lw, part = posterior(z[s : s + chunk], moments=True)
        lw = lw - proposal.logpdf(z[s : s + chunk])
        bad = ~np.isfinite(lw)  # overflowed far out in the tails: weight 0
        log_w.append(np.where(bad, -np.inf, lw))
        parts.append(tuple(np.where(bad.reshape((-1,) + (1,) * (x.ndim - 1)), 0, x) for x in part))
    log_w = np.concatenate(log_w)
    w = np.exp(log_w - logsumexp(log_w))
    Us = np.concatenate([part[0] for part in parts])
    fit = w @ np.concatenate([part[1] for part in parts])
    means = np.concatenate([part[2] for part in parts])
    mean = w @ means
    cov = np.einsum("s,sxab->xab", w, np.concatenate([part[3] for part in parts]))
    m_s = means.reshape(draws, b, -1)
    spread = np.einsum("s,sax,sbx->xab", w, m_s, m_s) - np.einsum(
        "ax,bx->xab", mean.reshape(b, -1), mean.reshape(b, -1)
    )
    return dict(
        U=np.einsum("s,sab->ab", w, Us),
        train_error=float(np.mean((fit - y) ** 2)),
        test_error=float(np.mean((mean - Y_test.T.reshape(-1)) ** 2)),
        covariance=(cov + spread).mean(0),
        ess=float(1 / np.sum(w**2)),
    )


def sampled(net, X, Y, X_test, Y_test, a, key):
    t0 = time.perf_counter()
    smp = fs.sample(
        net,
        X,
        Y,
        X_test,
        key=key,
        num_chains=a.chains,
        num_samples=a.samples,
        burn_in=a.burn_in,
        method="hmc",
        readout="marginal",
    )
    jax.block_until_ready(smp.f_test_mean)
    sec = time.perf_counter() - t0
    est = fs.estimates(smp, Y, Y_test)
    f = np.asarray(smp.f_test_mean)  # the outputs are independent given the hidden weights
    per_chain = [f.mean(1), np.einsum("cdxa,cdxb->cxab", f, f) / f.shape[1]]

    def cross(mu, m2):
        return np.mean(m2[:, 0, -1] - mu[:, 0] * mu[:, -1])

    cov = fs._jackknife(per_chain, cross)
    return dict(
        test_error=[float(est.test_error.value), float(est.test_error.stderr)],
        train_error=[float(est.train_error.value), float(est.train_error.stderr)],
        variance=[float(est.variance.value.mean()), float(np.mean(est.variance.stderr))],
        cross=[float(cov.value), float(cov.stderr)],
        max_rhat=smp.max_rhat,
        seconds=sec,
    )


def eos(net, X, Y, X_test, Y_test):
    pred = fj.predict(fj.solve(net, X, Y), X_test, Y_test)
    return dict(
        test_error=float(pred.test_error),
        train_error=float(pred.train_error),
        variance=float(np.mean(pred.variance)),
        converged=bool(pred.converged),
    )


def at(net, C):
    return eqx.tree_at(lambda m: m.width, net, jnp.asarray(float(C)))


def part_outputs(a, rows):
    X, Y, X_test, Y_test = outputs_task(a.n, 100, a.d, a.rho, a.target_scale, 0.5, a.seed)
    lin = fj.FCN(1.0, 1.0, 1.0, 0.5, fj.Linear())
    gp = fj.renormalise(at(lin, np.inf), X, Y, X_test, Y_test, method="saddle")
    K_all = np.asarray(lin.output_kernel(lin.prior_covariance(a.d), np.vstack([X, X_test])))
    K, Ks, kss = K_all[: a.n, : a.n], K_all[a.n :, : a.n], np.diag(K_all)[a.n :]

    def kernels(Us):  # U ⊗ K with outputs stacked: entry (a i, b j) = U_ab K_ij
        return (
            np.einsum("sab,ij->saibj", Us, K).reshape(len(Us), 2 * a.n, 2 * a.n),
            np.einsum("sab,xj->saxbj", Us, Ks).reshape(len(Us), 2 * len(Ks), 2 * a.n),
            np.einsum("sab,x->sxab", Us, kss),
        )

    print(
        f"\n# outputs: linear FCN, n = {a.n}, d = {a.d}, rho = {a.rho}, targets "
        f"x{a.target_scale}, sigma^2 = 0.5; exact = importance sampling of U ({a.draws} "
        f"draws); GP test error {float(gp.test_error):.4e}"
    )
    print(
        f"{'C':>5} | {'E[U|Y] 11 12 22':>22} {'U* 11 12 22':>22} {'per-output u':>14} | "
        f"{'test exact':>10} {'saddle':>10} {'per-out':>10} {'EoS':>10} | "
        f"{'cov12 exact':>11} {'saddle':>10} | {'ESS':>7} {'sec th':>6} {'sec ex':>6}"
    )
    for C in a.widths:
        net = at(lin, C)
        t0 = time.perf_counter()
        r = jax.block_until_ready(fj.renormalise(net, X, Y, X_test, Y_test, method="saddle"))
        sec_th = time.perf_counter() - t0
        U_star = np.asarray(r.scale_matrix)
        t0 = time.perf_counter()
        ex = exact_mixture(kernels, Y, Y_test, 0.5, C, U_star, a.draws, a.seed + 1)
        sec_ex = time.perf_counter() - t0
        sep = [fj.renormalise(net, X, Y[:, j], X_test, Y_test[:, j]) for j in (0, 1)]
        err_sep = float(np.mean([float(s.test_error) for s in sep]))
        th_eos = eos(net, X, Y, X_test, Y_test)
        E = ex["U"]
        row = dict(
            part="outputs",
            network="linear FCN",
            width=C,
            exact=dict(U=E.tolist(), test_error=ex["test_error"], ess=ex["ess"]),
            exact_cross=float(ex["covariance"][0, 1]),
            saddle_U=U_star.tolist(),
            saddle_test=float(r.test_error),
            saddle_cross=float(r.output_covariance[0, 1]),
            per_output_u=[float(s.scale) for s in sep],
            per_output_test=err_sep,
            eos=th_eos,
            converged=bool(r.converged),
            sec_saddle=sec_th,
            sec_exact=sec_ex,
        )
        rows.append(row)
        print(
            f"{C:5.0f} | {E[0, 0]:6.3f} {E[0, 1]:7.3f} {E[1, 1]:6.3f}   "
            f"{U_star[0, 0]:6.3f} {U_star[0, 1]:7.3f} {U_star[1, 1]:6.3f}   "
            f"{row['per_output_u'][0]:6.3f} {row['per_output_u'][1]:6.3f} | "
            f"{ex['test_error']:10.4e} {row['saddle_test']:10.4e} {err_sep:10.4e} "
            f"{th_eos['test_error']:10.4e} | {row['exact_cross']:11.4e} "
            f"{row['saddle_cross']:10.4e} | {ex['ess']:7.0f} {sec_th:6.2f} {sec_ex:6.1f}"
            + ("" if row["converged"] else "  NOT CONVERGED"),
            flush=True,
        )

    erf = fj.FCN(1.0, 1.0, 1.0, 0.5, fj.Erf())
    title = "outputs: erf FCN, same task"
    task = (X, Y, X_test, Y_test)
    sampled_outputs(a, rows, ("outputs", "erf FCN", title), erf, task, "saddle", 100)


def part_deep(a, rows):
    """Two outputs of a depth-2 linear FCN (one m×m factor per layer) against HMC."""
    task = outputs_task(a.n, 100, 64, a.rho, a.target_scale, 0.5, a.seed)
    lin = fj.FCN(1.0, 1.0, 1.0, 0.5, fj.Linear(), depth=2)
    title = "deep: linear FCN of depth 2, the outputs task with d = 64 > n (the EoS need it)"
    sampled_outputs(a, rows, ("deep", "linear FCN, depth 2", title), lin, task, "mixture", 300)


def sampled_outputs(a, rows, names, base, task, per_output, seed):
    """Two outputs against HMC at the widths `a.sampled`: the m×m saddle, each output's own
    scalar renormalisation (`per_output`: its method), the EoS. `names`: (part, network,
    title)."""
    part, network, title = names
    X, Y, X_test, Y_test = task
    gp = fj.renormalise(at(base, np.inf), X, Y, X_test, Y_test, method="saddle")
    print(
        f"\n# {title}; HMC ({a.chains} chains x {a.samples} draws, burn-in {a.burn_in}, "
        f"readout integrated out); GP test error {float(gp.test_error):.4e}"
    )
    print(
        f"{'C':>5} | {'U* 11 12 22':>22} | {'test sampled':>20} {'saddle':>10} "
        f"{'per-out':>10} {'EoS':>10} | {'cov12 sampled':>20} {'saddle':>10} | "
        f"{'Rhat':>5} {'sec':>5}"
    )
    for j, C in enumerate(a.sampled):
        net = at(base, C)
        r = fj.renormalise(net, X, Y, X_test, Y_test, method="saddle")
        U_star = np.asarray(r.scale_matrix)
        sep = [
            fj.renormalise(net, X, Y[:, i], X_test, Y_test[:, i], method=per_output) for i in (0, 1)
        ]
        err_sep = float(np.mean([float(s.test_error) for s in sep]))
        th_eos = eos(net, X, Y, X_test, Y_test)
        smp = sampled(net, X, Y, X_test, Y_test, a, jax.random.key(a.seed + seed + j))
        row = dict(
            part=part,
            network=network,
            width=C,
            saddle_U=U_star.tolist(),
            saddle_test=float(r.test_error),
            saddle_cross=float(r.output_covariance[0, 1]),
            per_output_test=err_sep,
            eos=th_eos,
            sampled=smp,
            converged=bool(r.converged),
        )
        rows.append(row)
        print(
            f"{C:5.0f} | {U_star[0, 0]:6.3f} {U_star[0, 1]:7.3f} {U_star[1, 1]:6.3f}   | "
            f"{smp['test_error'][0]:10.4e}±{smp['test_error'][1]:8.2e} "
            f"{row['saddle_test']:10.4e} {err_sep:10.4e} {th_eos['test_error']:10.4e} | "
            f"{smp['cross'][0]:10.4e}±{smp['cross'][1]:8.2e} {row['saddle_cross']:10.4e} | "
            f"{smp['max_rhat']:5.2f} {smp['seconds']:5.0f}"
            + ("" if row["converged"] else "  NOT CONVERGED"),
            flush=True,
        )


def scalar_patch_theory(net, X, Y, X_test, Y_test):
    """U = uI: the saddle of (PC/2)(u − log u) + the GP's −log evidence with kernel uK (K the
    NNGP kernel), by scipy on log u; then the GP predictions with uK."""
    P = X.shape[1] // net.patch_size
    K_all = np.asarray(net.output_kernel(net.prior_covariance(X.shape[1]), np.vstack([X, X_test])))
    n, noise, C = len(X), float(net.noise), float(net.width)
    K, Ks, kss = K_all[:n, :n], K_all[n:, :n], np.diag(K_all)[n:]
    lam, V = np.linalg.eigh(K)
    y = V.T @ Y[:, 0]

    def action(z):
        u = np.exp(z)
        den = u * lam + noise
        return P * C / 2 * (u - z) + 0.5 * (np.sum(y**2 / den) + np.sum(np.log(den)))

    u = float(np.exp(minimize_scalar(action, bounds=(-20, 20), method="bounded").x))
    A = u * K + noise * np.eye(n)
    alpha = np.linalg.solve(A, Y[:, 0])
    mean = u * Ks @ alpha
    var = u * kss - u**2 * np.einsum("xi,xi->x", Ks, np.linalg.solve(A, Ks.T).T)
    return dict(
        u=u,
        test_error=float(np.mean((mean - Y_test[:, 0]) ** 2)),
        train_error=float(np.mean((noise * alpha) ** 2)),
        variance=float(np.mean(var)),
    )


def part_patches(a, rows):
    n = a.n
    lin_task = fj.datasets.linear_patch_teacher(n, 100, patch_size=8, patches=4, seed=0)
    erf_task = fj.datasets.linear_patch_teacher(n, 100, patch_size=4, patches=8, seed=1)
    cases = [
        ("linear PatchCNN", fj.PatchCNN(1.0, 1.0, 1.0, 0.01, fj.Linear(), patch_size=8), lin_task),
        ("erf PatchCNN", fj.PatchCNN(1.0, 1.0, 1.0, 0.01, fj.Erf(), patch_size=4), erf_task),
    ]
    for name, base, t in cases:
        P = t.X.shape[1] // base.patch_size
        X, Y, X_test, Y_test = t.X, t.Y[:, :1], t.X_test, t.Y_test[:, :1]
        exact = isinstance(base.activation, fj.Linear)
        widths = [C for C in (a.widths if exact else a.sampled) if C > P - 1]
        gp = fj.renormalise(at(base, np.inf), X, Y, X_test, Y_test, method="saddle")
        truth = f"exact (importance sampling, {a.draws} draws)" if exact else "HMC"
        print(
            f"\n# patches: {name}, P = {P}, n = {n}, sigma^2 = 0.01; truth = {truth}; GP: "
            f"test {float(gp.test_error):.4e}, train {float(gp.train_error):.4e}, variance "
            f"{float(jnp.mean(gp.variance)):.4e}"
        )
        print(
            f"{'C':>5} | {'test truth':>20} {'saddle':>10} {'u I':>10} {'EoS':>10} | "
            f"{'train truth':>20} {'saddle':>10} {'u I':>10} {'EoS':>10} | "
            f"{'var truth':>20} {'saddle':>10} {'u I':>10} {'EoS':>10} | "
            f"{'tr U*/P':>7} {'offdiag':>7} {'u':>6} | {'ESS/Rhat':>8} {'sec th':>6} "
            f"{'sec gt':>6}"
        )
        if exact:
            kappa = np.asarray(_patch_pair_kernels(base, jnp.asarray(X), jnp.asarray(X)))
            kappa_s = np.asarray(_patch_pair_kernels(base, jnp.asarray(X_test), jnp.asarray(X)))
            full_s = np.asarray(_patch_pair_kernels(base, jnp.asarray(X_test), jnp.asarray(X_test)))
            kappa_ss = np.einsum("pqxx->pqx", full_s)

            def kernels(Us, kappa=kappa, kappa_s=kappa_s, kappa_ss=kappa_ss):
                return (
                    np.einsum("spq,pqij->sij", Us, kappa),
                    np.einsum("spq,pqxj->sxj", Us, kappa_s),
                    np.einsum("spq,pqx->sx", Us, kappa_ss)[..., None, None],
                )

        for j, C in enumerate(widths):
            net = at(base, C)
            t0 = time.perf_counter()
            r = jax.block_until_ready(fj.renormalise(net, X, Y, X_test, Y_test, method="saddle"))
            sec_th = time.perf_counter() - t0
            U = np.asarray(r.scale_matrix)
            off = float(np.max(np.abs(U - np.diag(np.diag(U)))) / np.mean(np.diag(U)))
            th_eos = eos(net, X, Y, X_test, Y_test)
            iso = scalar_patch_theory(net, X, Y, X_test, Y_test)
            t0 = time.perf_counter()
            if exact:
                ex = exact_mixture(kernels, Y, Y_test, 0.01, C, U, a.draws, a.seed + 1)
                gt = dict(
                    test_error=[ex["test_error"], 0.0],
                    train_error=[ex["train_error"], 0.0],
                    variance=[float(ex["covariance"][0, 0]), 0.0],
                    quality=ex["ess"],
                )
            else:
                smp = sampled(net, X, Y, X_test, Y_test, a, jax.random.key(a.seed + 200 + j))
                gt = dict(smp, quality=smp["max_rhat"])
            sec_gt = time.perf_counter() - t0
            row = dict(
                part="patches",
                network=name,
                width=C,
                truth=gt,
                saddle=dict(
                    test_error=float(r.test_error),
                    train_error=float(r.train_error),
                    variance=float(jnp.mean(r.variance)),
                    U=U.tolist(),
                    converged=bool(r.converged),
                ),
                isotropic=iso,
                eos=th_eos,
                sec_saddle=sec_th,
                sec_truth=sec_gt,
            )
            rows.append(row)
            s = row["saddle"]

            def pm(v):
                return f"{v[0]:10.4e}±{v[1]:8.2e}" if v[1] else f"{v[0]:10.4e}{'':9}"

            print(
                f"{C:5.0f} | {pm(gt['test_error'])} {s['test_error']:10.4e} "
                f"{iso['test_error']:10.4e} {th_eos['test_error']:10.4e} | "
                f"{pm(gt['train_error'])} {s['train_error']:10.4e} {iso['train_error']:10.4e} "
                f"{th_eos['train_error']:10.4e} | {pm(gt['variance'])} {s['variance']:10.4e} "
                f"{iso['variance']:10.4e} {th_eos['variance']:10.4e} | "
                f"{np.trace(U) / P:7.3f} {off:7.3f} {iso['u']:6.3f} | {gt['quality']:8.2f} "
                f"{sec_th:6.2f} {sec_gt:6.1f}" + ("" if s["converged"] else "  NOT CONVERGED"),
                flush=True,
            )


def part_timing(a, rows):
    """The P×P saddle point's cost against the EoS solve as n grows (erf PatchCNN, P = 8)."""
    print(
        "\n# timing: erf PatchCNN (P = 8 patches of 4), C = 64 then 65 (no recompilation), "
        "sigma^2 = 0.01; seconds (first call includes compilation)"
    )
    print(
        f"{'n':>6} | {'saddle 1st':>10} {'saddle':>8} {'conv':>5} | {'EoS 1st':>8} "
        f"{'EoS':>8} {'conv':>5} | {'test saddle':>11} {'test EoS':>10}"
    )
    base = fj.PatchCNN(64.0, 1.0, 1.0, 0.01, fj.Erf(), patch_size=4)
    for n in a.timing:
        t = fj.datasets.linear_patch_teacher(n, 200, patch_size=4, patches=8, seed=1)
        X, Y, X_test, Y_test = t.X, t.Y[:, :1], t.X_test, t.Y_test[:, :1]
        times, outs = {}, {}

        def saddle(net, X=X, Y=Y, X_test=X_test, Y_test=Y_test):
            return fj.renormalise(net, X, Y, X_test, Y_test, method="saddle")

        def eos_solve(net, X=X, Y=Y, X_test=X_test, Y_test=Y_test):
            return fj.predict(fj.solve(net, X, Y), X_test, Y_test)

        for name, run in (("saddle", saddle), ("eos", eos_solve)):
            for label, C in (("first", 64.0), ("again", 65.0)):
                t0 = time.perf_counter()
                out = jax.block_until_ready(run(at(base, C)))
                times[name, label] = time.perf_counter() - t0
            outs[name] = out
        row = dict(
            part="timing",
            n=n,
            seconds={f"{k[0]} {k[1]}": v for k, v in times.items()},
            converged=[bool(outs["saddle"].converged), bool(outs["eos"].converged)],
            test_error=[float(outs["saddle"].test_error), float(outs["eos"].test_error)],
        )
        rows.append(row)
        print(
            f"{n:6d} | {times['saddle', 'first']:10.2f} {times['saddle', 'again']:8.2f} "
            f"{row['converged'][0]!s:>5} | {times['eos', 'first']:8.2f} "
            f"{times['eos', 'again']:8.2f} {row['converged'][1]!s:>5} | "
            f"{row['test_error'][0]:11.4e} {row['test_error'][1]:10.4e}",
            flush=True,
        )


def part_mixture(a, rows):
    """fls_jax's matrix mixture against `exact_mixture` (NumPy), same tasks, same draws."""
    X, Y, X_test, Y_test = outputs_task(a.n, 100, a.d, a.rho, a.target_scale, 0.5, a.seed)
    lin = fj.FCN(1.0, 1.0, 1.0, 0.5, fj.Linear())
    K_all = np.asarray(lin.output_kernel(lin.prior_covariance(a.d), np.vstack([X, X_test])))
    K, Ks, kss = K_all[: a.n, : a.n], K_all[a.n :, : a.n], np.diag(K_all)[a.n :]

    def output_kernels(Us):
        return (
            np.einsum("sab,ij->saibj", Us, K).reshape(len(Us), 2 * a.n, 2 * a.n),
            np.einsum("sab,xj->saxbj", Us, Ks).reshape(len(Us), 2 * len(Ks), 2 * a.n),
            np.einsum("sab,x->sxab", Us, kss),
        )

    t = fj.datasets.linear_patch_teacher(a.n, 100, patch_size=8, patches=4, seed=0)
    cnn = fj.PatchCNN(1.0, 1.0, 1.0, 0.01, fj.Linear(), patch_size=8)
    kappa, kappa_s, full_s = (
        np.asarray(_patch_pair_kernels(cnn, jnp.asarray(A), jnp.asarray(B)))
        for A, B in ((t.X, t.X), (t.X_test, t.X), (t.X_test, t.X_test))
    )
    kappa_ss = np.einsum("pqxx->pqx", full_s)

    def patch_kernels(Us):
        return (
            np.einsum("spq,pqij->sij", Us, kappa),
            np.einsum("spq,pqxj->sxj", Us, kappa_s),
            np.einsum("spq,pqx->sx", Us, kappa_ss)[..., None, None],
        )

    cases = [
        ("two outputs, linear FCN", lin, (X, Y, X_test, Y_test), 0.5, output_kernels),
        (
            "linear PatchCNN, P = 4",
            cnn,
            (t.X, t.Y[:, :1], t.X_test, t.Y_test[:, :1]),
            0.01,
            patch_kernels,
        ),
    ]
    print(f"\n# mixture: fls_jax (JAX) vs exact_mixture (NumPy), {a.draws} draws each, n = {a.n}")
    print(
        f"{'case':>24} {'C':>5} | {'sec fls':>7} {'sec np':>7} | {'test fls':>10} "
        f"{'test np':>10} | {'train fls':>10} {'train np':>10} | {'var fls':>10} "
        f"{'var np':>10} | {'max dU':>7} | {'ESS fls':>7} {'ESS np':>7} | {'dropped':>7}"
    )
    for name, base, (Xa, Ya, Xt, Yt), noise, kernels in cases:
        q = Ya.shape[1] if Ya.shape[1] > 1 else Xa.shape[1] // 8
        for C in [C for C in a.widths if C > q - 1]:
            net = at(base, C)
            t0 = time.perf_counter()
            r = jax.block_until_ready(
                fj.renormalise(net, Xa, Ya, Xt, Yt, method="mixture", draws=a.draws)
            )
            sec_fls = time.perf_counter() - t0
            saddle = fj.renormalise(net, Xa, Ya, Xt, Yt, method="saddle")
            t0 = time.perf_counter()
            ex = exact_mixture(
                kernels,
                np.asarray(Ya),
                np.asarray(Yt),
                noise,
                C,
                np.asarray(saddle.scale_matrix),
                a.draws,
                a.seed + 1,
            )
            sec_np = time.perf_counter() - t0
            row = dict(
                part="mixture",
                case=name,
                width=C,
                seconds=[sec_fls, sec_np],
                test_error=[float(r.test_error), ex["test_error"]],
                train_error=[float(r.train_error), ex["train_error"]],
                variance=[
                    float(jnp.mean(r.variance)),
                    float(np.trace(ex["covariance"])) / q
                    if Ya.shape[1] > 1
                    else float(ex["covariance"][0, 0]),
                ],
                max_dU=float(np.max(np.abs(np.asarray(r.scale_matrix) - ex["U"]))),
                ess=[float(r.effective_draws), ex["ess"]],
                dropped=int(r.dropped_draws),
                converged=bool(r.converged),
            )
            rows.append(row)
            print(
                f"{name:>24} {C:5.0f} | {sec_fls:7.2f} {sec_np:7.2f} | "
                f"{row['test_error'][0]:10.4e} {row['test_error'][1]:10.4e} | "
                f"{row['train_error'][0]:10.4e} {row['train_error'][1]:10.4e} | "
                f"{row['variance'][0]:10.4e} {row['variance'][1]:10.4e} | "
                f"{row['max_dU']:7.4f} | {row['ess'][0]:7.0f} {row['ess'][1]:7.0f} | "
                f"{row['dropped']:7d}",
                flush=True,
            )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--part", choices=["outputs", "deep", "patches", "timing", "mixture", "all"], default="all"
    )
    p.add_argument("--timing", type=int, nargs="*", default=[128, 256, 512, 1024], help="n")
    p.add_argument("--widths", type=float, nargs="+", default=[2, 4, 8, 16, 64, 256])
    p.add_argument("--sampled", type=float, nargs="*", default=[4, 16, 64])
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--d", type=int, default=32, help="input dimension of the outputs task")
    p.add_argument("--rho", type=float, default=0.8, help="correlation of the two teachers")
    p.add_argument("--target-scale", type=float, default=2.0)
    p.add_argument("--draws", type=int, default=20_000, help="importance-sampling draws")
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--burn-in", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="matrix_renormalisation.json")
    a = p.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}, float64"
    )
    rows = []
    if a.part in ("outputs", "all"):
        part_outputs(a, rows)
    if a.part in ("deep", "all"):
        part_deep(a, rows)
    if a.part in ("patches", "all"):
        part_patches(a, rows)
    if a.part in ("timing", "all"):
        part_timing(a, rows)
    if a.part in ("mixture", "all"):
        part_mixture(a, rows)
    with open(a.out, "w") as fh:
        json.dump(dict(args=vars(a), rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
