"""Learning curves of the GP limit (SPEC §5) against GP regression on drawn training sets.

    python benchmarks/learning_curve.py --pool 2000 --draws 100

What a user would otherwise do to know the test error at n training points without the
theory: draw training sets of size n, run GP regression (the network at C = ∞) on each, and
average the test error. This script does both on the same pool, in one run, and prints per n
the Monte-Carlo average (± its standard error), `fj.learning_curve`'s self-consistent and
equivalent-kernel predictions as ratios to it, and the seconds each took (compiled; the
Monte Carlo is a jitted, vmapped Cholesky solve per n).

A second table scans σ_w² at fixed n, as in hyper-parameter selection: the predicted and the
Monte-Carlo test error per σ_w², their argmins, and `jax.grad` of the prediction.

Task: a single-index erf teacher (d = 16, scale 1.5) with an erf FCN's NNGP kernel, σ² = 0.01;
the pool (the data measure) is M inputs of the task. With `--task digits` the pool is instead
all 1797 of scikit-learn's handwritten digits (`fj.datasets.digits`, even against odd, ±1),
real data whose kernel spectrum no Gaussian model chose; the third table is then skipped.

A third table (finite width): a linear FCN (d = 32, targets of a linear teacher ×3, σ² = 0.01,
pool of 1000) at C = 4, 16 and ∞. `fj.learning_curve` at finite width (the kernel scale u(n)
at the saddle point, the ridge σ²/u) against the exact posterior, `fj.renormalise`, averaged
over `--finite-draws` training sets per n: test error and u, both ways.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


def first_and_best(fn, *args, repeat: int = 3):
    """fn(*args)'s result, the seconds of its first call (compilation included) and the best
    of `repeat` calls after it."""
    out, first = _timed(lambda: fn(*args))
    return out, first, min(_timed(lambda: fn(*args))[1] for _ in range(repeat))


def monte_carlo(net, X, Y, n: int, draws: int, key):
    """GP regression on `draws` training sets of n points drawn with replacement from the
    pool; the mean predictor's error on the whole pool. Mean and standard error over draws."""
    K = net.output_kernel(net.prior_covariance(X.shape[1]), X)

    def one(k):
        idx = jax.random.randint(k, (n,), 0, X.shape[0])
        Knn = K[idx][:, idx] + net.noise * jnp.eye(n)
        f = K[:, idx] @ jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(Knn), True), Y[idx])
        return jnp.mean((f - Y) ** 2)

    errs = jax.lax.map(one, jax.random.split(key, draws), batch_size=10)
    return jnp.mean(errs), jnp.std(errs) / np.sqrt(draws)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pool", type=int, default=2000, help="M, the pool's size")
    p.add_argument("--draws", type=int, default=100, help="training sets per n (Monte Carlo)")
    p.add_argument("--ns", type=int, nargs="+", default=[4, 16, 64, 128, 256, 512])
    p.add_argument("--scan-n", type=int, default=64)
    p.add_argument("--finite-draws", type=int, default=40, help="training sets per n, finite C")
    p.add_argument("--task", choices=["teacher", "digits"], default="teacher")
    a = p.parse_args()
    if a.task == "digits":  # every image in the pool
        t = fj.datasets.digits(n=1797, n_test=0, labels="parity")
        a.pool = len(t.X)
    else:
        t = fj.datasets.single_index_teacher(n=a.pool, n_test=1, d=16, scale=1.5, seed=7)
    X, Y = jnp.asarray(t.X), jnp.asarray(t.Y)
    ns = np.asarray(a.ns, float)

    def net(sw2=1.0):
        return fj.FCN(np.inf, sw2, 1.0, 0.01, fj.Erf())

    print(
        f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}; task {a.task}, pool M = {a.pool}, {a.draws} training "
        "sets per n"
    )
    curves = {}
    for method in ("self_consistent", "equivalent_kernel"):
        fj.learning_curve(net(), X, Y, ns, method=method)  # compile
        curves[method] = _timed(lambda m=method: fj.learning_curve(net(), X, Y, ns, method=m))
    print(
        f"{'n':>5} | {'Monte Carlo':>19} {'s':>6} | {'self-consistent':>15} {'ratio':>6} | "
        f"{'equiv. kernel':>13} {'ratio':>6}"
    )
    key = jax.random.key(0)
    mc_total = 0.0
    for i, n in enumerate(a.ns):
        monte_carlo(net(), X, Y, n, a.draws, key)  # compile
        (mc, se), sec = _timed(lambda n=n: monte_carlo(net(), X, Y, n, a.draws, key))
        mc_total += sec
        sc = float(curves["self_consistent"][0].test_error[i])
        ek = float(curves["equivalent_kernel"][0].test_error[i])
        print(
            f"{n:5d} | {float(mc):10.4e}±{float(se):7.1e} {sec:6.2f} | {sc:15.4e} "
            f"{sc / float(mc):6.3f} | {ek:13.4e} {ek / float(mc):6.3f}"
        )
    print(
        f"# seconds (compiled): self-consistent curve {curves['self_consistent'][1]:.3f}, "
        f"equivalent kernel {curves['equivalent_kernel'][1]:.3f}, Monte Carlo {mc_total:.2f}"
    )

    # Hyper-parameter scan at n = scan_n.
    sw2s = np.geomspace(0.25, 16.0, 9)
    n = a.scan_n

    def predicted(sw2):
        return fj.learning_curve(net(sw2), X, Y, [float(n)]).test_error[0]

    grad = jax.jit(jax.value_and_grad(predicted))
    print(f"\n{'σ_w²':>6} | {'predicted':>10} {'d/dσ_w²':>10} | {'Monte Carlo':>19}")
    pred, mcs = [], []
    for sw2 in sw2s:
        val, g = grad(jnp.asarray(sw2))
        mc, se = monte_carlo(net(float(sw2)), X, Y, n, a.draws, key)
        pred.append(float(val))
        mcs.append(float(mc))
        print(
            f"{sw2:6.3f} | {float(val):10.4e} {float(g):+10.3e} | "
            f"{float(mc):10.4e}±{float(se):7.1e}"
        )
    print(
        f"# argmin over the grid: predicted σ_w² = {sw2s[int(np.argmin(pred))]:.3f}, "
        f"Monte Carlo σ_w² = {sw2s[int(np.argmin(mcs))]:.3f}"
    )
    if a.task == "teacher":
        finite_width(a.finite_draws)


def finite_width(draws: int):
    """A linear FCN's learning curve at finite width against its exact posterior."""
    t = fj.datasets.linear_patch_teacher(1000, 1, patch_size=32, patches=1, seed=3)
    X, Y = np.asarray(t.X), 3 * np.asarray(t.Y)
    ns = [16, 32, 64, 128]
    rng = np.random.default_rng(0)
    print(
        f"\n{'C':>5} {'n':>4} | {'predicted':>10} {'u':>6} | {'exact, averaged':>19} {'u':>6} | "
        f"{'ratio':>6}"
    )
    for C in (4.0, 16.0, np.inf):
        net = fj.FCN(C, 1.0, 1.0, 0.01, fj.Linear())
        lc = fj.learning_curve(net, X, Y, ns)
        for i, n in enumerate(ns):
            runs = []
            for _ in range(draws):
                idx = rng.integers(0, len(X), n)
                r = fj.renormalise(net, X[idx], Y[idx], X, Y)
                runs.append((float(r.test_error), float(r.scale)))
            runs = np.asarray(runs)
            err, u = runs.mean(0)
            se = runs[:, 0].std() / np.sqrt(draws)
            pred = float(lc.test_error[i])
            print(
                f"{C:5.0f} {n:4d} | {pred:10.4e} {float(lc.scale[i]):6.3f} | "
                f"{err:10.4e}±{se:7.1e} {u:6.3f} | {pred / err:6.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
