"""Stages and iterations of `fj.solve` on a set of small deep networks (stop 63).

    python benchmarks/deep_tasks.py [--seed 1] [--anderson-steps N]
    PYTHONPATH=/path/to/other/checkout python benchmarks/deep_tasks.py

A yardstick for changes to the deep solvers, whose iteration counts move chaotically with
any change of weighting: one network is not enough to compare two versions. Nine networks
(erf FCNs at σ_w² = 1.3 then 1.1, and in the authors' style σ_w² = 2, σ_a² = 0.25,
σ² = 0.01; ReLU and linear FCNs; depth 2 and 3; an erf PatchCNN of depth 2, S = 4) on
y = sin(2 w·x) (n = 32, d = 8, inputs N(0, I)) at C = 2, 8 and 32. Per cell
stages/iterations, with `!` where `converged` is False; then the sums and the seconds
(compilation included).
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402


def networks():
    """(name, C ↦ network)."""

    def fcn(sw2, sa2, noise, act, depth):
        return lambda C: fj.FCN(C, sw2, sa2, noise, act, depth=depth)

    out = []
    for L in (2, 3):
        per_layer = jnp.array([1.3] + [1.1] * (L - 1))
        out += [
            (f"erf FCN, L = {L}", fcn(per_layer, 1.0, 0.05, fj.Erf(), L)),
            (f"erf FCN, L = {L}, authors' style", fcn(2.0, 0.25, 0.01, fj.Erf(), L)),
            (f"ReLU FCN, L = {L}", fcn(2.0, 1.0, 0.05, fj.ReLU(), L)),
            (f"linear FCN, L = {L}", fcn(1.0, 1.0, 0.05, fj.Linear(), L)),
        ]
    patch = lambda C: fj.PatchCNN(C, 1.5, 1.0, 0.02, fj.Erf(), depth=2, patch_size=4)  # noqa: E731
    return [*out, ("erf PatchCNN, L = 2", patch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--anderson-steps", type=int, help="Anderson's cap per stage (default: the solver's)"
    )
    args = parser.parse_args()
    seed = args.seed
    extra = {} if args.anderson_steps is None else {"max_steps": (args.anderson_steps, 12)}
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, {fj.__file__}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((32, 8))
    w = rng.standard_normal(8) / np.sqrt(8)
    y = np.sin(2 * X @ w)[:, None]
    widths = (2.0, 8.0, 32.0)
    print(f"seed {seed}\n| network | " + " | ".join(f"C = {C:g}" for C in widths) + " |")
    print("| --- |" + " --- |" * len(widths))
    stages = iterations = failed = 0
    t0 = time.perf_counter()
    for name, make in networks():
        cells = []
        for C in widths:
            sol = fj.solve(make(C), X, y, **extra)
            ok = bool(sol.converged)
            cells.append(f"{int(sol.num_stages)}/{int(sol.num_steps)}{'' if ok else '!'}")
            stages += int(sol.num_stages)
            iterations += int(sol.num_steps)
            failed += int(not ok)
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(
        f"total: {stages} stages, {iterations} iterations, {failed} not converged, "
        f"{time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
