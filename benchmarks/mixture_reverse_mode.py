"""The matrix mixture's reverse-mode gradient where a draw is dropped (stop 46's defect).

    python benchmarks/mixture_reverse_mode.py
    PYTHONPATH=/path/to/an/older/checkout python benchmarks/mixture_reverse_mode.py

A linear PatchCNN (P = 4 patches of 4, two outputs: a 8×8 scale, 36 free entries; n = 24,
d = 16, C = 12, σ_w² = 1.2, σ_a² = 0.9, σ² = 0.05), `method="mixture"` with 16384 draws and
key 1: one draw has an eigenvalue of Z beyond ±30 and weight 0. Prints the log evidence, the
ESS, the converged flag and d log Z / dσ_w² and d mean[0, 0] / dσ_w² by reverse mode
(`jax.grad`, alone and under `jax.jit`) and forward mode (`jax.jacfwd`, under `jax.jit`);
before stop 46 reverse mode without the outer `jit` was NaN. Seconds are the first call's,
compilation included. The first line names the package's path.
"""

import time

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


def main():
    print("#", fj.__file__)
    rng = np.random.default_rng(1)
    X, X_test = rng.standard_normal((24, 16)), rng.standard_normal((6, 16))
    beta = 2 * rng.standard_normal((16, 2)) / 4
    Y, Y_test = np.tanh(X @ beta), np.tanh(X_test @ beta)

    def solved(sigma_w2):
        net = fj.PatchCNN(12.0, sigma_w2, 0.9, 0.05, fj.Linear(), patch_size=4)
        key = jax.random.key(1)
        return fj.renormalise(net, X, Y, X_test, Y_test, method="mixture", draws=16384, key=key)

    r = solved(1.2)
    print(
        f"log Z {float(r.log_evidence):.12f}  ESS {float(r.effective_draws):.1f}  "
        f"converged {bool(r.converged)}"
    )
    for name, field in (("log Z", lambda r: r.log_evidence), ("mean[0,0]", lambda r: r.mean[0, 0])):
        for mode, derivative, outer in (
            ("reverse", jax.grad, False),
            ("reverse, jit", jax.grad, True),
            ("forward, jit", jax.jacfwd, True),
        ):
            f = derivative(lambda s, f=field: f(solved(s)))
            start = time.perf_counter()
            value = float((jax.jit(f) if outer else f)(1.2))
            seconds = time.perf_counter() - start
            print(f"d {name} / dσ_w²  {mode:>12}: {value: .15e}  ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
