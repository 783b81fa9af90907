"""Narrow deep solves that fail, and why: a stall or a fold (stop 64).

    python benchmarks/deep_narrow_scan.py

24 depth-3 erf FCNs in the authors' style (σ_w² = 2, σ_a² = 0.25) on the inputs of
`fj.datasets.deep_erf_teacher(n=20, d=5, seed=3)` with targets y = sin(2 w·x) (six seeds of
w), at C = 2 and 1 and σ² = 10⁻² and 10⁻³, solved from the GP limit with the default solver,
and with Anderson capped at 200 iterations per stage (`max_steps=(200, 12)`, the cap before
stop 64). Per cell stages/iterations, `!` where `converged` is False. Each failure of the
default is run again with `max_stages=128`: where `width_reached` stays put (to 10⁻⁴), the
continuation met a fold of its branch of solutions; where it moves on, a stall.
"""

import platform
import time

import jax
import numpy as np


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402


def cell(sol) -> str:
    return f"{int(sol.num_stages)}/{int(sol.num_steps)}{'' if bool(sol.converged) else '!'}"


def main() -> None:
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, {fj.__file__}")
    X = np.asarray(fj.datasets.deep_erf_teacher(n=20, n_test=30, d=5, depth=2, seed=3).X)
    print("| seed | C | σ² | cap 200 | default (600) | width reached | with 128 stages |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    failed = {"cap 200": 0, "default": 0}
    t0 = time.perf_counter()
    for seed in range(6):
        w = np.random.default_rng(seed).standard_normal(X.shape[1]) / np.sqrt(X.shape[1])
        Y = np.sin(2 * X @ w)[:, None]
        for C in (2.0, 1.0):
            for noise in (1e-2, 1e-3):
                net = fj.FCN(width=C, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=noise)
                old = fj.solve(net, X, Y, max_steps=(200, 12))
                new = fj.solve(net, X, Y)
                failed["cap 200"] += not bool(old.converged)
                failed["default"] += not bool(new.converged)
                row = f"| {seed} | {C:g} | {noise:g} | {cell(old)} | {cell(new)} |"
                if bool(new.converged):
                    print(row + " | |", flush=True)
                    continue
                more = fj.solve(net, X, Y, max_stages=128)
                a, b = float(new.width_reached), float(more.width_reached)
                kind = "fold" if abs(b / a - 1) < 1e-4 and not bool(more.converged) else "stall"
                print(row + f" {a:.6g} | {cell(more)}, {b:.6g}: {kind} |", flush=True)
    print(
        f"not converged: {failed['cap 200']} (cap 200), {failed['default']} (default) of 24; "
        f"{time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
