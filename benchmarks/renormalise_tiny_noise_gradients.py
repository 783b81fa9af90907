"""Derivatives of `fj.renormalise` in the hyper-parameters at tiny σ², on rank-deficient
kernels (SPEC §5), against the same problem restricted to the kernel's range.

    python benchmarks/renormalise_tiny_noise_gradients.py

Each case has n = 60 training inputs and a kernel of rank r < n, with targets partly outside
its span. With B an orthonormal basis of that span, the problem on the r "inputs" BᵀX with
targets BᵀY has the same predictions, and a log evidence that differs by the likelihood's
part on the null modes, ½ Σ (y_ρ²/σ² + log 2πσ²), which depends on neither σ_w² nor C. Its
kernel has full rank and eigenvalues far above σ², so its derivatives keep their digits: it
is the reference. The cases:

- a linear FCN, d = 4 (r = 4), one output, both methods; a depth-2 one (saddle);
- the same with two outputs (the 2×2 scale), both methods;
- a linear PatchCNN, P = 2 patches of S = 2 (r = 4), both methods;
- a ReLU FCN on d = 1 inputs: its kernel is that of a linear FCN on (max(x, 0), max(−x, 0))
  (r = 2), which is then restricted to its range.

For σ² from 10⁻⁶ to 10⁻¹⁴ it prints the largest relative error of ∂ log Z/∂(σ_w², C) in
reverse and forward mode, and ∂(Σ mean)/∂σ_w² (mean at 5 test points) by reverse mode beside
the reference's: that derivative's true value falls like σ², so an absolute error that grows
like 1/σ² is all that is left of it where the two differ. C = 6, σ_w² = 1.3, 2048 draws.
Run it on two versions back to back, e.g. with ``PYTHONPATH`` on a git worktree. About
3 minutes on 2 cores.
"""

import platform
import time
import warnings

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


NOISES = (1e-6, 1e-10, 1e-12, 1e-14)


def network(kind, sigma_w2, width, noise, depth=1):
    common = dict(width=width, sigma_w2=sigma_w2, sigma_a2=1.0, noise=noise)
    if kind == "cnn":
        return fj.PatchCNN(patch_size=2, activation=fj.Linear(), **common)
    activation = fj.ReLU() if kind == "relu" else fj.Linear()
    return fj.FCN(activation=activation, depth=depth, **common)


def main():
    warnings.simplefilter("ignore")
    print(f"# {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')} {fj.__file__}")
    rng = np.random.default_rng(0)
    n, d = 60, 4
    X = rng.standard_normal((n, d))
    X_test = rng.standard_normal((5, d))
    y1 = X[:, 0] + 0.5 * (X[:, 1] ** 2 - 1)
    Y2 = np.stack([y1, X[:, 2] * X[:, 3] + X[:, 1]], axis=1)
    x1, x1_test = X[:, :1], X_test[:, :1]

    def relu_features(x):  # ReLU's kernel on d = 1 is the linear one on these, d = 2
        return np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=1)

    def range_basis(Z):
        U, sv, _ = np.linalg.svd(Z, full_matrices=False)
        return U[:, sv > 1e-10 * sv[0]]

    B4, B2 = range_basis(X), range_basis(relu_features(x1))
    cases = [  # name, kind, depth, method, (X, Y, X_test), (reference's X, Y, X_test)
        ("FCN m=1", "fcn", 1, "mixture", (X, y1, X_test), (B4.T @ X, B4.T @ y1, X_test)),
        ("FCN m=1", "fcn", 1, "saddle", (X, y1, X_test), (B4.T @ X, B4.T @ y1, X_test)),
        ("FCN L=2", "fcn", 2, "saddle", (X, y1, X_test), (B4.T @ X, B4.T @ y1, X_test)),
        ("FCN m=2", "fcn", 1, "saddle", (X, Y2, X_test), (B4.T @ X, B4.T @ Y2, X_test)),
        ("FCN m=2", "fcn", 1, "mixture", (X, Y2, X_test), (B4.T @ X, B4.T @ Y2, X_test)),
        ("PatchCNN", "cnn", 1, "saddle", (X, y1, X_test), (B4.T @ X, B4.T @ y1, X_test)),
        ("PatchCNN", "cnn", 1, "mixture", (X, y1, X_test), (B4.T @ X, B4.T @ y1, X_test)),
        (
            "ReLU d=1",
            "relu",
            1,
            "saddle",
            (x1, y1, x1_test),
            (B2.T @ relu_features(x1), B2.T @ y1, relu_features(x1_test)),
        ),
    ]
    p = jnp.array([1.3, 6.0])  # (σ_w², C)
    print("| case | method | σ² | ∂log Z rev | ∂log Z fwd | ∂Σmean/∂σ_w² rev | reference | ok |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, kind, depth, method, data, ref_data in cases:
        ref_kind = "fcn" if kind == "relu" else kind
        for noise in NOISES:

            def outputs(q, data, kind, noise=noise, method=method, depth=depth):
                net = network(kind, q[0], q[1], noise, depth)
                Xd, Yd, Xt = data
                r = fj.renormalise(net, Xd, Yd, Xt, method=method, draws=2048)
                return jnp.stack([r.log_evidence, jnp.sum(r.mean)]), r.converged

            rev, ok = jax.jacrev(outputs, has_aux=True)(p, data, kind)
            fwd = jax.jacfwd(lambda q, data=data, kind=kind: outputs(q, data, kind)[0])(p)
            ref, ok_ref = jax.jacrev(outputs, has_aux=True)(p, ref_data, ref_kind)
            err_rev = float(jnp.max(jnp.abs(rev[0] - ref[0]) / jnp.abs(ref[0])))
            err_fwd = float(jnp.max(jnp.abs(fwd[0] - ref[0]) / jnp.abs(ref[0])))
            print(
                f"| {name} | {method} | {noise:.0e} | {err_rev:.1e} | {err_fwd:.1e} "
                f"| {float(rev[1, 0]):.3e} | {float(ref[1, 0]):.3e} | {bool(ok)}, {bool(ok_ref)} |",
                flush=True,
            )


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"# {time.perf_counter() - t0:.0f} s")
