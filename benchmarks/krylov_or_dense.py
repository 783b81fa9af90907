"""The one-layer adjoint's linear solver, `fj.KrylovOrDense`, against its two parts.

    python benchmarks/krylov_or_dense.py

8 well-conditioned 400×400 systems, solved matrix-free and vmapped, by GMRES alone, by
`KrylovOrDense` (GMRES, with a dense LU only where GMRES misses its tolerance) and by
`DenseLU` (materialise and factorise). Where GMRES succeeds everywhere, `KrylovOrDense` should
cost what GMRES costs: its fallback loops run zero times. Best of 5 after compilation.
"""

import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402

import fls_jax as fj  # noqa: E402


def main():
    N, B = 400, 8
    rng = np.random.default_rng(0)
    As = jnp.asarray(np.eye(N) + 0.3 / np.sqrt(N) * rng.standard_normal((B, N, N)))
    bs = jnp.asarray(rng.standard_normal((B, N)))
    gmres = lx.GMRES(rtol=1e-10, atol=0.0, norm=optx.two_norm, restart=20, max_steps=100)
    print(f"# {B} vmapped {N}×{N} solves, {jax.default_backend()}, {time.strftime('%Y-%m-%d')}")
    for name, solver in [
        ("GMRES", gmres),
        ("KrylovOrDense", fj.KrylovOrDense(gmres)),
        ("DenseLU", fj.DenseLU()),
    ]:

        def solve(A, b, solver=solver):
            op = lx.FunctionLinearOperator(lambda v: A @ v, jax.ShapeDtypeStruct((N,), jnp.float64))
            return lx.linear_solve(op, b, solver, throw=False).value

        f = jax.jit(jax.vmap(solve))
        x = jax.block_until_ready(f(As, bs))
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(f(As, bs))
            ts.append(time.perf_counter() - t0)
        err = float(jnp.max(jnp.abs(jnp.einsum("bij,bj->bi", As, x) - bs)))
        print(f"{name:14s} {1e3 * min(ts):8.2f} ms   max |Ax − b| {err:.1e}")


if __name__ == "__main__":
    main()
