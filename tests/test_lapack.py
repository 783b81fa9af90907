"""No batched LAPACK call in the CPU programs of a sweep over widths (`fls_jax._linalg`).

jaxlib 0.10's CPU LAPACK kernels split a batched call over XLA's thread pool and wait for
the pieces; when as many such calls run at once as the pool has threads, the program hangs
at 0 % CPU. It happened three times here (a PatchCNN's importance sampler, m outputs'
blocks, a vmapped reverse-mode probe). `vmap` over widths turns every factorisation in a
solve into a batched call unless it is routed through `_linalg`, where on CPU it runs as a
loop of unbatched ones. These tests lower each entry point's `vmap(grad)` over widths (no
compilation, so they cannot hang themselves) and list the LAPACK calls with batch
dimensions: there must be none."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fls_jax as fj


pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU-only hazard")

_rng = np.random.default_rng(0)
X, X_TEST = _rng.standard_normal((8, 4)), _rng.standard_normal((3, 4))
Y, Y_TEST = _rng.standard_normal(8), _rng.standard_normal(3)
Y2, Y2_TEST = _rng.standard_normal((8, 2)), _rng.standard_normal((3, 2))


def _batched_lapack_calls(f, *args) -> list[str]:
    """The LAPACK custom calls in f's CPU program whose first operand is a stack of matrices."""
    text = jax.jit(f).lower(*args).as_text()
    calls = re.findall(r"custom_call @(lapack_\w+)\(.*num_batch_dims = \"(\d+)\"", text)
    assert calls, "no LAPACK call found: the pattern no longer matches the lowered text"
    return [target for target, batch_dims in calls if int(batch_dims) > 0]


def _solved(network):
    return fj.predict(fj.solve(network, X, Y), X_TEST, Y_TEST).test_error


def _renormalised(network, Y, Y_test, **kwargs):
    return fj.renormalise(network, X, Y, X_TEST, Y_test, draws=64, **kwargs).test_error


CASES = {
    # the implicit adjoint by GMRES (its Hessenberg least squares: a LAPACK QR per cycle)
    "one hidden layer": lambda w: _solved(fj.FCN(w, 1.0, 1.0, 0.1, fj.Erf())),
    # Newton–Krylov steps by GMRES, forward and adjoint
    "two hidden layers": lambda w: _solved(fj.FCN(w, 2.0, 1.0, 0.1, fj.Erf(), depth=2)),
    # m×m blocks per eigen-direction, the sampler's Z eigendecompositions (64 draws)
    "outputs mixture": lambda w: _renormalised(fj.FCN(w, 1.3, 0.8, 0.05, fj.Linear()), Y2, Y2_TEST),
    # V*^{1/2} per layer, the Hessian's log-determinant, BFGS's implicit adjoint
    "outputs saddle, depth 2": lambda w: _renormalised(
        fj.FCN(w, 1.0, 1.0, 0.1, fj.Linear(), depth=2), Y2, Y2_TEST, method="saddle"
    ),
    # a P×P scale: one n×n Cholesky factorisation per draw
    "patch mixture": lambda w: _renormalised(
        fj.PatchCNN(w, 1.0, 1.0, 0.1, fj.Linear(), patch_size=2), Y, Y_TEST
    ),
}


# The default run keeps one solve and one mixture; the other three are in the slow tier.
_SLOW = ("two hidden layers", "outputs mixture", "outputs saddle, depth 2")


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in _SLOW else c for c in CASES]
)
def test_no_batched_lapack_call_in_a_vmapped_gradient(case):
    """Measured before the fixes: batched `geqrf`/`ormqr`/`trsm` (GMRES's QR) in both
    solves; `syevd` (the saddle's V*^{1/2}) in both mixtures; `getrf`/`trsm` (slogdet,
    optimistix's LU) in the saddle's gradient; `potrf`/`trsm` in the outputs' blocks."""
    f = jax.vmap(jax.grad(CASES[case]))
    assert _batched_lapack_calls(f, jnp.array([8.0, 16.0])) == []
