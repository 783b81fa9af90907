"""F in coordinates whitened by the layers' covariances, and a matrix-free minimiser of it.

The EoS are the stationary points of the free energy F (SPEC §3). Where the continuation in
1/C cannot reach the target width (its branch of solutions folds back, or it stalls where the
curve nearly does) or ends at a saddle of F, a minimiser of F at the target width reaches a
solution that root finders in 1/C cannot: it needs no path in C, and F, unlike the residual,
tells a minimum from a saddle. `solve(minimise=True)` runs a trust-region Newton method on F
whose steps are truncated conjugate gradients on F's Hessian-vector products (Steihaug's
method): matrix-free, at any n, and it follows a direction of negative curvature where CG
meets one, so that it leaves saddles. In the whitened coordinates of `_whitening` the KL
terms' curvature is a multiple of the identity, so CG needs no other preconditioner.
`fls_jax.hessian_index` computes its Lanczos index in the same coordinates.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array

from ._free_energy import _free_energy, _inverse_width, _layers, _sym
from ._linalg import _eigh, _pack, _unpack, spd_inverse_logdet
from ._network import AbstractNetwork


# Directions along which a layer's pre-kernel K^(l) has an eigenvalue below _WHITEN_CUTOFF ·
# its largest are left out of the whitened coordinates: F is flat along a singular prior's
# null space, and nearly so (curvature ~ λ²) along the rest.
_WHITEN_CUTOFF = 1e-10


def _whitening(network, X, lam1, shifts) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """(Λ^{1/2}, K^(2)^{+1/2}, …, K^(L)^{+1/2}) and the projectors on the directions each
    keeps (I for Λ): dΛ = Λ^{1/2} dW Λ^{1/2} and
    dΔ_l = K^{+1/2} dW K^{+1/2} turn the KL terms' curvature (C/2)(Σ ⊗ Σ) in Λ = Σ⁻¹ and
    (C_l/2)(K ⊗ K) in Δ_l (at Δ_l = 0) into multiples of the identity, so that the Hessian
    in W is well conditioned: Lanczos resolves its lowest eigenvalues in tens of steps, and CG
    solves with it unpreconditioned. K's pseudo-inverse square root leaves out its
    (near-)null directions, along which F is flat (a singular prior) or nearly so (curvature
    ~ λ²)."""

    def root(M, inverse):
        lam, V = _eigh(_sym(M))
        if inverse:
            keep = lam > _WHITEN_CUTOFF * jnp.max(lam)
            f = jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
        else:
            keep, f = jnp.ones_like(lam, bool), jnp.sqrt(jnp.maximum(lam, 0.0))
        return (V * f) @ V.T, (V * keep) @ V.T

    sigma = spd_inverse_logdet(_sym(lam1))[0]
    covs = _layers(network, sigma, shifts, X)[0] if shifts else (sigma,)
    roots = [root(lam1, False), *(root(K, True) for K in covs[1:])]
    return tuple(r[0] for r in roots), tuple(r[1] for r in roots)


class _Whitened(eqx.Module):
    """F (SPEC §3) as a function of the whitened coordinates w about (Λ, Δ_2, …, Δ_L)
    (`_whitening`; w = 0 there): the upper triangles of the W blocks, one vector."""

    network: AbstractNetwork
    X: Array
    Y: Array
    lam1: Array
    shifts: tuple[Array, ...]
    roots: tuple[Array, ...]
    keep: tuple[Array, ...]

    def __init__(self, network, X, Y, lam1, shifts):
        self.network, self.X, self.Y, self.lam1, self.shifts = network, X, Y, lam1, shifts
        self.roots, self.keep = _whitening(network, X, lam1, shifts)

    def zero(self) -> tuple[Array, Callable]:
        """w = 0 and the map from the vector to its blocks' upper triangles."""
        return ravel_pytree(tuple(_pack(jnp.zeros_like(p)) for p in self.roots))

    def unknowns(self, w: Array) -> tuple[Array, tuple[Array, ...]]:
        """(Λ, (Δ_2, …, Δ_L)) at w."""
        P, unravel = self.roots, self.zero()[1]
        W = tuple(_unpack(b, p.shape[0]) for b, p in zip(unravel(w), P, strict=True))
        lam = _sym(self.lam1) + P[0] @ W[0] @ P[0]
        deltas = tuple(
            _sym(d) + p @ x @ p for d, p, x in zip(self.shifts, P[1:], W[1:], strict=True)
        )
        return _sym(lam), deltas

    def free_energy(self, w: Array) -> Array:
        lam, deltas = self.unknowns(w)
        return _free_energy(self.network, spd_inverse_logdet(lam)[0], deltas, self.X, self.Y)


# The trust-region Newton method of `minimise_free_energy`: its most iterations, the gradient
# norm of F/C (whitened) at which it hands over to the root finders, the CG steps per
# iteration, and the first trust radius (whitened units, in which the KL terms' curvature of
# F/C is ½ per direction).
_TR_MAX_ITERATIONS = 500
_TR_GTOL = 1e-9
_TR_CG_STEPS = 200
_TR_RADIUS = 1.0


def _steihaug(g: Array, hvp: Callable, radius: Array, tol: Array, max_steps: int):
    """Steihaug's truncated CG for min m(p) = g·p + ½ p·Hp within ‖p‖ ≤ radius: CG from
    p = 0 until the residual is below `tol`, a step leaves the trust region, or a direction of
    non-positive curvature appears (the last two end on the region's boundary, along that
    direction). Returns p, m(p), the CG steps (Hessian-vector products) taken and whether it
    met non-positive curvature. m(p) = ½ p·(g + r) with r = g + Hp, the residual that CG
    carries (at a boundary point z + τd, r + τHd), so it costs no product."""

    def boundary(z, d):  # τ ≥ 0 with ‖z + τd‖ = radius
        a, b, c = d @ d, 2 * (z @ d), z @ z - radius**2
        return (-b + jnp.sqrt(jnp.maximum(b * b - 4 * a * c, 0.0))) / (2 * a)

    def body(state):
        z, r, d, k, _, _, _, _ = state
        Hd = hvp(d)
        curvature = d @ Hd
        alpha = (r @ r) / jnp.where(curvature > 0, curvature, 1.0)
        z_next, r_next = z + alpha * d, r + alpha * Hd
        out = (curvature <= 0) | (jnp.linalg.norm(z_next) >= radius)
        done = out | (jnp.linalg.norm(r_next) < tol) | (k + 1 >= max_steps)
        tau = boundary(z, d)
        p = jnp.where(out, z + tau * d, z_next)
        r_p = jnp.where(out, r + tau * Hd, r_next)
        d_next = -r_next + (r_next @ r_next) / (r @ r) * d
        return z_next, r_next, d_next, k + 1, p, 0.5 * (p @ (g + r_p)), done, curvature <= 0

    zero, no = jnp.zeros_like(g), jnp.array(False)
    state = (zero, g, -g, jnp.array(0), zero, jnp.zeros((), g.dtype), no, no)
    state = jax.lax.while_loop(lambda s: ~s[-2], body, state)
    return state[4], state[5], state[3], state[7]


def minimise_free_energy(
    network, X, Y, lam1, shifts, active
) -> tuple[Array, tuple[Array, ...], Array, Array]:
    """A trust-region Newton method on F/C (SPEC §3) at `network`'s width from (Λ, Δ_2, …,
    Δ_L), each iteration in the coordinates whitened at its point (`_Whitened`), in which
    the trust region's radius is measured: whitened once at the start, the coordinates
    were poorly scaled by the time the minimiser had moved far (a narrow depth-3 erf FCN at
    n = 128 from C = 35 to 2: ‖∇(F/C)‖ still 13 after 500 iterations; whitened every fifth
    iteration, 2.6·10⁻⁴ after 225; at every iteration, 1.6·10⁻⁵ after 248, from where the
    root finders converged; stop 70).

    - Each iteration linearises F and its gradient once, and takes Steihaug's truncated CG step
      (`_steihaug`; forcing term min(½, ‖g‖^½), or none where ‖g‖ ≤ `_TR_GTOL`), whose
      model decrease comes from CG's residual (until stop 71, from one more product).
    - A step is accepted where F falls by more than 10⁻⁴ of the quadratic model's decrease,
      or, where that decrease is below 10⁻¹⁰ |F| (F's rounding: near the minimum of a
      narrow network F/C ≈ −133 was flat to 10⁻¹⁰ while ‖g‖ was 2·10⁻⁴), where ‖g‖ falls.
      The radius is quartered where the model is poor (or F is not finite: a K^(l) left
      the positive-definite cone), and doubled where it is good and the step reached it.
    - It stops at ‖∇(F/C)‖ ≤ `_TR_GTOL` unless the last CG met non-positive curvature (at
      least one iteration runs, so that a start at a saddle is left), at a radius below
      10⁻¹², or after `_TR_MAX_ITERATIONS`. Not `active`: no iteration.

    Returns (Λ, (Δ_l)), the iterations and the Hessian-vector products spent."""
    u = _inverse_width(network)

    def keep_going(state):
        _, _, radius, it, _, _, done = state
        return active & ~done & (it < _TR_MAX_ITERATIONS) & (radius > 1e-12)

    def body(state):
        lam1, shifts, radius, it, products, negative, _ = state
        whitened = _Whitened(network, X, Y, lam1, shifts)

        def f(w):
            return u * whitened.free_energy(w)

        w0 = whitened.zero()[0]
        value_and_grad = jax.value_and_grad(f)
        (f_old, g), tangent = jax.linearize(value_and_grad, w0)  # F and ∇F in one pass

        def hvp(v):
            return tangent(v)[1]

        gnorm = jnp.linalg.norm(g)
        # Where the gradient is below `_TR_GTOL` (a converged root) CG runs to
        # `_TR_CG_STEPS` or to non-positive curvature: its Krylov space is Lanczos' from g,
        # rounding noise in every direction. At a minimum that gives a negligible step and
        # the iterations stop; at a saddle they go on along the curvature it met.
        stationary = (gnorm <= _TR_GTOL) & (it > 0) & ~negative
        tol = jnp.where(gnorm > _TR_GTOL, jnp.minimum(0.5, jnp.sqrt(gnorm)) * gnorm, 0.0)
        tol = jnp.where(stationary, jnp.inf, tol)  # done: one CG step, not taken
        p, model, k, negative = _steihaug(g, hvp, radius, tol, _TR_CG_STEPS)
        predicted = -model
        f_new, g_new = value_and_grad(p)
        finite = jnp.isfinite(f_new) & (predicted > 0)
        rho = jnp.where(finite, (f_old - f_new) / jnp.where(finite, predicted, 1.0), -jnp.inf)
        flat = finite & (predicted <= 1e-10 * jnp.abs(f_old))
        rho = jnp.where(flat, jnp.where(jnp.linalg.norm(g_new) < gnorm, 1.0, 0.0), rho)
        size = jnp.linalg.norm(p)
        grow = (rho > 0.75) & (size >= 0.99 * radius)
        radius = jnp.where(rho < 0.25, 0.25 * size, jnp.where(grow, 2 * radius, radius))
        accept = (rho > 1e-4) & ~stationary
        lam_new, shifts_new = whitened.unknowns(p)
        lam1 = jnp.where(accept, lam_new, lam1)
        shifts = tuple(jnp.where(accept, b, a) for a, b in zip(shifts, shifts_new, strict=True))
        return lam1, shifts, radius, it + 1, products + k + 1, negative, stationary

    radius = jnp.asarray(_TR_RADIUS, lam1.dtype)
    no = jnp.array(False)
    state = (lam1, tuple(shifts), radius, jnp.array(0), jnp.array(0), no, no)
    lam1, shifts, _, it, products, _, _ = jax.lax.while_loop(keep_going, body, state)
    return lam1, shifts, it, products
