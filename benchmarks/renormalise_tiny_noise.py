"""`fj.renormalise` with two outputs and with a linear PatchCNN at tiny σ² (SPEC §5).

    python benchmarks/renormalise_tiny_noise.py

Both kernels are rank-deficient: a linear FCN (d = 4) and a linear PatchCNN (P = 2 patches of
S = 3, d = 6), each on n = 60 inputs, with targets partly outside the kernel's span. The
likelihood's part on the null modes is then ~1/σ² and the same at every scale U.

For σ² from 10⁻⁶ down to 10⁻¹² the script prints:
- the m×m saddle's U* (two outputs, C = 4) and whether it converged;
- the m×m mixture's E[tr U/2] and its σ_w²-derivative, in forward and reverse mode (the
  mixture is differentiated at fixed draws, so differences of it are not a reference);
- the PatchCNN's P×P saddle U* and whether it converged.

Where the scale moves with σ² by more than ~10⁻⁸, or a run is flagged, digits are lost. Run it
on two versions back to back, e.g. with ``PYTHONPATH`` on a git worktree. About 1 minute on 2
cores.
"""

import functools
import platform
import time
import warnings

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


NOISES = (1e-6, 1e-8, 1e-9, 1e-10, 1e-12)


def main():
    warnings.simplefilter("ignore")
    print(f"# {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')} {fj.__file__}")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 4))
    Y = np.stack([X[:, 0] + 0.5 * (X[:, 1] ** 2 - 1), X[:, 2] - 0.3 * X[:, 3] ** 2], axis=1)
    X_test = rng.standard_normal((10, 4))

    @functools.partial(jax.jit, static_argnums=2)
    def outputs(sigma_w2, noise, method):
        net = fj.FCN(4.0, sigma_w2, 1.0, noise, fj.Linear())
        r = fj.renormalise(net, X, Y, X_test, method=method, key=jax.random.key(0))
        return r.scale, (r.scale_matrix, r.converged)

    print("two outputs, C = 4: the saddle's U*")
    for noise in NOISES:
        U, ok = outputs(1.3, noise, "saddle")[1]
        print(f"  σ² {noise:.0e}: U* {np.asarray(U).ravel()[[0, 1, 3]]}, converged {bool(ok)}")
    print("two outputs, C = 4: the mixture's E[tr U/2] and ∂/∂σ_w² (forward, reverse)")
    for noise in NOISES:
        scale, (_, ok) = outputs(1.3, noise, "mixture")
        fwd = jax.jacfwd(lambda a, s=noise: outputs(a, s, "mixture")[0])(1.3)
        rev = jax.grad(lambda a, s=noise: outputs(a, s, "mixture")[0])(1.3)
        print(
            f"  σ² {noise:.0e}: {float(scale):.12f}, converged {bool(ok)}; "
            f"{float(fwd): .8e}, {float(rev): .8e}"
        )

    Xp = rng.standard_normal((60, 6))
    Yp = Xp[:, 0] + 0.5 * (Xp[:, 4] ** 2 - 1)

    @jax.jit
    def patches(noise):
        net = fj.PatchCNN(4.0, 1.3, 1.0, noise, fj.Linear(), patch_size=3)
        r = fj.renormalise(net, Xp, Yp, Xp[:5], method="saddle")
        return r.scale_matrix, r.converged

    print("linear PatchCNN, P = 2, n = 60 > d = 6, C = 4: the saddle's U*")
    for noise in NOISES:
        U, ok = patches(noise)
        print(f"  σ² {noise:.0e}: U* {np.asarray(U).ravel()[[0, 1, 3]]}, converged {bool(ok)}")


if __name__ == "__main__":
    main()
