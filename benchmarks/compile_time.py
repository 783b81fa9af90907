"""First-call cost of fls_jax's programs: how long a user waits for tracing and compiling.

    python benchmarks/compile_time.py --repeat 3
    PYTHONPATH=/path/to/other/checkout python benchmarks/compile_time.py   # side by side

On a small problem (n = 32) the arithmetic is milliseconds and the first call is all
tracing and XLA compilation: that is what a test, a notebook cell or the command line pays
before its first answer. For each program: the first call after `jax.clear_caches()` (trace,
lower, compile, run), the second call (run only), and their difference, best and median of
`--repeat`; and the size of the traced program (StableHLO operations). JAX's persistent
compilation cache is switched off. Run it on an idle machine: compile times vary by ±10 %.
"""

import argparse
import platform
import statistics
import time

import jax


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_enable_compilation_cache", False)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import fls_jax as fj  # noqa: E402


def _data(n: int, d: int, seed: int = 0):
    kx, kt = jax.random.split(jax.random.key(seed))
    X = jax.random.normal(kx, (2 * n, d))
    Y = jnp.tanh(X @ jax.random.normal(kt, (d,)) / jnp.sqrt(d))[:, None]
    return X[:n], Y[:n], X[n:], Y[n:]


def _programs(n: int):
    X, Y, Xt, Yt = _data(n, 8)
    Xc, Yc, _, _ = _data(n, 16, seed=1)
    act = fj.Erf()
    fcn = fj.FCN(width=8.0, sigma_w2=1.3, sigma_a2=0.8, noise=0.02, activation=act)
    deep = fj.FCN(width=16.0, sigma_w2=2.0, sigma_a2=1.0, noise=0.02, activation=act, depth=3)
    cnn = fj.PatchCNN(width=8.0, sigma_w2=1.3, sigma_a2=0.8, noise=0.02, patch_size=4)
    widths = jnp.asarray([64.0, 16.0, 4.0])

    def loss(theta):
        net = eqx.tree_at(lambda m: (m.noise, m.sigma_w2), fcn, (theta[0], theta[1]))
        return fj.predict(fj.solve(net, X, Y), Xt, Yt).test_error

    grad = jax.jit(jax.value_and_grad(loss))
    theta = jnp.asarray([0.02, 1.3])
    return {
        "solve, erf FCN (depth 1, d = 8)": (lambda: fj.solve(fcn, X, Y), fcn, X, Y),
        "solve, erf FCN (depth 3, d = 8)": (lambda: fj.solve(deep, X, Y), deep, X, Y),
        "solve, erf PatchCNN (S = 4, d = 16)": (lambda: fj.solve(cnn, Xc, Yc), cnn, Xc, Yc),
        "sweep path, erf FCN (3 widths)": (
            lambda: fj.sweep(fcn, X, Y, widths, Xt, Yt, schedule="path"),
            None,
            None,
            None,
        ),
        "value_and_grad of the test error": (lambda: grad(theta), None, None, None),
    }


def _ops(net, X, Y) -> int | None:
    if net is None:
        return None
    lowered = eqx.filter_jit(fj.solve).lower(net, X, Y)
    return sum(1 for line in lowered.as_text().splitlines() if " = " in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="", help="run the programs whose name contains this")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, fls_jax from")
    print(f"  {fj.__file__}, n = {args.n}, best / median of {args.repeat}")
    print(f"{'program':38s} {'ops':>6s} {'first call':>16s} {'run':>7s} {'compile':>16s}")
    for name, (call, net, X, Y) in _programs(args.n).items():
        if args.only not in name:
            continue
        firsts, runs = [], []
        for _ in range(args.repeat):
            jax.clear_caches()
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            t1 = time.perf_counter()
            jax.block_until_ready(call())
            t2 = time.perf_counter()
            firsts.append(t1 - t0)
            runs.append(t2 - t1)
        over = [f - r for f, r in zip(firsts, runs, strict=True)]
        ops = _ops(net, X, Y)
        print(
            f"{name:38s} {ops if ops is not None else '':>6} "
            f"{min(firsts):6.2f} / {statistics.median(firsts):6.2f} s "
            f"{min(runs):6.3f}  {min(over):6.2f} / {statistics.median(over):6.2f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
