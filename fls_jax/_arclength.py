"""Pseudo-arclength continuation with dense linear algebra, inside a jit-compiled solve."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array

from ._linalg import _cpu_sequential


# Most Newton steps of one corrector, each one residual; the chord matrix is the bordered
# Jacobian at the last accepted point.
_CORRECTOR_STEPS = 12
# First and largest step along the curve, and the smallest before giving up, relative to the
# norm of the unknowns at the start: `fj.trace`'s defaults.
_FIRST_STEP, _MAX_STEP, _MIN_STEP = 0.02, 0.2, 1e-10
# Most unknowns N: a dense (N + 1)² Jacobian and its LU at every point.
_DENSE_MAX_UNKNOWNS = 3000
# Columns of a dense Jacobian built together (one Jacobian-vector product each): `DenseLU`'s
# reason, the products' n×n kernel tangents.
_COLUMNS = 64


_lu_factor = _cpu_sequential(lambda a: jsl.lu_factor(a))
_lu_solve = _cpu_sequential(lambda lu, piv, b: jsl.lu_solve((lu, piv), b))


def _jacobian(residual: Callable[[Array], Array], z: Array) -> Array:
    """The dense Jacobian of `residual` at z, `_COLUMNS` Jacobian-vector products at a time."""
    _, lin = jax.linearize(residual, z)
    eye = jnp.eye(z.size, dtype=z.dtype)
    return jax.lax.map(lin, eye, batch_size=_COLUMNS).T


def jacobian_sign(residual: Callable[[Array], Array], z: Array) -> Array:
    """The sign of det ∂R/∂z at z (0 where it is singular or not finite), from its LU. It
    changes at each fold of the curve of solutions R(z; p) = 0 (a simple real eigenvalue
    crosses zero) and nowhere else along it."""
    lu, piv = _lu_factor(_jacobian(residual, z))
    d = jnp.diagonal(lu)
    swaps = jnp.sum(piv != jnp.arange(piv.size, dtype=piv.dtype))
    sign = jnp.prod(jnp.sign(d)) * jnp.where(swaps % 2 == 0, 1.0, -1.0).astype(d.dtype)
    return jnp.where(jnp.all(jnp.isfinite(d)), sign, 0.0)


def _tangent(J: Array, previous: Array) -> Array:
    """The unit tangent of the curve R(z) = 0 at z, from [J; previousᵀ] t = e_last: it spans
    J's null space and has previous · t > 0, so it keeps the direction of travel."""
    lu, piv = _lu_factor(jnp.vstack([J, previous[None]]))
    t = _lu_solve(lu, piv, jnp.zeros_like(previous).at[-1].set(1.0))
    return t / jnp.linalg.norm(t)


class _Arc(eqx.Module):
    z: Array  # the last accepted point (unknowns, scaled parameter)
    t: Array  # the unit tangent there
    J: Array  # the dense Jacobian there, (N, N + 1)
    h: Array  # the next step along the curve
    points: Array  # corrector attempts
    steps: Array  # residual evaluations in the correctors
    folds: Array  # turns of the parameter's direction passed
    done: Array
    failed: Array


def arc_start(residual: Callable[[Array], Array], z0: Array, h, toward, active) -> _Arc:
    """The start of a curve at its point z0: the Jacobian there, the unit tangent with
    sign(t_p) = `toward` (+1: p increasing), and the first step h (`active` False: no
    Jacobian, and the curve has failed before it starts)."""
    N = z0.size - 1
    J0 = jax.lax.cond(
        active, lambda: _jacobian(residual, z0), lambda: jnp.zeros((N, N + 1), z0.dtype)
    )
    return _Arc(
        z=z0,
        t=toward * _tangent(J0, jnp.zeros_like(z0).at[N].set(1.0)),
        J=J0,
        h=jnp.asarray(h, z0.dtype),
        points=jnp.array(0),
        steps=jnp.array(0),
        folds=jnp.array(0),
        done=jnp.array(False),
        failed=~jnp.asarray(active),
    )


def arc_step(
    residual: Callable[[Array], Array],
    a: _Arc,
    target,
    rtol: float,
    h_max,
    h_min,
    max_points: int,
) -> _Arc:
    """One try along the curve from its last accepted point (`pseudo_arclength`): predict,
    correct, and where that succeeds move there (new Jacobian and tangent) and grow the step
    1.5× up to h_max, else halve it. Fails once the step falls below h_min or `max_points`
    tries are spent; done where it landed on p = target (target = ∞: never)."""
    N = a.z.size - 1
    land = a.z[N] + a.h * a.t[N] >= target
    h = jnp.where(land, (target - a.z[N]) / jnp.where(land, a.t[N], 1.0), a.h)
    zp = a.z + h * a.t
    row = jnp.where(land, jnp.zeros_like(a.z).at[N].set(1.0), a.t)
    lu, piv = _lu_factor(jnp.vstack([a.J, row[None]]))

    def constraint(z):
        return jnp.where(land, z[N] - target, a.t @ (z - zp))

    def corrector_cond(c):
        k, z, r_norm, _ = c
        small = r_norm <= rtol * jnp.linalg.norm(z[:N])
        return (k < _CORRECTOR_STEPS) & ~small & jnp.isfinite(r_norm)

    def corrector_body(c):
        k, z, _, r = c
        z = z - _lu_solve(lu, piv, jnp.append(r, constraint(z)))
        r = residual(z)
        return k + 1, z, jnp.linalg.norm(r), r

    r0 = residual(zp)
    k, zc, r_norm, _ = jax.lax.while_loop(
        corrector_cond, corrector_body, (jnp.array(0), zp, jnp.linalg.norm(r0), r0)
    )
    ok = (r_norm <= rtol * jnp.linalg.norm(zc[:N])) & (zc[N] > 0) & jnp.all(jnp.isfinite(zc))

    def accept():
        J = _jacobian(residual, zc)
        return zc, _tangent(J, a.t), J

    z, t, J = jax.lax.cond(ok, accept, lambda: (a.z, a.t, a.J))
    h_next = jnp.where(ok, jnp.minimum(1.5 * a.h, h_max), 0.5 * a.h)
    points = a.points + 1
    return _Arc(
        z=z,
        t=t,
        J=J,
        h=h_next,
        points=points,
        steps=a.steps + k + 1,
        folds=a.folds + (ok & (jnp.sign(t[N]) != jnp.sign(a.t[N]))),
        done=ok & land,
        failed=(h_next < h_min) | (points >= max_points),
    )


def pseudo_arclength(
    residual: Callable[[Array], Array],
    z0: Array,
    target: Array,
    active: Array,
    rtol: float,
    max_points: int,
) -> _Arc:
    """Follow the curve residual(z) = 0, z = (x, p) ∈ R^{N+1}, from its point z0 (p0 < target)
    until p = target, through folds (turns of p), by pseudo-arclength continuation (Keller).

    Each step predicts z0 + h t along the unit tangent t (the null vector of the Jacobian
    [∂R/∂x, ∂R/∂p], oriented along the direction of travel) and corrects by chord Newton on
    R bordered by the arclength condition t · (z − z_pred) = 0, with the LU of the bordered
    Jacobian at the last accepted point; the bordered matrix stays regular at a fold, where
    ∂R/∂x is singular. A step whose corrector fails to reach ‖R‖ ≤ rtol ‖x‖ within
    `_CORRECTOR_STEPS` (or leaves p > 0) is halved; one that succeeds grows 1.5×. Where the
    prediction passes the target, the step is shortened to land on it and the arclength
    condition is replaced by p = target: a Newton solve at the target itself. Jittable and
    vmappable (a `lax.while_loop` of `arc_step`; `active` False skips an element);
    `fj.trace` takes the same steps one at a time, with its diagnostics at each point.
    Dense: O(N³) per point.
    """
    scale = jnp.linalg.norm(z0[:-1])
    scale = jnp.where(scale > 0, scale, 1.0)
    init = arc_start(residual, z0, _FIRST_STEP * scale, 1.0, active)
    return jax.lax.while_loop(
        lambda a: ~(a.done | a.failed),
        lambda a: arc_step(
            residual, a, target, rtol, _MAX_STEP * scale, _MIN_STEP * scale, max_points
        ),
        init,
    )
