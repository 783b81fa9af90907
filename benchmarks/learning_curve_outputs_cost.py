"""The cost of `fj.learning_curve` at finite width against the number of outputs m.

    python benchmarks/learning_curve_outputs_cost.py

Task: scikit-learn's digits, one-hot targets (`fj.datasets.digits(labels="onehot")`), the
first m of the ten outputs, a pool of M = 1000 images; an erf FCN at C = 16, σ_w² = σ_a² = 1,
σ² = 0.01, and the sizes n = 16, 64, 256. Printed per m: the first call (compilation
included), the best of two calls after, E_g per size with the GP's (C = ∞) next to it, the
mean eigenvalue of U(n), χ_proxy, and the flags. Each evaluation of the averaged action
factorises M blocks of m×m and solves an m²×m² system: O(Mm⁴) arithmetic, and the saddle
takes S's Hessian in U's m(m + 1)/2 entries.

With `--network patch`: an erf PatchCNN instead (P = 4 patches of 16 pixels, C = 16 or 2Pm if
larger), whose scale is Pm×Pm and whose every evaluation factorises (mM)×(mM) matrices:
O((mM)³) arithmetic, (mM)² memory per matrix, and the saddle's Hessian in Pm(Pm + 1)/2
entries, so m = 2 and 3 at M = 1000 are a GPU's job (`benchmarks/gpu_run.sh 5`). `--pool`,
`--ms` and `--ns` set M, the m's and the sizes.

    python benchmarks/learning_curve_outputs_cost.py --network patch --pool 200 --ms 2 3 --ns 16
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--network", choices=("fcn", "patch"), default="fcn")
    parser.add_argument("--pool", type=int, default=1000)
    parser.add_argument("--ms", type=int, nargs="+", default=[2, 3, 5, 10])
    parser.add_argument("--ns", type=float, nargs="+", default=[16.0, 64.0, 256.0])
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}"
    )
    task = fj.datasets.digits(n=args.pool, n_test=1, labels="onehot", seed=0)
    X = np.asarray(task.X)
    ns = args.ns
    print(f"# {args.network}, M = {args.pool}, n = {ns}")
    print(f"{'m':>3} | {'first (s)':>9} {'after (s)':>9} | E_g (GP's) per n | tr U/m | χ | ok")
    for m in args.ms:
        Y = np.asarray(task.Y)[:, :m]
        if args.network == "patch":
            width = float(max(16, 2 * 4 * m))

            def build(c):
                return fj.PatchCNN(c, 1.0, 1.0, 0.01, fj.Erf(), patch_size=16)
        else:
            width = 16.0

            def build(c):
                return fj.FCN(c, 1.0, 1.0, 0.01, fj.Erf())

        net = build(width)
        start = time.perf_counter()
        lc = fj.learning_curve(net, X, Y, ns)
        jax.block_until_ready(lc.test_error)
        first = time.perf_counter() - start
        after = np.inf
        for _ in range(2):
            start = time.perf_counter()
            jax.block_until_ready(fj.learning_curve(net, X, Y, ns).test_error)
            after = min(after, time.perf_counter() - start)
        gp = fj.learning_curve(build(np.inf), X, Y, ns)
        errors = ", ".join(
            f"{float(e):.4f} ({float(g):.4f})"
            for e, g in zip(lc.test_error, gp.test_error, strict=True)
        )
        scales = ", ".join(f"{float(s):.3f}" for s in lc.scale)
        chis = ", ".join(f"{float(c):.1f}" for c in lc.chi_proxy)
        print(
            f"{m:3d} | {first:9.1f} {after:9.2f} | {errors} | {scales} | {chis} | "
            f"{bool(np.all(lc.converged))}",
            flush=True,
        )


if __name__ == "__main__":
    main()
