"""The m-output mixture's effective draws over random keys (SPEC §5).

    python benchmarks/output_mixture_keys.py [--m 10] [--keys 18]

`renormalise_outputs_cost.py`'s task (digits, one-hot, the first m outputs, n = 256, an erf FCN
at C = 16, σ² = 0.01) with `method="mixture"` and its default 16384 draws, once per key
0 … keys − 1. Printed per key: `effective_draws`, `dropped_draws`, `converged` (which needs
100 effective draws), log Z and the test error; then the median and the range of the
effective draws. One key's flag says little where the importance weights are heavy-tailed:
run it on two versions back to back (``PYTHONPATH`` on a git worktree) to compare them.
About 2 minutes at m = 10 on 2 cores.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=10)
    parser.add_argument("--keys", type=int, default=18)
    args = parser.parse_args()
    print(f"# {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')} {fj.__file__}")
    task = fj.datasets.digits(n=256, n_test=200, labels="onehot", seed=0)
    X, X_test = np.asarray(task.X), np.asarray(task.X_test)
    Y, Y_test = np.asarray(task.Y)[:, : args.m], np.asarray(task.Y_test)[:, : args.m]

    @jax.jit
    def mixture(key):
        net = fj.FCN(16.0, 1.0, 1.0, 0.01, fj.Erf())
        r = fj.renormalise(net, X, Y, X_test, Y_test, method="mixture", key=key)
        return r.effective_draws, r.dropped_draws, r.converged, r.log_evidence, r.test_error

    effective = []
    for seed in range(args.keys):
        ess, dropped, ok, log_z, error = mixture(jax.random.key(seed))
        effective.append(float(ess))
        print(
            f"m = {args.m}, key {seed:2d}: effective {float(ess):8.1f}, dropped {int(dropped)}, "
            f"converged {bool(ok)}, log Z {float(log_z):.4f}, E_test {float(error):.7f}",
            flush=True,
        )
    print(
        f"effective draws: median {np.median(effective):.1f}, range {min(effective):.1f}–"
        f"{max(effective):.1f}, {sum(e >= 100 for e in effective)} of {args.keys} keys ≥ 100"
    )


if __name__ == "__main__":
    main()
