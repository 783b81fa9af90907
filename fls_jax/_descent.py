"""Descent on the free energy, to bring Newton within reach at narrow widths (SPEC §3).

Far from the solution, neither default root finder of the EoS does well at narrow widths of
one hidden layer: Anderson acceleration wanders (it has no merit function) and damped
Newton's line search on ‖R‖ crawls (its direction is poor there, and every step costs a
Krylov solve). The EoS are the stationary points of the free energy F, which is bounded
below and grows without bound as Σ → 0 or ∞ at finite width, so a descent method on F has
a merit function that the physics supplies. A quasi-Newton (BFGS) descent on F brings the
iterate near a minimum in a few hundred gradient evaluations, each one costing about one
residual, and hands over to Newton there, where its steps are full and cheap. Where F has
several minima (narrow widths, several learnable directions) a descent that jumps straight
from the GP limit to the target width can end in another one than the continuation in 1/C
reaches, so `solve` runs it only from the continuation's converged points (`_escalation`).
"""

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jaxtyping import Array

from ._linalg import _unpack, spd_inverse_logdet
from ._rootfind import _fro


_PSD = lx.positive_semidefinite_tag
_Direct = optx.FunctionInfo.EvalGradHessian


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
    rows, cols = np.triu_indices(S)
    Lam = _unpack(y, S)
    G = _unpack(jnp.where(rows == cols, grad, 0.5 * grad), S)
    return -2.0 * Lam @ G @ Lam, Lam


def _whitening(y: Array) -> Array:
    """The initial inverse Hessian of the descent: the packed matrix of g ↦ 2 Λ G Λ, where
    G is the symmetric gradient that the packed gradient g stands for and Λ = unpack(y).

    Near a solution the Hessian of f = F/C in Λ is ½ Σ (−J)[dΛ] Σ, J = ∂R/∂Λ the EoS
    Jacobian (from G = −½ Σ R Σ, `_residual_from_gradient`), so this matrix turns it into
    −J: the first step is Λ + R, the plain fixed-point step, with a line search on F, and
    what BFGS has to learn is −J's spread (κ = 468 on the digits at C = 4) rather than that
    times Σ ⊗ Σ's (κ = 2·10⁷ in the packed coordinates themselves, Σ's eigenvalues spanning
    575×). Entry (ij, kl): Λ_ik Λ_jl + Λ_il Λ_jk. It is positive definite: the inverse of
    the Hessian of −log det Λ, in the packed coordinates."""
    S = _side(y.shape[0])
    r, c = np.triu_indices(S)
    L = _unpack(y, S)
    return L[r][:, r] * L[c][:, c] + L[r][:, c] * L[c][:, r]


class FreeEnergyBFGS(optx.AbstractBFGS):
    """BFGS on f = F/C in the packed first-layer precision, stopped once the EoS residual it
    implies is within `handover` of the solution, for a root finder to finish (SPEC §3).

    For one hidden layer only: the stopping rule reads the residual off the gradient,
    R = −2 Λ (∂f/∂Λ) Λ, and stops when ‖R‖_F ≤ `handover` ‖Λ‖_F, the relative residual of
    [`fls_jax.Solution`][]. It also stops, as `optx.BFGS` does, when both the iterate and f
    stop changing (relative `rtol`, absolute `atol`). `solve`'s default chain for one
    hidden layer (`solver="descent"`) runs it where Anderson acceleration has failed and
    starts damped Newton from its end point (in `solve`'s `solver` sequence, a minimiser
    hands over to the root finder after it). A descent from far away can end in a different
    local minimum of F than the continuation in 1/C reaches, so `solve` starts it only from
    the continuation's converged points, once a stage has failed (`docs/performance.md`).

    **Arguments:**

    - `handover`: the relative residual at which to stop.
    - `whiten`: start from the inverse Hessian g ↦ 2 Λ G Λ at the first point (`_whitening`)
      instead of the identity. On an erf FCN on the digits' pixels (n = 256) it cut the
      default chain from 150 / 295 s to 29 / 39 s at C = 4 / 2; on the erf PatchCNN (S = 16,
      n = 256, C = 4) it led the continuation to another solution of the EoS, of higher F
      (−54.342 against −54.549), so it is off by default (`benchmarks/RESULTS.md`). `solve`'s
      `solver="whitened-descent"` is the default chain with it on.
    - `rtol`, `atol`: the Cauchy tolerances of `optx.BFGS` (by default off).
    - `norm`, `use_inverse`, `descent`, `search`, `verbose`: as in `optx.BFGS` (the max norm
      for the Cauchy test, the inverse-Hessian update, a Newton descent with a Cholesky
      solve, a backtracking Armijo line search, and no printing).
    """

    rtol: float = 0.0
    atol: float = 0.0
    handover: float = 1e-2
    whiten: bool = False
    norm: Callable[..., Any] = optx.max_norm
    use_inverse: bool = True
    descent: optx.AbstractDescent = optx.NewtonDescent(linear_solver=lx.Cholesky())
    search: optx.AbstractSearch = optx.BacktrackingArmijo()
    verbose: Callable[..., None] = _quiet

    # The curvature is a dense S(S+1)/2 matrix (`lx.MatrixLinearOperator`) rather than
    # optimistix's pytree operator, whose input and output structures differ inside
    # `jax.shard_map` (the output's carries the mesh) and fail lineax's symmetry check in a
    # sharded `sweep`. Same BFGS update of the inverse (or direct) Hessian.

    def init_hessian(self, y, f, grad):
        info = optx.FunctionInfo.EvalGradHessianInv if self.use_inverse else _Direct
        if not self.whiten:
            H0 = jnp.eye(y.shape[0], dtype=y.dtype)  # its own inverse
        elif self.use_inverse:
            H0 = _whitening(y)
        else:
            H0 = spd_inverse_logdet(_whitening(y))[0]
        return info(f, grad, lx.MatrixLinearOperator(H0, _PSD)), None

    def update_hessian(self, y, y_eval, f_info, f_eval_info, hessian_update_state):
        s = y_eval - y
        g = f_eval_info.grad - f_info.grad
        sg = jnp.dot(s, g)
        # No update where the curvature condition fails (and on the first step, where the
        # stored gradient is zero): the old matrix stays.
        skip = ~(sg > jnp.finfo(sg.dtype).eps)
        rho = jnp.where(skip, 0.0, 1.0 / jnp.where(skip, 1.0, sg))
        if self.use_inverse:
            H = f_info.hessian_inv.as_matrix()
            Hg = H @ g
            # (I − ρ s gᵀ) H (I − ρ g sᵀ) + ρ s sᵀ
            new = (
                H
                - rho * (jnp.outer(s, Hg) + jnp.outer(Hg, s))
                + (rho**2 * jnp.dot(g, Hg) + rho) * jnp.outer(s, s)
            )
            info = optx.FunctionInfo.EvalGradHessianInv
        else:
            B = f_info.hessian.as_matrix()
            Bs = B @ s
            sBs = jnp.dot(s, Bs)
            curv = jnp.where(skip, 0.0, 1.0 / jnp.where(skip, 1.0, sBs))
            new = B + rho * jnp.outer(g, g) - curv * jnp.outer(Bs, Bs)
            info = _Direct
        operator = lx.MatrixLinearOperator(0.5 * (new + new.T), _PSD)
        return info(f_eval_info.f, f_eval_info.grad, operator), None

    def terminate(self, fn, y, args, options, state, tags):
        done, result = super().terminate(fn, y, args, options, state, tags)
        return done | _handed_over(self.handover, y, state), result


def _handed_over(handover: float, y: Array, state) -> Array:
    """The descent's stopping rule, on an optimistix quasi-Newton state at y:
    ‖R‖_F ≤ `handover` ‖Λ‖_F with R read off the gradient (`_residual_from_gradient`)."""
    R, Lam = _residual_from_gradient(y, state.f_info.grad)
    # Before the first step the state holds a zero gradient, not the one at y.
    return ~state.first_step & (_fro(R) <= handover * _fro(Lam))
