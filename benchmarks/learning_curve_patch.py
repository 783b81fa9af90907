"""A finite-width PatchCNN's learning curve against its exact posterior on drawn training sets.

    python benchmarks/learning_curve_patch.py --draws 30

`fj.learning_curve` at finite width for a one-hidden-layer PatchCNN: the P×P kernel scale U(n)
at the saddle point of `fj.renormalise`'s action with its data term averaged over training
sets, then the self-consistent curve of the kernel Σ_pq U_pq κ_pq. What a user would otherwise
do: draw training sets of n points from the pool, compute the renormalised posterior on each
(`fj.renormalise`, integrated over U: exact for a linear network) and average its test error
on the pool. Both run here on the same pool, in one process.

Task: a linear teacher on 16 inputs in P = 4 patches of 4, targets ×3, pool M = 400; PatchCNNs
(linear and erf) at C = 4, σ_w² = σ_a² = 1, σ² = 0.01. Printed per (activation, n): the
curve's test error, the Monte-Carlo average ± its standard error, their ratio, the GP's curve
(C = ∞), the relative Frobenius gap between the curve's U(n) and the average of the drawn
sets' E[U | Y], both mean eigenvalues, the curve's χ proxy, its flag, and the Monte Carlo's
seconds for that n (`against_drawn_sets`; the column is newer than the log of stop 51). Then
the curve's time: its first call (compilation included) and the best of three after.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from learning_curve import first_and_best  # noqa: E402

import fls_jax as fj  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=30, help="training sets per n")
    parser.add_argument("--ns", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--pool", type=int, default=400)
    a = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}; pool M = {a.pool}, {a.draws} training sets per n"
    )
    t = fj.datasets.linear_patch_teacher(a.pool, 1, patch_size=4, patches=4, seed=3)
    X, Y = np.asarray(t.X), 3 * np.asarray(t.Y)
    ns = np.asarray(a.ns, float)
    print(
        f"{'act':>6} {'n':>4} | {'curve':>10} {'exact, averaged':>19} {'ratio':>6} {'GP':>10} | "
        f"{'|ΔU|/|U|':>8} {'tr U/P':>7} {'avg':>7} | {'χ':>6} ok | {'MC (s)':>6}"
    )
    timings = []
    for act in (fj.Linear(), fj.Erf()):
        net = fj.PatchCNN(4.0, 1.0, 1.0, 0.01, act, patch_size=4)
        lc, first, after = first_and_best(fj.learning_curve, net, X, Y, ns)
        timings.append((type(act).__name__, first, after))
        gp = fj.learning_curve(fj.PatchCNN(np.inf, 1.0, 1.0, 0.01, act, patch_size=4), X, Y, ns)
        against_drawn_sets(type(act).__name__, net, X, Y, a.ns, a.draws, lc, gp)
    print(f"\n{'act':>6} | {'first call (s)':>14} {'after (s)':>9}  ({len(ns)} sizes)")
    for name, first, after in timings:
        print(f"{name:>6} | {first:14.2f} {after:9.2f}")


def against_drawn_sets(name, net, X, Y, ns, draws, lc, gp):
    """One printed row per n: the curve `lc` against `fj.renormalise` (its default, the
    posterior integrated over the scale) on `draws` training sets of n points drawn from the
    pool (X, Y), its test error on the pool averaged; the GP's curve `gp`; the Frobenius gap
    between the curve's scale matrix and the drawn sets' average E[U | Y]; both mean
    eigenvalues; χ_proxy; the flag; and the seconds the draws took (the first compiling)."""
    rng = np.random.default_rng(0)
    for i, n in enumerate(ns):
        errors, scales = [], []
        start = time.perf_counter()
        for _ in range(draws):
            idx = rng.integers(0, len(X), n)
            r = fj.renormalise(net, X[idx], Y[idx], X, Y)
            errors.append(float(r.test_error))
            scales.append(np.asarray(r.scale_matrix))
        seconds = time.perf_counter() - start
        err, se = np.mean(errors), np.std(errors) / np.sqrt(draws)
        U, U_avg = np.asarray(lc.scale_matrix[i]), np.mean(scales, axis=0)
        gap = np.linalg.norm(U - U_avg) / np.linalg.norm(U_avg)
        pred = float(lc.test_error[i])
        print(
            f"{name:>6} {n:4d} | {pred:10.4e} {err:10.4e}±{se:7.1e} "
            f"{pred / err:6.3f} {float(gp.test_error[i]):10.4e} | {gap:8.3f} "
            f"{np.trace(U) / len(U):7.3f} {np.trace(U_avg) / len(U):7.3f} | "
            f"{float(lc.chi_proxy[i]):6.2f} {bool(lc.converged[i])} | {seconds:6.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
