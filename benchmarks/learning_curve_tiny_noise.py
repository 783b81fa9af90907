"""The m-output learning curves at tiny σ², against the one-output curves (a hand run).

Targets Y = y cᵀ (c = (0.6, 0.8)) on two outputs split over c and c⊥ (the second output
direction carries no target power), so the two-output curve's E_g is the mean of the
one-output curves' for y and 0, and its χ_proxy their sum (another code path: a scalar ridge
bisected on the kernel's spectrum). Prints, per σ² and n, the two-output curve's flag, E_g
and its relative difference from the one-output curves' (and χ_proxy's), and the time of
the call after compiling. A size reported converged must agree; a flagged one need not.

- `--network fcn` (default): a linear FCN, C = 4, the first M = 200 inputs of
  `linear_patch_teacher(400, 1, patch_size=16, patches=1, seed=3)`, targets ×3 (the tests'
  pool), n = 8, 16, 32 (d = 16).
- `--network patch`: a PatchCNN (4 patches of 4), linear and erf, C = 16, M = 120, the pool
  of `linear_patch_teacher(120, 1, patch_size=4, patches=4, seed=3)`, targets ×3.

    python benchmarks/learning_curve_tiny_noise.py
    python benchmarks/learning_curve_tiny_noise.py --network patch
"""

import argparse
import time

import jax
import numpy as np


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402


NS = [8.0, 16.0, 32.0]
C_DIRECTION = np.array([0.6, 0.8])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--network", choices=("fcn", "patch"), default="fcn")
    parser.add_argument("--noise", type=float, nargs="+", default=[1e-2, 1e-6, 1e-8, 1e-10])
    args = parser.parse_args()
    if args.network == "fcn":
        task = fj.datasets.linear_patch_teacher(400, 1, patch_size=16, patches=1, seed=3)
        X, y = np.asarray(task.X)[:200], 3 * np.asarray(task.Y)[:200, 0]
        nets = {"linear": lambda s: fj.FCN(4.0, 1.0, 1.0, s, fj.Linear())}
    else:
        task = fj.datasets.linear_patch_teacher(120, 1, patch_size=4, patches=4, seed=3)
        X, y = np.asarray(task.X), 3 * np.asarray(task.Y)[:, 0]
        nets = {
            name: (lambda s, act=act: fj.PatchCNN(16.0, 1.0, 1.0, s, act, patch_size=4))
            for name, act in (("linear", fj.Linear()), ("erf", fj.Erf()))
        }
    print(f"{args.network}: M = {X.shape[0]}, d = {X.shape[1]}, n = {NS}, σ_ε² = 0")
    print("act     σ²      n   converged  E_g (two outputs)  |ΔE_g|/E_g  |Δχ|/χ   seconds")
    for name, build in nets.items():
        for noise in args.noise:
            net = build(noise)
            two = fj.learning_curve(net, X, np.outer(y, C_DIRECTION), NS)
            jax.block_until_ready(two.test_error)
            start = time.perf_counter()
            two = fj.learning_curve(net, X, np.outer(y, C_DIRECTION), NS)
            jax.block_until_ready(two.test_error)
            seconds = time.perf_counter() - start
            ones = [fj.learning_curve(net, X, t[:, None], NS) for t in (y, 0 * y)]
            mean = (np.asarray(ones[0].test_error) + np.asarray(ones[1].test_error)) / 2
            chi = np.asarray(ones[0].chi_proxy) + np.asarray(ones[1].chi_proxy)
            if not all(bool(np.all(o.converged)) for o in ones):
                print(f"  (σ² = {noise:g}: a one-output curve is flagged too)")
            for i, n in enumerate(NS):
                error = float(two.test_error[i])
                d_error = abs(error / mean[i] - 1)
                d_chi = abs(float(two.chi_proxy[i]) / chi[i] - 1)
                print(
                    f"{name:7s} {noise:<7.0e} {n:3.0f}  {bool(two.converged[i])!s:9s}  "
                    f"{error:16.6e}  {d_error:10.1e}  {d_chi:8.1e}  {seconds:6.1f}"
                )


if __name__ == "__main__":
    main()
