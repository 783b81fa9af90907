"""The linear-algebra floor of an EoS iteration on this machine (issue 6), in float64.

    python benchmarks/linalg_limit.py --ns 4096 8192 16384

Per n: a dense n×n matrix product (TFLOP/s at 2n³ operations), a Cholesky factorisation of an
SPD matrix, the SPD inverse through that factor (Cholesky then two triangular solves against
the identity, what an EoS iteration needs for K_f⁻¹), and the erf post-kernel of an n×n
pre-kernel (the arcsin formula, SPEC §2); and the matrix product and SPD inverse again in
float32, what the float32 mode would gain per iteration. Median of `--repeat` timed calls
after one warm-up, each synchronised with `block_until_ready`. These are the reference costs
against which `scaling_n.py` reports its iterations.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.scipy.linalg as jsl  # noqa: E402
import numpy as np  # noqa: E402


def median_time(f, *args, repeat=5):
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


@jax.jit
def spd_inverse(A):
    c = jsl.cho_factor(A, lower=True)
    return jsl.cho_solve(c, jnp.eye(A.shape[0], dtype=A.dtype))


@jax.jit
def erf_post_kernel(K):
    d = 1.0 + 2.0 * jnp.diagonal(K)
    return (2.0 / jnp.pi) * jnp.arcsin(2.0 * K / jnp.sqrt(d[:, None] * d[None, :]))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ns", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    dev = jax.devices()[0]
    print(
        f"# float64 linear-algebra floor; {platform.node()} {jax.default_backend()} "
        f"{dev.device_kind} jax {jax.__version__} {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"{'n':>6} {'matmul ms':>10} {'TFLOP/s':>8} {'chol ms':>9} {'inv ms':>9} "
        f"{'erf post ms':>11} {'f32 TFLOP/s':>11} {'f32 inv ms':>10}"
    )
    matmul = jax.jit(jnp.matmul)
    chol = jax.jit(jnp.linalg.cholesky)
    for n in a.ns:
        key = jax.random.PRNGKey(n)
        B = jax.random.normal(key, (n, n), jnp.float64)
        A = B @ B.T / n + jnp.eye(n)
        K = A / 4.0
        t_mm = median_time(matmul, B, A, repeat=a.repeat)
        t_ch = median_time(chol, A, repeat=a.repeat)
        t_inv = median_time(spd_inverse, A, repeat=a.repeat)
        t_erf = median_time(erf_post_kernel, K, repeat=a.repeat)
        del K
        B, A = B.astype(jnp.float32), A.astype(jnp.float32)
        t_mm32 = median_time(matmul, B, A, repeat=a.repeat)
        t_inv32 = median_time(spd_inverse, A, repeat=a.repeat)
        print(
            f"{n:6d} {1e3 * t_mm:10.2f} {2 * n**3 / t_mm / 1e12:8.2f} {1e3 * t_ch:9.2f} "
            f"{1e3 * t_inv:9.2f} {1e3 * t_erf:11.2f} {2 * n**3 / t_mm32 / 1e12:11.2f} "
            f"{1e3 * t_inv32:10.2f}",
            flush=True,
        )
        del A, B


if __name__ == "__main__":
    main()
