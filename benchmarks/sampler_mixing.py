"""Do the samplers' chains mix at the default lengths, and are `estimates`' error bars right?

    python benchmarks/sampler_mixing.py [--seeds 1000]

Part 1 (mixing): `fls_jax.sampling.sample` with its default chain lengths (8 chains, 500
burn-in steps, 200 kept draws) and each of ``method="mala"`` and ``"hmc"``, on three FCNs:
a linear one with n = 12, C = 4 (targets from a teacher of norm 3, far from the prior), and
erf ones with n = 64 at C = 16, σ² = 10⁻² and C = 64, σ² = 10⁻³. Printed: max split R̂
over three keys, the smallest effective sample size of the test predictions, and the wall
time of a call after the first (compiling) one.

Part 2 (calibration): the linear FCN above, whose exact posterior is a one-dimensional scale
mixture of its GP (`fls_jax/_renorm.py`'s module docstring) computed here by quadrature in
NumPy. For `--seeds` keys, z = (exact − estimate)/stderr of the mean predictor and the
ensemble variance at 4 test points and of the train and test errors; with 8 chains z should
follow Student's t with 7 degrees of freedom: std 1.18, P(|z| > 3) = 2.0 % (the ± on the
std is a bootstrap over seeds). The variance is shown both as `estimates` gives it
(jackknife bias-corrected) and as the plug-in E[f²] − f̄² (the value before stop 44). Also:
how many calls warned that the chains had not mixed.

About 4 minutes on 2 cores with 1000 seeds.
"""

import argparse
import platform
import time
import warnings

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax import sampling as fs  # noqa: E402


C, NOISE = 4, 0.1


def linear_task():
    rng = np.random.default_rng(0)
    X, X_test = rng.standard_normal((12, 6)), rng.standard_normal((4, 6))
    beta = rng.standard_normal(6)
    beta *= 3.0 / np.linalg.norm(beta)
    Y = X @ beta + np.sqrt(NOISE) * rng.standard_normal(12)
    Y_test = X_test @ beta + np.sqrt(NOISE) * rng.standard_normal(4)
    return X, Y, X_test, Y_test


def exact_posterior(X, Y, X_test, Y_test):
    """f | u ~ N(0, u K) with K = X Xᵀ/d and u ~ Gamma(C/2, rate C/2), for a linear FCN with
    σ_w² = σ_a² = 1: p(u | Y) on a log grid, then the GP's moments averaged over it."""
    d = X.shape[1]
    K, K_cross, k_test = X @ X.T / d, X_test @ X.T / d, np.sum(X_test**2, axis=1) / d
    lam, V = np.linalg.eigh(K)
    y, cross = V.T @ Y, K_cross @ V
    log_u = np.linspace(np.log(1e-4), np.log(1e4), 40001)
    u = np.exp(log_u)[:, None]
    denominators = u * lam + NOISE
    log_p = stats.gamma.logpdf(u[:, 0], C / 2, scale=2 / C) + log_u
    log_p += -0.5 * np.sum(y**2 / denominators + np.log(denominators), axis=1)
    w = np.exp(log_p - log_p.max())
    w /= w.sum()
    mean_u = u * ((y / denominators) @ cross.T)  # (grid, n*)
    train_u = (u * lam * y / denominators) @ V.T  # (grid, n): f̄ on the training inputs
    var_u = u * k_test - u**2 * ((1 / denominators) @ (cross**2).T)
    mean = w @ mean_u
    variance = w @ (var_u + mean_u**2) - mean**2
    train_mean = w @ train_u
    return dict(
        mean=mean,
        variance=variance,
        train_error=np.mean((train_mean - Y) ** 2),
        test_error=np.mean((mean - Y_test) ** 2),
    )


def mixing():
    X, Y, X_test, _ = linear_task()
    rng = np.random.default_rng(0)
    X2, X2_test = rng.standard_normal((64, 16)), rng.standard_normal((8, 16))
    Y2 = np.tanh(2 * X2 @ rng.standard_normal(16) / 4)
    cases = [
        ("linear, n = 12, C = 4, σ² = 0.1", fj.FCN(C, 1.0, 1.0, NOISE, fj.Linear()), X, Y, X_test),
        ("erf, n = 64, C = 16, σ² = 1e-2", fj.FCN(16, 1.0, 1.0, 1e-2, fj.Erf()), X2, Y2, X2_test),
        ("erf, n = 64, C = 64, σ² = 1e-3", fj.FCN(64, 1.0, 1.0, 1e-3, fj.Erf()), X2, Y2, X2_test),
    ]
    print("part 1: default chain lengths (8 chains, 500 burn-in, 200 kept)")
    for name, net, X, Y, X_test in cases:
        for method in ("mala", "hmc"):
            rhat, seconds = [], []
            for seed in range(3):
                t = time.perf_counter()
                smp = fs.sample(net, X, Y, X_test, key=jax.random.key(seed), method=method)
                seconds.append(time.perf_counter() - t)
                rhat.append(smp.max_rhat)
            print(
                f"  {name:32s} {method:4s}  max R̂ {', '.join(f'{r:5.2f}' for r in rhat)}  "
                f"min ESS(f*) {float(np.min(smp.ess_f_test)):5.0f}  "
                f"{min(seconds[1:]):6.2f} s"
            )


def calibration(seeds: int):
    X, Y, X_test, Y_test = linear_task()
    exact = exact_posterior(X, Y, X_test, Y_test)
    net = fj.FCN(C, 1.0, 1.0, NOISE, fj.Linear())
    check = fj.renormalise(net, X, Y, X_test, Y_test)  # the package's mixture, for reference
    print(
        f"part 2: {seeds} seeds, exact posterior by quadrature (fj.renormalise's mixture: mean "
        f"{np.max(np.abs(np.asarray(check.mean[:, 0]) - exact['mean'])):.0e} from it)"
    )
    t7 = stats.t(7)
    print(f"  expected with 8 chains (t₇): std(z) {t7.std():.2f}, P(|z| > 3) {2 * t7.sf(3):.3f}")
    for method in ("mala", "hmc"):
        z = {k: [] for k in ("mean", "variance", "plug-in variance", "train_error", "test_error")}
        warned, rhat = 0, []
        t = time.perf_counter()
        for seed in range(seeds):
            smp = fs.sample(net, X, Y, X_test, key=jax.random.key(1000 + seed), method=method)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                est = fs.estimates(smp, Y, Y_test)
            warned += any(issubclass(w.category, RuntimeWarning) for w in caught)
            rhat.append(smp.max_rhat)
            z["mean"].append(est.mean.z(exact["mean"][:, None]).ravel())
            z["variance"].append(est.variance.z(exact["variance"]))
            plug_in = est.variance.value - est.mean.stderr[:, 0] ** 2
            z["plug-in variance"].append((exact["variance"] - plug_in) / est.variance.stderr)
            z["train_error"].append(np.atleast_1d(est.train_error.z(exact["train_error"])))
            z["test_error"].append(np.atleast_1d(est.test_error.z(exact["test_error"])))
        print(
            f"  {method}: median max R̂ {np.median(rhat):.2f}, warned {warned}/{seeds}, "
            f"{time.perf_counter() - t:.0f} s"
        )
        resample = np.random.default_rng(0).integers(0, seeds, (200, seeds))
        for name, values in z.items():
            v = np.stack(values)  # (seeds, points): the points of one seed are correlated
            spread = np.std([v[r].std() for r in resample])  # bootstrap over seeds
            print(
                f"    {name:17s} z: mean {v.mean():+.2f}, std {v.std():.2f} ± {spread:.2f}, "
                f"P(|z| > 3) {np.mean(np.abs(v) > 3):.3f}  ({v.size} values)"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=1000)
    args = parser.parse_args()
    print(f"# {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')} {fj.__file__}")
    mixing()
    calibration(args.seeds)


if __name__ == "__main__":
    main()
