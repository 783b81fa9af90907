"""The finite-width learning curve of a non-linear network against sampled networks (SPEC §5, §6).

    python benchmarks/learning_curve_nonlinear.py --draws 6 --chains 8 --samples 100

`fj.learning_curve` at finite width treats one hidden layer of any activation in the
proportional-limit approximation: the NNGP kernel's scale u(n) renormalises the noise. Here
that prediction is held, for an erf FCN, against what it predicts: the test error of the
trained finite network's posterior mean, averaged over training sets. Per (C, n), on the same
`--draws` training sets drawn from the pool:

- `sampled`: the posterior of the finite network itself (HMC with the readout integrated
  out, `fj.sampling`), its mean predictor's test error (Monte-Carlo corrected), averaged
  over the training sets, ± the standard error over them;
- `EoS`: `fj.solve` + `fj.predict` (the adaptive-kernel theory, SPEC §3) on the same sets;
- `curve`: `fj.learning_curve` at width C (no training set at all), and its u(n);
- `GP`: the curve at C = ∞, for how much width matters here;
- `χ curve`: the curve's `chi_proxy`, the predicted average of tᵀQ_f t/C (SPEC §4) under
  the scalar renormalisation, and `χ direct`: that quadratic form computed on the drawn
  sets at the curve's u (a check of its training-set average); `χ EoS`: the EoS
  predictions' `chi_proxy`, averaged over the sets.

`--no-sample` skips the sampled networks (and the columns that need them).

Task: a single-index erf teacher (d = `--d`, default 8; scale 1.5), noiseless targets; erf FCN with
σ_w² = 2, σ_a² = 1, σ² = 0.02; pool of `--pool` inputs for the curve, test set of 500.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax import sampling  # noqa: E402
from fls_jax._free_energy import _gp_post_kernels  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[4.0, 16.0])
    parser.add_argument("--n", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--draws", type=int, default=6)
    parser.add_argument("--pool", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--burn-in", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--d", type=int, default=8, help="input dimension")
    parser.add_argument("--no-sample", action="store_true", help="theory columns only")
    args = parser.parse_args()

    task = fj.datasets.single_index_teacher(
        n=args.pool, n_test=500, d=args.d, scale=1.5, seed=args.seed
    )
    X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
    Xt, Yt = jnp.asarray(task.X_test), jnp.asarray(task.Y_test)
    ns = jnp.asarray(args.n, X.dtype)
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}; d = {args.d}")
    print(f"pool {args.pool}, widths {args.widths}, n {args.n}")
    print(f"draws {args.draws}, HMC {args.chains} chains × {args.samples} (burn-in {args.burn_in})")

    def net(width):
        return fj.FCN(width=width, sigma_w2=2.0, sigma_a2=1.0, noise=0.02, activation=fj.Erf())

    gp = fj.learning_curve(net(jnp.inf), X, Y, ns).test_error
    K = _gp_post_kernels(net(jnp.inf), X)[-1]  # the NNGP kernel on the pool, for `χ direct`
    keys = jax.random.split(jax.random.key(args.seed + 1), len(args.n))
    sets = {
        n: jnp.stack(
            [jax.random.permutation(k, args.pool)[:n] for k in jax.random.split(key, args.draws)]
        )
        for n, key in zip(args.n, keys, strict=True)
    }

    @jax.jit
    def eos(network, idx):
        def one(i):
            sol = fj.solve(network, X[i], Y[i])
            p = fj.predict(sol, Xt, Yt)
            return p.test_error, p.chi_proxy, sol.converged

        return jax.vmap(one)(idx)

    @jax.jit
    def direct(idx, u):
        def one(i):
            Q = u * K[i][:, i]
            t = jnp.linalg.solve(Q + 0.02 * jnp.eye(len(i)), Y[i])
            return jnp.sum(t * (Q @ t))

        return jax.vmap(one)(idx)

    print(
        f"{'C':>5s} {'n':>4s} {'sampled':>20s} {'EoS':>20s} {'curve':>9s} {'u(n)':>6s} "
        f"{'GP':>9s} {'curve/sampled':>13s} {'EoS/sampled':>11s} {'max R̂':>6s} "
        f"{'χ curve':>7s} {'χ direct':>8s} {'χ EoS':>6s} {'s':>5s}"
    )
    for width in args.widths:
        network = net(width)
        curve = fj.learning_curve(network, X, Y, ns)
        for j, n in enumerate(args.n):
            t0 = time.perf_counter()
            idx = sets[n]
            theory, chi_eos, ok = eos(network, idx)
            chi_direct = float(jnp.mean(direct(idx, curve.scale[j]))) / width
            sampled, rhat = [], []
            for k, i in enumerate([] if args.no_sample else idx):
                s = sampling.sample(
                    network,
                    X[i],
                    Y[i],
                    Xt,
                    key=jax.random.key(1000 * j + k),
                    num_chains=args.chains,
                    num_samples=args.samples,
                    burn_in=args.burn_in,
                    method="hmc",
                    readout="marginal",
                )
                sampled.append(float(sampling.estimates(s, Y[i], Yt).test_error.value))
                rhat.append(float(s.max_rhat))
            theory = np.asarray(theory)
            se = lambda v: v.std(ddof=1) / np.sqrt(len(v))  # noqa: E731
            c = float(curve.test_error[j])
            if sampled:
                sampled = np.asarray(sampled)
                mc = f"{sampled.mean():9.4g} ± {se(sampled):8.2g}"
                ratios = f"{c / sampled.mean():13.3f} {theory.mean() / sampled.mean():11.3f}"
                ratios += f" {max(rhat):6.3f}"
            else:
                mc, ratios = f"{'-':>20s}", f"{'-':>13s} {'-':>11s} {'-':>6s}"
            print(
                f"{width:5g} {n:4d} {mc} "
                f"{theory.mean():9.4g} ± {se(theory):8.2g} {c:9.4g} {float(curve.scale[j]):6.3f} "
                f"{float(gp[j]):9.4g} {ratios} {float(curve.chi_proxy[j]):7.3g} "
                f"{chi_direct:8.3g} {float(np.mean(chi_eos)):6.3g} "
                f"{time.perf_counter() - t0:5.0f}"
                + ("" if bool(np.all(ok)) else "  (an EoS solve did not converge)"),
                flush=True,
            )


if __name__ == "__main__":
    main()
