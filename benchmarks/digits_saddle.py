"""Real data: the P×P saddle point of `fj.renormalise` and the EoS on the digits task.

    python benchmarks/digits_saddle.py

The task and networks of `theory_vs_sampling.py --cases digits --n 128 --n-test 500`
(PatchCNN, S = 16, P = 4, σ² = 0.01, the parity of scikit-learn's digits): per activation and
width, the test error, train error and mean ensemble variance of the P×P saddle point (the
local kernel renormalisation, `docs/renormalisation.md`) and of the EoS (`fj.sweep`). The
sampled networks for comparison are in `benchmarks/logs/theory_vs_sampling_digits_*_cpu.log`.
"""

import platform

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


def main() -> None:
    t = fj.datasets.digits(128, 500, labels="parity", patch_side=4)
    widths = np.array([4.0, 16.0, 64.0])
    print(f"# {platform.processor() or platform.machine()}, jax {jax.__version__}")
    print(
        f"{'case':>8} {'C':>4} | {'saddle: test':>12} {'train':>9} {'var':>9} | "
        f"{'EoS: test':>10} {'train':>9} {'var':>9}"
    )
    for act in (fj.Linear(), fj.Erf()):
        net = fj.PatchCNN(1.0, 1.0, 1.0, 0.01, act, patch_size=16)
        sols, preds = fj.sweep(net, t.X, t.Y, widths, t.X_test, t.Y_test)
        for j, C in enumerate(widths):
            r = fj.renormalise(
                fj.PatchCNN(float(C), 1.0, 1.0, 0.01, act, patch_size=16),
                t.X,
                t.Y,
                t.X_test,
                t.Y_test,
                method="saddle",
            )
            ok = bool(r.converged) and bool(sols.converged[j])
            print(
                f"{type(act).__name__:>8} {C:4g} | {float(r.test_error):12.4g} "
                f"{float(r.train_error):9.4g} {float(np.mean(r.variance)):9.4g} | "
                f"{float(preds.test_error[j]):10.4g} {float(preds.train_error[j]):9.4g} "
                f"{float(np.mean(preds.variance[j])):9.4g}" + ("" if ok else "  (not converged)")
            )


if __name__ == "__main__":
    main()
