"""Descent on the free energy, to bring Newton within reach at narrow widths (SPEC §3).

Far from the solution, neither default root finder of the EoS does well at narrow widths of
one hidden layer: Anderson acceleration wanders (it has no merit function) and damped
Newton's line search on ‖R‖ crawls (its direction is poor there, and every step costs a
Krylov solve). The EoS are the stationary points of the free energy F, which is bounded
below and grows without bound as Σ → 0 or ∞ at finite width, so a descent method on F has
a merit function that the physics supplies. A quasi-Newton (BFGS) descent on F brings the
iterate near a minimum in a few hundred gradient evaluations, each one costing about one
residual, and hands over to Newton there, where its steps are full and cheap. Where F has
several minima (narrow widths, several learnable directions) a descent that jumps straight to
the target width can end in another one than the continuation in 1/C reaches, which is why
it is `solve`'s `solver="descent"` and not the default.
"""

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jaxtyping import Array

from ._linalg import _unpack
from ._rootfind import _fro


def _quiet(**kwargs) -> None:
    del kwargs


def _side(N: int) -> int:
    """S from the length S(S+1)/2 of a packed upper triangle."""
    return (round((8 * N + 1) ** 0.5) - 1) // 2


def _residual_from_gradient(y: Array, grad: Array) -> tuple[Array, Array]:
    """(R, Λ) for one hidden layer from the gradient of f = F/C in the packed precision y.

    With Σ = Λ⁻¹, ∂f/∂Σ = R/2 (`eos_residual`) and dΣ = −Σ dΛ Σ, so the symmetric gradient
    in Λ is G = −½ Σ R Σ, i.e. R = −2 Λ G Λ. A packed off-diagonal entry stands for two
    entries of Λ, so its derivative is 2 G_ij.
    """
    S = _side(y.shape[0])
    rows, cols = jnp.triu_indices(S)
    Lam = _unpack(y, S)
    G = _unpack(jnp.where(rows == cols, grad, 0.5 * grad), S)
    return -2.0 * Lam @ G @ Lam, Lam


class FreeEnergyBFGS(optx.AbstractBFGS):
    """BFGS on f = F/C in the packed first-layer precision, stopped once the EoS residual it
    implies is within `handover` of the solution, for a root finder to finish (SPEC §3).

    For one hidden layer only: the stopping rule reads the residual off the gradient,
    R = −2 Λ (∂f/∂Λ) Λ, and stops when ‖R‖_F ≤ `handover` ‖Λ‖_F, the relative residual of
    [`fls_jax.Solution`][]. It also stops, as `optx.BFGS` does, when both the iterate and f
    stop changing (relative `rtol`, absolute `atol`). `solve(..., solver="descent")` runs
    it where Anderson acceleration has failed and starts damped Newton from its end point
    (in `solve`'s `solver` sequence, a minimiser hands over to the root finder after it).
    A descent from far away can end in a different local minimum of F than the continuation
    in 1/C reaches (`docs/performance.md`).

    **Arguments:**

    - `handover`: the relative residual at which to stop.
    - `rtol`, `atol`: the Cauchy tolerances of `optx.BFGS` (by default off).
    """

    rtol: float = 0.0
    atol: float = 0.0
    handover: float = 1e-2
    norm: Callable[..., Any] = optx.max_norm
    use_inverse: bool = True
    descent: optx.AbstractDescent = optx.NewtonDescent(linear_solver=lx.Cholesky())
    search: optx.AbstractSearch = optx.BacktrackingArmijo()
    verbose: Callable[..., None] = _quiet

    def terminate(self, fn, y, args, options, state, tags):
        done, result = super().terminate(fn, y, args, options, state, tags)
        R, Lam = _residual_from_gradient(y, state.f_info.grad)
        # Before the first step the state holds a zero gradient, not the one at y.
        close = ~state.first_step & (_fro(R) <= self.handover * _fro(Lam))
        return done | close, result
