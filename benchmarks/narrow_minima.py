"""Which solution of the EoS describes the narrow network: saddles and minima against HMC.

    python benchmarks/narrow_minima.py [--cases all] [--chains 16] [--samples 400]
        [--burn-in 1000]

The three saddles of F that `fj.solve` returned in `benchmarks/lanczos_index.py --part agree`
(depth-3 erf FCN, σ_w² = 2, σ_a² = 0.25, on `deep_narrow_scan.inputs()`: n = 20, d = 5,
y = sin(2 w·x)): seed 11 at C = 2 and C = 1 with σ² = 10⁻³, seed 2 at C = 1 with σ² = 10⁻².
For each, the solutions of the EoS that the package reaches:

- `default`: `fj.solve` (the continuation in 1/C from the GP limit), a saddle;
- `past_folds`: `fj.solve(past_folds=True, max_stages=16)`, a minimum;
- `descent ±`: from the saddle, a step of 10⁻⁴ ‖y‖ along ± the Hessian's eigenvector of
  its negative eigenvalue (F falls both ways), then `optx.BFGS` on F/C and the default
  deep root finders from its end (`solve(precision0=..., solver=(BFGS, Anderson,
  Newton))`);
- `GP`: the infinite-width limit, for reference.

Each is compared with the posterior of the finite network itself (`fls_jax.sampling`,
HMC with the readout integrated out, `--chains` chains from the prior): the relative
Frobenius distances of Σ, K^(2), K^(3) to the sampled means, and the train and test errors of
the mean predictor (30 test inputs of `deep_erf_teacher`). F is the free energy (SPEC §3)
and `index` `fj.hessian_index`.
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx


jax.config.update("jax_enable_x64", True)

import deep_narrow_scan as scan  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._solve import (  # noqa: E402
    _anderson_newton,
    _from_state,
    _state_free_energy,
    _state_scale,
    _to_state,
)


CASES = {"11-2": (11, 2.0, 1e-3), "11-1": (11, 1.0, 1e-3), "2-1": (2, 1.0, 1e-2)}


def descents(sol, X, Y) -> list:
    """Solutions reached from the saddle `sol` by BFGS on F/C along ± its most negative
    curvature direction (dense Hessian: 435 unknowns), then the root finders."""
    net = sol.network
    S, scale = net.state_size(X.shape[1]), _state_scale(net, X)
    y, unravel = jax.flatten_util.ravel_pytree(_to_state(sol.precision, sol.kernel_shifts, scale))
    args = (net, jnp.asarray(X), jnp.asarray(Y))
    H = jax.hessian(lambda w: _state_free_energy(unravel(w), args))(y)
    v = np.linalg.eigh(np.asarray(H))[1][:, 0]
    chain = (optx.BFGS(rtol=1e-8, atol=1e-8), *_anderson_newton(jnp.float64, net.depth))
    out = []
    for sign in (1, -1):
        lam, shifts = _from_state(unravel(y + sign * 1e-4 * jnp.linalg.norm(y) * v), S, scale)
        start = (lam, *shifts)
        out.append(fj.solve(net, X, Y, precision0=start, solver=chain, max_steps=(5000, 600, 12)))
    return out


def distance(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=(*CASES, "all"), default=["all"])
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--burn-in", type=int, default=1000)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, {fj.__file__}")
    task = fj.datasets.deep_erf_teacher(n=20, n_test=30, d=5, depth=2, seed=3)
    X, X_test = np.asarray(task.X), np.asarray(task.X_test)
    for name in CASES if "all" in args.cases else args.cases:
        seed, C, noise = CASES[name]
        Y, Y_test = scan.targets(X, seed), scan.targets(X_test, seed)
        net = fj.FCN(width=C, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=noise)
        gp = fj.FCN(width=np.inf, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=noise)
        t0 = time.perf_counter()
        default = fj.solve(net, X, Y)
        sols = {
            "default": default,
            "past_folds": fj.solve(net, X, Y, past_folds=True, max_stages=16),
            **dict(zip(("descent +", "descent −"), descents(default, X, Y), strict=True)),
            "GP": fj.solve(gp, X, Y),
        }
        t1 = time.perf_counter() - t0
        samples = fj.sampling.sample(
            net,
            X,
            Y,
            X_test,
            key=jax.random.key(seed),
            num_chains=args.chains,
            num_samples=args.samples,
            burn_in=args.burn_in,
            readout="marginal",
        )
        est = fj.sampling.estimates(samples, Y, Y_test)
        t2 = time.perf_counter() - t0 - t1
        print(
            f"\nseed {seed}, C = {C:g}, σ² = {noise:g}: solves {t1:.1f} s, sampling {t2:.1f} s "
            f"({args.chains} chains × {args.samples} draws, burn-in {args.burn_in}; max R̂ "
            f"{float(samples.max_rhat):.3f})"
        )
        print(
            "| solution | converged | F | index | ‖ΔΣ‖/‖Σ̂‖ | ‖ΔK²‖/‖K̂²‖ | ‖ΔK³‖/‖K̂³‖ "
            "| train error | test error |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for label, sol in sols.items():
            pred = fj.predict(sol, X_test, Y_test)
            ok = bool(sol.converged)
            index = int(fj.hessian_index(sol)) if ok else ""
            d = [distance(sol.sigma, est.sigma.value)]
            d += [distance(k, e.value) for k, e in zip(sol.kernels, est.kernels, strict=True)]
            print(
                f"| {label} | {ok} | {float(sol.free_energy):.8g} | {index} | "
                + " | ".join(f"{x:.3g}" for x in d)
                + f" | {float(pred.train_error):.3g} | {float(pred.test_error):.3g} |",
                flush=True,
            )
        print(
            f"| HMC | | | | ± {est.sigma.stderr.max() / np.linalg.norm(est.sigma.value):.2g} "
            + "".join(f"| ± {e.stderr.max() / np.linalg.norm(e.value):.2g} " for e in est.kernels)
            + f"| {est.train_error.value:.3g} ± {est.train_error.stderr:.2g} "
            f"| {est.test_error.value:.3g} ± {est.test_error.stderr:.2g} |"
        )


if __name__ == "__main__":
    main()
