"""What a user pays for calling the public functions eagerly, before and after stop 34.

    python benchmarks/entry_point_compiles.py

Side by side in one run, on an erf FCN (n = 32, d = 6):

- `fj.free_energy` and `fj.eos_residual` called eagerly. Before stop 34 they ran operation by
  operation (here: the same internals, `_free_energy` and `_shift_residuals`, called
  directly); now each is one compiled program. First call and the median of 5 later calls at
  other Σ.
- `fj.solve` on networks whose width was set with `eqx.tree_at` to a Python float (which
  bypasses the converters, and which `eqx.filter_jit` holds static). Before, each width
  compiled its own program (here: `_solve`, the compiled inner function, called directly
  with such a network); now `solve` turns the width into an array first. Four widths.
"""

import platform
import statistics
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._free_energy import _free_energy, _shift_residuals  # noqa: E402
from fls_jax._solve import (  # noqa: E402
    _MAX_STAGES,
    _chain,
    _default_adjoint,
    _resolve_solver,
    _solve,
)


def timed(fn):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def first_and_later(call):
    first = timed(lambda: call(0))
    return first, statistics.median(timed(lambda k=k: call(k)) for k in range(1, 6))


def main() -> None:
    print(f"# {platform.processor() or platform.machine()}, jax {jax.__version__}")
    t = fj.datasets.single_index_teacher(n=32, n_test=8, d=6, seed=2)
    X, Y = jax.numpy.asarray(t.X), jax.numpy.asarray(t.Y)
    net = fj.FCN(width=6.0, sigma_w2=1.3, sigma_a2=0.8, noise=0.02)
    sig = 1.3 / 6 * np.eye(6)
    rows = {
        "free_energy, op by op (before)": lambda k: _free_energy(net, sig * (1 + k / 10), (), X, Y),
        "free_energy, compiled (now)": lambda k: fj.free_energy(net, sig * (1 + k / 10), X, Y),
        "eos_residual, op by op (before)": lambda k: _shift_residuals(
            net, np.linalg.inv(sig * (1 + k / 10)), (), X, Y
        ),
        "eos_residual, compiled (now)": lambda k: fj.eos_residual(
            np.linalg.inv(sig * (1 + k / 10)), net, X, Y
        ),
    }
    print("| call | first call, s | later calls (median of 5), ms |\n|---|---|---|")
    for name, call in rows.items():
        first, later = first_and_later(call)
        print(f"| {name} | {first:.2f} | {1e3 * later:.2f} |", flush=True)

    widths = [4.0, 8.0, 16.0, 32.0]
    chain = _chain(_resolve_solver(None, X.dtype, 1, 6), None, 6)
    adjoint = _default_adjoint(1)

    def before(w):  # the compiled inner function with the Python-float width, as before
        n = eqx.tree_at(lambda m: m.width, net, w)
        return _solve(n, X, Y, chain, _MAX_STAGES, None, adjoint).sigma

    def now(w):
        return fj.solve(eqx.tree_at(lambda m: m.width, net, w), X, Y).sigma

    head = " | ".join(f"C = {w:g}" for w in widths)
    print(f"\n| solve, width set by eqx.tree_at to | {head} |")
    print("|---" * (len(widths) + 1) + "|")
    for name, fn in (("a Python float (before), s", before), ("a Python float (now), s", now)):
        times = [timed(lambda w=w, fn=fn: fn(w)) for w in widths]
        print(f"| {name} | " + " | ".join(f"{s:.2f}" for s in times) + " |")


if __name__ == "__main__":
    main()
