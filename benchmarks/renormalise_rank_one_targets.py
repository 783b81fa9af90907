"""`fj.renormalise`'s m-output saddle where an output direction has no target power (SPEC §5).

    python benchmarks/renormalise_rank_one_targets.py

A linear FCN (d = 4) on n = 60 inputs, m = 2 or 3 outputs, targets Y = y cᵀ of rank one: along
c the task y = x₁ + (x₂² − 1)/2, and none along the m − 1 directions orthogonal to c. Each is
run twice: with c a random unit vector ("rotated") and with c = e₁ ("axes").

The reference is independent of the package. In the axes, U* = diag(u₁, u₂, …, u₂) by symmetry:
S = k(tr U − log det U − m) + ½ Σ_i (y_iᵀ M_i⁻¹ y_i + log det M_i), M_i = λ_i U + σ² I,
separates over the outputs at diagonal U. Each u_j solves the scalar equation
u dS/du = ku − (k − d/2) − ½ Σ_i σ²/(λ_i u + σ²) − ½ Σ_i ŷ_i² λ_i u/(λ_i u + σ²)² = 0
over K's d non-zero modes (K = σ_w² XXᵀ/d from the d×d Gram in NumPy), written without the
cancellation of k(u − 1) + d/2 and bisected in log u to rounding (`_scalar_output_scale` of
`tests/test_renorm_matrix.py`, whose test uses it too). At C ≤ d the powerless
outputs' u₂ falls with σ² (C = d: u₂ ~ σ; C < d: u₂ ~ σ²), which is what the saddle must resolve.

With ``--faint``: m = 2 and 3 outputs at C = 3 with targets (y, ε(0.3y + z), 0), ε from 0 to
10⁻⁴: the flag and the faint output's scale (`docs/renormalisation.md`, Limits).

With ``--network patch``: a linear PatchCNN (P = 2 patches of S = 4, d = 8, C = 4) with two
outputs, whose 4×4 scale over (patch, output) pairs is, in the axes, block-diagonal with the P×P
one-output scales of y and of 0 (the package's one-output path, P×P, as the reference): printed
are the largest error relative to the largest entry, and the zero-target block's relative to
its own largest entry (~σ).

Printed per σ²: whether the saddle converged, and Oᵀ U* O's errors against the reference: u₁'s
and u₂'s relative to themselves, and the largest entry's relative to u₁ (normwise). In the rotated
basis U* holds u₂ only to ~eps·u₁ (its entries are ~u₁): there the normwise error is the
measure. Run it on two versions back to back (``PYTHONPATH`` on a git worktree). About a minute
per mode on 2 cores.
"""

import argparse
import functools
import platform
import sys
import time
import warnings
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_renorm_matrix import _scalar_output_scale  # noqa: E402


NOISES = (1e-2, 1e-6, 1e-8, 1e-10, 1e-12)
SIGMA_W2 = 1.3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", type=float, nargs="+", default=[4.0, 3.0])
    parser.add_argument("--ms", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--network", choices=["fcn", "patch"], default="fcn")
    parser.add_argument("--faint", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"# {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')} {fj.__file__}")
    if args.network == "patch":
        return patches()
    if args.faint:
        return faint()
    rng = np.random.default_rng(0)
    n, d = 60, 4
    X = rng.standard_normal((n, d))
    y = X[:, 0] + 0.5 * (X[:, 1] ** 2 - 1)
    X_test = rng.standard_normal((10, d))

    @functools.partial(jax.jit, static_argnums=3)
    def saddle(Y, noise, width, m):
        del m  # (Y's shape: one program per m)
        net = fj.FCN(width, SIGMA_W2, 1.0, noise, fj.Linear())
        r = fj.renormalise(net, X, Y, X_test, method="saddle")
        return r.scale_matrix, r.converged

    for m in args.ms:
        O = np.linalg.qr(np.random.default_rng(5).standard_normal((m, m)))[0]
        axes = np.zeros((n, m))
        axes[:, 0] = y
        for C in args.widths:
            print(f"m = {m}, C = {C:g}: | rotated, axes: converged; error of u₁, u₂, |ΔU|/u₁")
            for noise in NOISES:
                u1 = _scalar_output_scale(X, y, noise, C, SIGMA_W2)
                u2 = _scalar_output_scale(X, 0 * y, noise, C, SIGMA_W2)
                line = f"  σ² {noise:.0e}: u₁ {u1:.6e}, u₂ {u2:.6e}"
                for name, Y, back in (("rotated", np.outer(y, O[:, 0]), O), ("axes", axes, None)):
                    U, ok = saddle(Y, noise, C, m)
                    U = np.asarray(U) if back is None else back.T @ np.asarray(U) @ back
                    errors = (
                        abs(U[0, 0] - u1) / u1,
                        np.max(np.abs(np.diag(U)[1:] - u2)) / u2,
                        np.max(np.abs(U - np.diag([u1] + [u2] * (m - 1)))) / u1,
                    )
                    line += f" | {name} {'ok' if ok else 'FLAGGED'} " + " ".join(
                        f"{e:.1e}" for e in errors
                    )
                print(line, flush=True)


def faint():
    """Three outputs at C = 3: y, ε(0.3y + z) (z standard normal) and 0; per σ² and ε, the
    flag and U*₂₂ (the faint output's scale; u₂ ~ σ² where ε is small)."""
    rng = np.random.default_rng(0)
    n, d = 60, 4
    X = rng.standard_normal((n, d))
    y = X[:, 0] + 0.5 * (X[:, 1] ** 2 - 1)
    X_test = rng.standard_normal((10, d))
    z = rng.standard_normal(n)

    @jax.jit
    def saddle(Y, noise):
        net = fj.FCN(3.0, SIGMA_W2, 1.0, noise, fj.Linear())
        r = fj.renormalise(net, X, Y, X_test, method="saddle")
        return r.scale_matrix, r.converged

    print("C = 3, targets (y, ε(0.3y + z)[, 0]): flag and U*₂₂ per ε")
    for m in (2, 3):
        for noise in (1e-6, 1e-8, 1e-10):
            row = []
            for eps in (0.0, 1e-16, 1e-14, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4):
                Y = np.zeros((n, m))
                Y[:, 0], Y[:, 1] = y, eps * (0.3 * y + z)
                U, ok = saddle(Y, noise)
                row.append(f"{eps:.0e} {'ok' if ok else 'FLAGGED'} {float(U[1, 1]):.3e}")
            print(f"  m = {m}, σ² {noise:.0e}: " + " | ".join(row), flush=True)


def patches():
    rng = np.random.default_rng(0)
    n, d, S = 60, 8, 4
    X = rng.standard_normal((n, d))
    y = X[:, 0] + 0.5 * (X[:, 4] ** 2 - 1)
    X_test = rng.standard_normal((10, d))
    P = d // S
    basis = np.array([[np.cos(0.9), -np.sin(0.9)], [np.sin(0.9), np.cos(0.9)]])
    rotation = np.kron(np.eye(P), basis)  # (patch, output) index patch·m + output

    @jax.jit
    def saddle(Y, noise):
        net = fj.PatchCNN(4.0, SIGMA_W2, 1.0, noise, fj.Linear(), patch_size=S)
        r = fj.renormalise(net, X, Y, X_test, method="saddle")
        return r.scale_matrix, r.converged

    print("PatchCNN, P = 2, S = 4, C = 4, m = 2 | rotated, axes: converged; |ΔU|/|U|, zero block's")
    for noise in NOISES:
        ref = np.zeros((P, 2, P, 2))
        for o, t in enumerate((y, 0 * y)):
            U, ok = saddle(t[:, None], noise)
            assert ok, "the one-output reference is flagged"
            ref[:, o, :, o] = U
        ref = ref.reshape(2 * P, 2 * P)
        small = np.max(np.abs(ref[1::2, 1::2]))
        line = f"  σ² {noise:.0e}: zero block's largest {small:.3e}"
        for name, Y, back in (
            ("rotated", np.outer(y, basis[:, 0]), rotation),
            ("axes", np.stack([y, 0 * y], 1), None),
        ):
            U, ok = saddle(Y, noise)
            U = np.asarray(U) if back is None else back.T @ np.asarray(U) @ back
            error = np.abs(U - ref)
            line += f" | {name} {'ok' if ok else 'FLAGGED'} {error.max() / np.abs(ref).max():.1e}"
            line += f" {error[1::2, 1::2].max() / small:.1e}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
