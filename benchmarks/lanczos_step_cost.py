"""What one step of `fj.hessian_index(method="lanczos")` costs, and the whole index with the
Ritz values from the whole padded tridiagonal or from a leading block (stop 69).

    python benchmarks/lanczos_step_cost.py [--max-steps 200] [--repeats 20]

Networks: the narrow depth-3 erf FCN of `deep_narrow_scan.py` (n = 20, seed 11, C = 2,
σ² = 10⁻³: a saddle of F) and the authors' three-layer erf FCN on the n = 128 reference data
(C = 90 and 1). Per step: the Hessian-vector product in the index's whitened coordinates,
the two reorthogonalisation passes, and the Ritz values and bounds of a tridiagonal with
k = 50 steps from the whole `max_steps` × `max_steps` (`_ritz`, every step before stop 69)
and from the leading 64 × 64 block (`_ritz_leading`). Then the whole index
(`_lanczos_index`, what `fj.hessian_index(method="lanczos")` runs), once with no blocks
(the whole tridiagonal at every step, as before stop 69, and as a vmapped `hessian_index`
still does) and once with `_RITZ_BLOCKS`, each jit-compiled separately, in the same run;
and both Ritz steps vmapped over 10 tridiagonals, where `lax.switch` computes every block.
Every time is the median of `--repeats` calls after a warm-up call.
"""

import argparse
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


jax.config.update("jax_enable_x64", True)

import deep_narrow_scan as scan  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._linalg import (  # noqa: E402
    _RITZ_BLOCKS,
    _ritz,
    _ritz_leading,
)
from fls_jax._trace import _lanczos_index, _whitened_hvp  # noqa: E402


REF = pathlib.Path(__file__).parent.parent / "tests/data/fcn3_erf_n128"


def median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    m = args.max_steps
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, max_steps {m}")
    X = scan.inputs()
    narrow = fj.FCN(width=2.0, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=1e-3)
    Xr = np.load(REF / "X_train.npy").astype(float)
    Yr = np.load(REF / "Y_train.npy").astype(float)

    def authors(C):
        return fj.FCN(width=C, sigma_w2=2.0, sigma_a2=2 / 256, noise=1e-3, depth=2)

    rng = np.random.default_rng(0)
    alpha, beta = jnp.asarray(rng.standard_normal(m)), jnp.asarray(rng.random(m))
    ritz = jax.jit(_ritz)
    leading = jax.jit(lambda a, b, k: _ritz_leading(a, b, k, _RITZ_BLOCKS))
    print(
        "| network | unknowns | HVP ms | reorthogonalisation ms | `_ritz` ms | `_ritz_leading` "
        "ms | index | steps | index s, whole | index s, leading |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, net, Xs, Ys in (
        ("narrow n = 20", narrow, X, scan.targets(X, 11)),
        ("authors' n = 128, C = 90", authors(90.0), Xr, Yr),
        ("authors' n = 128, C = 1", authors(1.0), Xr, Yr),
    ):
        sol = fj.solve(net, Xs, Ys)
        index_args = (sol.network, sol.X, sol.Y, sol.precision, sol.kernel_shifts)
        hvp, v0 = _whitened_hvp(*index_args)  # the index's own Hessian-vector product
        hvp, N = jax.jit(hvp), v0.shape[0]
        v = jnp.asarray(rng.standard_normal(N))
        V = jnp.asarray(rng.standard_normal((m + 1, N)))
        ortho = jax.jit(lambda V, w: w - V.T @ (V @ w))
        t_hvp = median_time(hvp, v, repeats=args.repeats)
        t_orth = 2 * median_time(ortho, V, v, repeats=args.repeats)
        k50 = jnp.asarray(50)
        t_ritz = median_time(ritz, alpha, beta, k50, repeats=args.repeats)
        t_lead = median_time(leading, alpha, beta, k50, repeats=args.repeats)
        times, counts = [], []
        for blocks in ((), _RITZ_BLOCKS):
            index = jax.jit(lambda *a, blocks=blocks: _lanczos_index(*a, m, blocks))
            counts.append(tuple(int(v) for v in index(*index_args)[::2]))
            times.append(median_time(index, *index_args, repeats=max(3, args.repeats // 5)))
        assert counts[0] == counts[1], counts  # the same index, in the same steps
        print(
            f"| {name} | {N} | {1e3 * t_hvp:.2f} | {1e3 * t_orth:.2f} | {1e3 * t_ritz:.2f} "
            f"| {1e3 * t_lead:.2f} | {counts[0][0]} | {counts[0][1]} | {times[0]:.3f} "
            f"| {times[1]:.3f} |",
            flush=True,
        )
    batched(m, args.repeats)


def batched(m: int, repeats: int, batch: int = 10) -> None:
    """Under vmap (a batched `sweep`'s index) `lax.switch` computes every block: the Ritz
    values of `batch` tridiagonals at k = 50, whole against leading."""
    rng = np.random.default_rng(1)
    alpha = jnp.asarray(rng.standard_normal((batch, m)))
    beta = jnp.asarray(rng.random((batch, m)))
    k = jnp.full(batch, 50)
    whole = median_time(jax.jit(jax.vmap(_ritz)), alpha, beta, k, repeats=repeats)
    lead = jax.jit(jax.vmap(lambda a, b, k: _ritz_leading(a, b, k, _RITZ_BLOCKS)))
    leading = median_time(lead, alpha, beta, k, repeats=repeats)
    print(
        f"vmapped over {batch} tridiagonals (k = 50): whole {1e3 * whole:.2f} ms, "
        f"leading blocks {1e3 * leading:.2f} ms"
    )


if __name__ == "__main__":
    main()
