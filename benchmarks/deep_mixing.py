"""Deeper networks' Anderson mixing: β = 0.1 halved at each cut-back step (adaptive), or fixed.

    python benchmarks/deep_mixing.py [--problems lin64 lin128 erf2 erf3]

The default chain for depth ≥ 2 (Anderson with memory 30, patience 100, steps raising the
residual more than 10× cut back, then damped Newton–GMRES) with Anderson's β = 0.1 either
halved for the rest of a root find at each step that had to be cut back (`adaptive_mixing`,
the default until 2026-12-02) or fixed (the default since). Problems, each solved from the
GP limit (`solve`) unless said:

- `lin64`, `lin128`: deep linear FCN, depth 2, σ_w² = 1.2, σ_a² = 0.9, σ² = 0.05,
  `linear_patch_teacher` with n = 64, d = 16 / n = 128, d = 32; C = 4, 16, 64;
- `erf2`: erf FCN, depth 2, σ_w² = 2, σ_a² = 1, σ² = 0.01, deep-erf teacher n = 128, d = 32
  (the problem of `solvers.py --depth 2`); C = 4096, 64, 8, 4;
- `erf3`: erf FCN, depth 3, σ_w² = 2, σ_a² = 2/256, σ² = 1e-3, deep-erf teacher n = 128,
  d = 32 (`deep_narrow_step.py`): a path sweep over 8 widths 30000 → 90.

Prints iterations / stages per width and seconds (compilation included).
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._solve import _anderson_newton  # noqa: E402


def chain(adaptive: bool, depth: int):
    """`solve`'s default chain for depth ≥ 2, with Anderson's `adaptive_mixing` set."""
    anderson, newton = _anderson_newton(np.float64, depth)
    return (eqx.tree_at(lambda a: a.adaptive_mixing, anderson, adaptive), newton)


def run(problem: str, adaptive: bool) -> str:
    if problem == "erf3":
        t = fj.datasets.deep_erf_teacher(n=128, n_test=20, d=32, depth=3, seed=0)
        kw = dict(sigma_w2=2.0, sigma_a2=2.0 / 256, activation=fj.Erf(), depth=3, noise=1e-3)
        widths = np.geomspace(30000, 90, 8)
        net, solver = fj.FCN(1.0, **kw), chain(adaptive, 3)
        sols, _ = fj.sweep(net, t.X, t.Y, widths, t.X_test, schedule="path", solver=solver)
        rows = zip(widths, sols.num_steps, sols.num_stages, sols.converged, strict=True)
    else:
        if problem in ("lin64", "lin128"):
            n, d = (64, 16) if problem == "lin64" else (128, 32)
            t = fj.datasets.linear_patch_teacher(n, 50, patch_size=d, patches=1, seed=0)
            kw = dict(sigma_w2=1.2, sigma_a2=0.9, noise=0.05, activation=fj.Linear(), depth=2)
            widths = (4.0, 16.0, 64.0)
        else:
            t = fj.datasets.deep_erf_teacher(128, 100, 32, depth=2, seed=0)
            kw = dict(sigma_w2=2.0, sigma_a2=1.0, noise=0.01, activation=fj.Erf(), depth=2)
            widths = (4096.0, 64.0, 8.0, 4.0)
        sols = [fj.solve(fj.FCN(C, **kw), t.X, t.Y, solver=chain(adaptive, 2)) for C in widths]
        pairs = zip(widths, sols, strict=True)
        rows = [(C, s.num_steps, s.num_stages, s.converged) for C, s in pairs]
    cells = [f"C={C:g}: {int(k)}/{int(st)}{'' if ok else ' FAILED'}" for C, k, st, ok in rows]
    return "  ".join(cells)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", nargs="+", default=["lin64", "lin128", "erf2", "erf3"])
    a = p.parse_args()
    print(f"# {platform.machine()}, jax {jax.__version__}, {jax.devices()[0].platform}")
    print("iterations/stages per width")
    for problem in a.problems:
        for adaptive in (True, False):
            t0 = time.perf_counter()
            cells = run(problem, adaptive)
            label = "adaptive" if adaptive else "fixed"
            print(f"{problem:6} {label:8} {time.perf_counter() - t0:6.1f} s  {cells}", flush=True)


if __name__ == "__main__":
    main()
