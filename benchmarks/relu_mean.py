"""How large is the mean a ReLU network's first-layer filters have under the posterior, and
how well does the EoS' mean slow variable (`weight_mean=True`) predict it?

SPEC §3 ("Non-odd activations"): for a non-odd φ the per-filter posterior is not symmetric
under w → −w, so the Gaussian variational family needs a mean μ as well as Σ; the package's
EoS set μ = 0. This probe measures what that leaves out, at first order in 1/C, for a
two-layer ReLU FCN (n = 48, d = 16, σ_w² = σ_a² = 1, σ² = 0.01: the ReLU row of
`theory_vs_sampling.py`):

- **Theory, first order.** With F(Σ, μ) = D(Q_f) + C·KL(N(μ, Σ) ‖ N(0, Σ₀)), ∂F/∂μ = 0 gives
  μ = −(1/C) Σ₀ ∂D/∂μ. At μ = 0, with h ~ N(0, K) and ∂E[φ(h)φ(h')]/∂m = E[θ(h) h'⁺] =
  √K' (1 + ρ) / (2√(2π)) for ReLU (Price/Stein; a closed form, checked below by quadrature),
  ∂D/∂μ = −(s_a / (2√(2π))) Xᵀ[(A ∘ M) 1], M_αβ = √K_ββ (1 + ρ_αβ), A = TTᵀ − K_f⁻¹. So
  μ₁ = (s_a / (2C√(2π))) Σ₀ Xᵀ[(A ∘ M) 1], evaluated at the zero-mean solution (`fj.solve`).
  Its effect on the readout kernel is linear in μ₁: δQ_αβ = (s_a/(2√(2π)))(1 + ρ_αβ)
  (√K_ββ m_α + √K_αα m_β), m = Xμ₁ (test points the same way), which is O(1/C) like the
  EoS' own change of Q_f; the script reports both, and the predictions with Q_f + δQ.
- **Theory, self-consistent.** `fj.FCN(..., weight_mean=True)`: μ and Σ solved together
  (`fj.solve`), and `fj.predict`.
- **Sampled networks.** HMC (readout integrated out) gives the posterior mean of
  μ̂ = (1/C) Σ_c w_c (`fls_jax.sampling.estimates(...).weight_mean`) with its standard error.

Two targets on the same inputs: the single-index erf teacher (odd in x) and a ReLU teacher
y = max(0, 2 w*·x) (with an even part and a mean).

    python benchmarks/relu_mean.py --widths 16 64 256 1024 --chains 8 --samples 200 --burn-in 300

Columns: ‖μ₁‖ (first order), ‖μ‖ (self-consistent), ‖μ̂‖ sampled with its standard error,
the cosines of μ₁ and μ with μ̂, the largest |μ − μ̂|/stderr over components, the kernel
changes relative to Q_f(Σ₀), the test errors (zero-mean EoS, + μ₁, self-consistent, sampled)
and the ensemble variances (zero-mean, self-consistent, sampled).
"""

import argparse
import math
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax import sampling as fs  # noqa: E402


def check_mean_derivative() -> float:
    """∂/∂m₁ E[φ(h)φ(h')] at zero mean (ReLU), the closed form against a central difference
    of E computed by adaptive quadrature of E[h'⁺ E[(m₁ + h)⁺ | h']] over h' (a smooth 1-d
    integrand: h | h' is Gaussian and E[X⁺] = μΦ(μ/s) + sφ(μ/s))."""
    from scipy import integrate, stats

    worst = 0.0
    for a, b, c in ((1.0, 1.0, 0.3), (0.5, 2.0, -0.6), (1.3, 0.7, 0.8)):
        s_cond = math.sqrt(a - c * c / b)

        def E(m1, a=a, b=b, c=c, s_cond=s_cond):
            def integrand(h2):
                mu = m1 + c / b * h2
                plus = mu * stats.norm.cdf(mu / s_cond) + s_cond * stats.norm.pdf(mu / s_cond)
                return h2 * stats.norm.pdf(h2, scale=math.sqrt(b)) * plus

            return integrate.quad(integrand, 0, np.inf, epsabs=1e-14, epsrel=1e-13)[0]

        eps = 1e-4
        fd = (E(eps) - E(-eps)) / (2 * eps)
        closed = math.sqrt(b) * (1 + c / math.sqrt(a * b)) / (2 * math.sqrt(2 * math.pi))
        worst = max(worst, abs(fd - closed) / closed)
    return worst


def mean_kernel_shift(sigma, X1, X2, m1, m2, s_a):
    """δQ(X1, X2) = (s_a/(2√(2π))) (1 + ρ) (√K₂₂ m₁ + √K₁₁ m₂), first order in the mean."""
    s1 = jnp.sqrt(jnp.einsum("ns,st,nt->n", X1, sigma, X1))
    s2 = jnp.sqrt(jnp.einsum("ns,st,nt->n", X2, sigma, X2))
    rho = (X1 @ sigma @ X2.T) / (s1[:, None] * s2[None, :])
    return (
        s_a
        / (2 * math.sqrt(2 * math.pi))
        * (1 + rho)
        * (s2[None, :] * m1[:, None] + s1[:, None] * m2[None, :])
    )


def first_order(sol, X, Y, X_test, Y_test):
    """μ₁ and the predictions with Q_f + δQ(μ₁) (module docstring)."""
    net = sol.network
    C = float(net.width)
    s_a = float(net.readout_scale())
    sigma = sol.sigma
    sigma0 = net.prior_covariance(X.shape[1])
    Q = net.output_kernel(sigma, X)
    n = X.shape[0]
    Kf = Q + net.noise * jnp.eye(n)
    Kinv = jnp.linalg.inv(Kf)
    T = Kinv @ Y
    A = T @ T.T - Y.shape[1] * Kinv
    s = jnp.sqrt(jnp.einsum("ns,st,nt->n", X, sigma, X))
    rho = (X @ sigma @ X.T) / (s[:, None] * s[None, :])
    M = s[None, :] * (1 + rho)
    mu = s_a / (2 * C * math.sqrt(2 * math.pi)) * sigma0 @ X.T @ jnp.sum(A * M, axis=1)

    m, mt = X @ mu, X_test @ mu
    dQ = mean_kernel_shift(sigma, X, X, m, m, s_a)
    dQx = mean_kernel_shift(sigma, X_test, X, mt, m, s_a)
    st = jnp.sqrt(jnp.einsum("ns,st,nt->n", X_test, sigma, X_test))
    dQss = 2 * s_a * st * mt / math.sqrt(2 * math.pi)

    def gp(Qtr, Qx, qss):
        K = Qtr + net.noise * jnp.eye(n)
        alpha = jnp.linalg.solve(K, Y)
        mean = Qx @ alpha
        var = qss - jnp.sum(Qx * jnp.linalg.solve(K, Qx.T).T, axis=1)
        return float(jnp.mean((mean - Y_test) ** 2)), float(jnp.mean(var))

    Qx = net.output_kernel(sigma, X_test, X)
    qss = net.output_kernel_diag(sigma, X_test)
    Q0 = net.output_kernel(sigma0, X)
    zero = gp(Q, Qx, qss)
    corrected = gp(Q + dQ, Qx + dQx, qss + dQss)
    size = dict(
        eos=float(jnp.linalg.norm(Q - Q0) / jnp.linalg.norm(Q0)),
        mean=float(jnp.linalg.norm(dQ) / jnp.linalg.norm(Q0)),
    )
    return np.asarray(mu), zero, corrected, size


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=float, nargs="+", default=[16, 64, 256])
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--burn-in", type=int, default=300)
    p.add_argument("--no-sampling", action="store_true")
    a = p.parse_args()
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, jax {jax.__version__}"
    )
    print(f"# ∂E/∂m closed form vs quadrature: max relative gap {check_mean_derivative():.1e}")

    task = fj.datasets.single_index_teacher(a.n, a.n_test, d=16, scale=2.0, seed=0)
    w_star = task.teacher
    relu_y = np.maximum(0.0, 2 * np.asarray(task.X) @ w_star)[:, None]
    relu_yt = np.maximum(0.0, 2 * np.asarray(task.X_test) @ w_star)[:, None]
    tasks = [
        ("erf teacher (odd)", task.X, task.Y, task.X_test, task.Y_test),
        ("ReLU teacher", task.X, relu_y, task.X_test, relu_yt),
    ]
    head = (
        f"{'task':18} {'C':>5} | {'|mu1|':>8} {'|mu|':>8} {'|mu smp|':>17} {'cos1':>5} "
        f"{'cos':>5} {'max|z|':>6} | {'dQ_eos':>7} {'dQ_mean':>7} | {'test 0':>7} "
        f"{'test 1':>7} {'test':>7} {'test smp':>17} | {'var 0':>7} {'var':>7} "
        f"{'var smp':>16} | {'Rhat':>5} {'sec':>4}"
    )
    print(head)
    for name, X, Y, Xt, Yt in tasks:
        X, Y, Xt, Yt = (jnp.asarray(v, float) for v in (X, Y, Xt, Yt))
        for C in a.widths:
            net = fj.FCN(C, 1.0, 1.0, 0.01, fj.ReLU())
            sol = fj.solve(net, X, Y)
            assert bool(sol.converged), (name, C)
            mu, zero, corr, size = first_order(sol, X, Y, Xt, Yt)
            sc = fj.solve(fj.FCN(C, 1.0, 1.0, 0.01, fj.ReLU(), weight_mean=True), X, Y)
            assert bool(sc.converged), (name, C)
            sc_pred = fj.predict(sc, Xt, Yt)
            mu_sc = np.asarray(sc.weight_mean)
            row = f"{name:18} {C:5.0f} | {np.linalg.norm(mu):8.2e} {np.linalg.norm(mu_sc):8.2e} "
            if a.no_sampling:
                smp_mu = smp_test = smp_var = "-"
                cos1 = cos = zmax = rhat = sec = float("nan")
            else:
                t0 = time.perf_counter()
                smp = fs.sample(
                    fj.FCN(int(C), 1.0, 1.0, 0.01, fj.ReLU()),
                    X,
                    Y,
                    Xt,
                    key=jax.random.key(0),
                    method="hmc",
                    num_chains=a.chains,
                    num_samples=a.samples,
                    burn_in=a.burn_in,
                )
                est = fs.estimates(smp, Y, Yt)
                sec = time.perf_counter() - t0
                wm = est.weight_mean
                norm = np.linalg.norm(wm.value)
                cos1 = float(mu @ wm.value / (np.linalg.norm(mu) * norm))
                cos = float(mu_sc @ wm.value / (np.linalg.norm(mu_sc) * norm))
                zmax = float(np.max(np.abs(wm.z(mu_sc))))
                se = float(np.sqrt(np.sum(wm.stderr**2)))
                smp_mu = f"{np.linalg.norm(wm.value):.2e}±{se:.1e}"
                te = est.test_error
                smp_test = f"{float(te.value):.4f}±{float(te.stderr):.1e}"
                va = est.variance
                v, vse = float(np.mean(va.value)), float(np.sqrt(np.mean(va.stderr**2)))
                smp_var = f"{v:.4f}±{vse:.1e}"
                rhat = smp.max_rhat
            test_sc, var_sc = float(sc_pred.test_error), float(jnp.mean(sc_pred.variance))
            row += (
                f"{smp_mu:>17} {cos1:5.2f} {cos:5.2f} {zmax:6.1f} | {size['eos']:7.4f} "
                f"{size['mean']:7.4f} | {zero[0]:7.4f} {corr[0]:7.4f} {test_sc:7.4f} "
                f"{smp_test:>17} | {zero[1]:7.4f} {var_sc:7.4f} {smp_var:>16} | {rhat:5.2f} "
                f"{sec:4.0f}"
            )
            print(row, flush=True)


if __name__ == "__main__":
    main()
