"""A finite-width network's learning curve with two outputs against its posterior, on drawn sets.

    python benchmarks/learning_curve_outputs.py --draws 30
    python benchmarks/learning_curve_outputs.py --draws 30 --task linear
    python benchmarks/learning_curve_outputs.py --network patch --pool 200 --draws 20
    python benchmarks/learning_curve_outputs.py --network patch --pool 200 --gp-only

`fj.learning_curve` at finite width for an FCN with m = 2 outputs: the m×m kernel scale U(n)
at the saddle point of `fj.renormalise`'s action with its data term averaged over training
sets (the outputs decouple in U's eigenbasis, each with its own renormalised ridge), then the
self-consistent curve of each output direction. What a user would otherwise do: draw training
sets of n points from the pool, compute the renormalised posterior on each (`fj.renormalise`,
integrated over U: exact for a linear network, the proportional-limit theory for erf) and
average its test error on the pool. Both run here on the same pool, in one process.

Tasks: d = 16 inputs, pool M = 400, output 1 a linear teacher ×3 (y₁ = 3w₁·x). `--task mixed`
(default): output 2 is 2 tanh(x₁) + y₁/2, which a linear network can learn only in part; `--task
linear`: output 2 is 3(0.6 w₁ + 0.8 w₂)·x, another linear teacher correlated with the first.
Either way the outputs are correlated and U* is not diagonal. FCNs (linear and erf) at C = 4,
σ_w² = σ_a² = 1, σ² = 0.01. `--network patch`: one-hidden-layer PatchCNNs instead (P = 4 patches
of 4 inputs, C = 16 > Pm − 1), whose 8×8 scale over (patch, output) pairs does not factor over
outputs (a 2×2 ridge; `_patch_outputs_width_curve`). Printed per (activation, n): the curve's
test error (averaged over outputs), the Monte-Carlo average ± its standard error, their ratio,
the GP's curve (C = ∞), the relative Frobenius gap between the curve's U(n) and the average of
the drawn sets' E[U | Y], both mean eigenvalues, the curve's χ proxy, its flag, and the seconds
the Monte Carlo took for that n (`learning_curve_patch.against_drawn_sets`; the first call
compiling).
Then the curve's time: its first call (compilation included) and the best of three after.
`--gp-only`: instead, the GP's curve against GP regression on 2000 drawn training sets per n
(the width-∞ baseline of the same comparison, which shows the self-consistent curve's own bias
on this pool), in seconds.
"""

import argparse
import platform

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from learning_curve import first_and_best, monte_carlo  # noqa: E402
from learning_curve_patch import against_drawn_sets  # noqa: E402

import fls_jax as fj  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=30, help="training sets per n")
    parser.add_argument("--ns", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--pool", type=int, default=400)
    parser.add_argument("--task", choices=["mixed", "linear"], default="mixed")
    parser.add_argument("--network", choices=["fcn", "patch"], default="fcn")
    parser.add_argument("--gp-only", action="store_true", help="the GP's curve against GP MC")
    a = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}; pool M = {a.pool}, "
        f"{2000 if a.gp_only else a.draws} training sets per n, "
        f"task {a.task}, network {a.network}"
    )
    t = fj.datasets.linear_patch_teacher(a.pool, 1, patch_size=16, patches=1, seed=3)
    X, y = np.asarray(t.X), 3 * np.asarray(t.Y)[:, 0]
    if a.task == "mixed":
        Y = np.stack([y, 2 * np.tanh(X[:, 1]) + 0.5 * y], axis=1)
    else:
        w2 = np.random.default_rng(11).standard_normal(X.shape[1])
        y2 = 3 * X @ w2 / np.linalg.norm(w2)
        y2 = y2 - (y2 @ y) / (y @ y) * y  # orthogonal to y₁ on the pool
        y2 = y2 * np.linalg.norm(y) / np.linalg.norm(y2)
        Y = np.stack([y, 0.6 * y + 0.8 * y2], axis=1)
    ns = np.asarray(a.ns, float)
    if not a.gp_only:
        print(
            f"{'act':>6} {'n':>4} | {'curve':>10} {'averaged':>19} {'ratio':>6} {'GP':>10} | "
            f"{'|ΔU|/|U|':>8} {'tr U/m':>7} {'avg':>7} | {'χ':>6} ok | {'MC (s)':>6}"
        )
    timings = []
    for act in (fj.Linear(), fj.Erf()):

        def network(width, act=act):
            if a.network == "patch":
                return fj.PatchCNN(width, 1.0, 1.0, 0.01, act, patch_size=4)
            return fj.FCN(width, 1.0, 1.0, 0.01, act)

        if a.gp_only:
            gp = fj.learning_curve(network(np.inf), X, Y, ns)
            for i, n in enumerate(a.ns):
                key = jax.random.key(n)
                Xj, Yj = jnp.asarray(X), jnp.asarray(Y)
                mean, se = monte_carlo(network(np.inf), Xj, Yj, n, 2000, key)
                ratio = float(gp.test_error[i]) / float(mean)
                print(
                    f"{type(act).__name__:>6} {n:4d} | GP's curve {float(gp.test_error[i]):.4e}, "
                    f"GP regression {float(mean):.4e} ± {float(se):.1e}, ratio {ratio:.3f}"
                )
            continue
        net = network(16.0 if a.network == "patch" else 4.0)
        lc, first, after = first_and_best(fj.learning_curve, net, X, Y, ns)
        timings.append((type(act).__name__, first, after))
        gp = fj.learning_curve(network(np.inf), X, Y, ns)
        against_drawn_sets(type(act).__name__, net, X, Y, a.ns, a.draws, lc, gp)
    if a.gp_only:
        return
    print(f"\n{'act':>6} | {'first call (s)':>14} {'after (s)':>9}  ({len(ns)} sizes)")
    for name, first, after in timings:
        print(f"{name:>6} | {first:14.2f} {after:9.2f}")


if __name__ == "__main__":
    main()
