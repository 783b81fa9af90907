"""Anderson-accelerated fixed-point iteration of the EoS: one residual per iteration (SPEC §3).

The EoS residuals are R(y) = G(y) − y with G the authors' fixed-point map (for one hidden
layer, G(Λ) = Σ₀⁻¹ − (1/C) ∂_Σ tr[A Q_f(Σ)]|_{Σ=Λ⁻¹}). Each evaluation costs one
factorisation of K_f plus kernel maps, the Cholesky-bound cost of an iteration; a Newton
step costs that plus a linear solve whose every Jacobian-vector product is two n×n×n matrix
products. The accelerated iteration needs more iterations than Newton but each is far
cheaper; `solve` uses it first and falls back to Newton where it stalls.
"""

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array

from ._linalg import _dense_solve
from ._rootfind import _AbstractResidualRootFinder, _fro, _where


class AbstractPreconditioner(eqx.Module):
    """A fixed linear map M applied to the residual by [`fls_jax.Anderson`][], which then
    iterates y ← y + β M R(y) (with M positive definite, its fixed points are the roots
    of R). Built once, at the start of each root find."""

    @abc.abstractmethod
    def build(self, fn, y, args, active: Array) -> Any:
        """M at the start point `y` of a root find of `fn` (optimistix's `fn(y, args)` →
        (R, aux)), as a callable (an `eqx.Module`: it lives in the solver state) mapping a
        residual to M times it; the identity where `active` (a traced bool) is false."""


class _AndersonState(eqx.Module):
    f: Any  # the mixed residual M R at the current iterate (R without a preconditioner)
    f_norm: Array  # ‖R‖_F, the true residual's norm
    dY: Array  # (m, N) iterate differences, newest in row `k % m`
    dF: Array  # (m, N) residual differences
    k: Array  # iterations done (number of valid history rows is min(k, m))
    best: Array  # the smallest ‖R‖ at the last halving of it
    stalled: Array  # iterations since ‖R‖ last fell below half of `best`
    beta: Array  # the current mixing β
    precondition: Any  # M (`AbstractPreconditioner.build`), or None
    result: optx.RESULTS


class Anderson(_AbstractResidualRootFinder):
    """Anderson acceleration (Walker–Ni type II) of y ← y + β R(y), as an optimistix solver.

    Each step evaluates the residual once: with the last `memory` differences ΔY of the
    iterates and ΔF of the residuals, γ = argmin ‖R(y_k) − ΔF γ‖ (a ridge-regularised least
    squares of size `memory`, each pair of differences divided by ‖ΔY‖) and
    y_{k+1} = y_k + β R(y_k) − (ΔY + β ΔF) γ. Where the new point leaves the domain (the
    residual is not finite: a precision not positive definite) or raises the residual more
    than `max_growth`-fold, the step is halved until it does neither, and the history
    restarts from the step taken.
    Stops when ‖R(y)‖_F ≤ atol + rtol ‖y‖_F. Works per element under `jax.vmap`.
    With a `preconditioner`, the iteration mixes M R(y) instead of R(y); the stopping rule,
    the growth check and `patience` still read the true ‖R‖.

    **Arguments:**

    - `rtol`, `atol`: tolerances on the residual, relative to ‖y‖ and absolute.
    - `norm`: optimistix's field, unused (the stopping rule is on Frobenius norms, above).
    - `memory`: number of past differences used (m).
    - `mixing`: β, the damping of the underlying fixed-point step.
    - `max_halvings`: most halvings of a step that leaves the domain.
    - `patience`: give up (result `nonlinear_divergence`, so that a chain moves on to its
      next solver) after this many iterations without halving the smallest residual seen;
      0 never gives up before `max_steps`.
    - `adaptive_mixing`: halve β for the rest of the root find each time a step had to be
      cut back, so that a β too large for the problem corrects itself instead of
      restarting the history at every step.
    - `max_growth`: cut back a step whose residual norm exceeds this multiple of the
      current one (default ∞: only non-finite residuals are cut back). `solve`'s default
      for deeper networks uses 10 with a fixed β = 0.1 (`docs/deep.md`).
    - `preconditioner`: an `AbstractPreconditioner` built at the start of each root find,
      where the root find's `options` do not say `{"precondition": False}` (a traced bool
      is allowed: under `jax.vmap`, per element). `solve` uses one for one hidden layer
      from warm starts (`docs/equations.md`).
    """

    memory: int = 8
    mixing: float = 1.0
    max_halvings: int = 30
    patience: int = 0
    adaptive_mixing: bool = False
    max_growth: float = float("inf")
    preconditioner: AbstractPreconditioner | None = None

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del aux_struct, f_struct, tags
        f, _ = fn(y, args)
        flat, _ = ravel_pytree(y)
        hist = jnp.zeros((self.memory, flat.size), flat.dtype)
        f_norm = _fro(f)
        precondition = None
        if self.preconditioner is not None:
            active = jnp.asarray((options or {}).get("precondition", True))
            precondition = self.preconditioner.build(fn, y, args, active)
            f = precondition(f)
        return _AndersonState(
            f=f,
            f_norm=f_norm,
            dY=hist,
            dF=hist,
            k=jnp.array(0),
            best=f_norm,
            stalled=jnp.array(0),
            beta=jnp.asarray(self.mixing, flat.dtype),
            precondition=precondition,
            result=optx.RESULTS.successful,
        )

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        y_flat, unravel = ravel_pytree(y)
        f_flat, _ = ravel_pytree(state.f)
        m = self.memory
        valid = (jnp.arange(m) < jnp.minimum(state.k, m)).astype(y_flat.dtype)
        dF = state.dF * valid[:, None]
        dY = state.dY * valid[:, None]
        # γ = argmin ‖f − dFᵀ γ‖ with a small ridge, so that a degenerate history gives a
        # short, not a wild, correction. Each pair (ΔY, ΔF) is first divided by ‖ΔY‖, so the
        # rows of ΔF are Jacobian-vector products of unit directions, of comparable size.
        # With a ridge relative to the raw history, the large steps of the first iterations
        # outweighed the small recent ones, and the iteration stalled until they left the
        # window (erf FCN d = 32, n = 1024, C = 64: 86 → 69 iterations; `benchmarks/RESULTS.md`).
        # Dividing by ‖ΔF‖ instead trusts a pair with ΔF ≈ 0, i.e. no information, and made
        # steps of 10¹¹ on R(y) = 1 + y².
        tiny = jnp.finfo(y_flat.dtype).tiny
        scale = valid / jnp.sqrt(jnp.sum(dY * dY, axis=1) + tiny)
        dF_scaled = dF * scale[:, None]
        gram = dF_scaled @ dF_scaled.T
        ridge = 1e-12 * jnp.trace(gram) + tiny
        gram = gram + ridge * jnp.eye(m, dtype=gram.dtype) + jnp.diag(1 - valid)
        gamma = scale * _dense_solve(gram, dF_scaled @ f_flat)
        beta = state.beta
        step = beta * f_flat - (dY + beta * dF).T @ gamma

        def trial(alpha):
            y_new = y_flat + alpha * step
            f_new, aux = fn(unravel(y_new), args)
            n_new = _fro(f_new)
            ok = jnp.isfinite(n_new) & (n_new <= self.max_growth * state.f_norm)
            return y_new, f_new, n_new, aux, ok

        def cond(c):
            i, *_, ok = c
            return (~ok) & (i < self.max_halvings)

        def body(c):
            i, alpha, *_ = c
            return (i + 1, 0.5 * alpha, *trial(0.5 * alpha))

        # The first pass of the loop tries α = 1, so that the residual is traced once.
        f_struct, aux_struct = jax.eval_shape(fn, y, args)
        zeros = lambda struct: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), struct)  # noqa: E731
        init = (jnp.array(-1), jnp.array(2.0, y_flat.dtype), y_flat, zeros(f_struct))
        init += (state.f_norm, zeros(aux_struct), jnp.array(False))
        halvings, _, y_new, f_new, n_new, aux, ok = jax.lax.while_loop(cond, body, init)
        if state.precondition is not None:
            f_new = state.precondition(f_new)
        f_new_flat, _ = ravel_pytree(f_new)
        # A step cut back to stay in the domain restarts the history from that step's own
        # pair: clearing it all made the deep EoS diverge (plain steps, all halved), keeping
        # it all slowed the one-layer EoS 10× (erf FCN n = 256, C = 8).
        restart = halvings > 0
        row = jnp.where(restart, 0, state.k % m)
        base_Y = jnp.where(restart, 0 * state.dY, state.dY)
        base_F = jnp.where(restart, 0 * state.dF, state.dF)
        dY_new = jnp.where(ok, base_Y.at[row].set(y_new - y_flat), state.dY)
        dF_new = jnp.where(ok, base_F.at[row].set(f_new_flat - f_flat), state.dF)
        k_new = jnp.where(ok, jnp.where(restart, 1, state.k + 1), state.k)
        y_out = jnp.where(ok, y_new, y_flat)
        f_norm = jnp.where(ok, n_new, state.f_norm)
        halved = f_norm <= 0.5 * state.best
        stalled = jnp.where(halved, 0, state.stalled + 1)
        gave_up = (stalled >= self.patience) & (self.patience > 0)
        result = optx.RESULTS.where(
            ok & ~gave_up, optx.RESULTS.successful, optx.RESULTS.nonlinear_divergence
        )
        new_state = _AndersonState(
            f=_where(ok, f_new, state.f),
            f_norm=f_norm,
            dY=dY_new,
            dF=dF_new,
            k=k_new,
            best=jnp.where(halved, f_norm, state.best),
            stalled=stalled,
            beta=jnp.where(restart & self.adaptive_mixing, 0.5 * state.beta, state.beta),
            precondition=state.precondition,
            result=result,
        )
        return unravel(y_out), new_state, aux
