"""The curve of EoS solutions in width, followed through its folds (pseudo-arclength)."""

import functools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float, Int

from ._arclength import _DENSE_MAX_UNKNOWNS, _Arc, arc_start, arc_step
from ._free_energy import _free_energy, _sym
from ._linalg import (
    _RITZ_BLOCKS,
    _pack,
    _unpack,
    lanczos_lowest,
    negative_ritz,
    spd_inverse_logdet,
)
from ._minimise import _Whitened
from ._network import AbstractNetwork
from ._solve import (
    Solution,
    _check_dense,
    _curve_residual,
    _default_rtol,
    _from_state,
    _state_of,
    _state_scale,
    _to_state,
    _validate,
    _with_width,
    solve,
)


class Trace(eqx.Module):
    """The solutions of the EoS (SPEC §3) along a curve in width, from `trace`.

    Point k solves the EoS at `widths[k]` to a relative residual `residual[k]`. Where 1/C
    turns along the curve (a fold: a saddle-node, where a branch of solutions ends), a new
    branch begins; `branch[k]` numbers them from 0, the starting width's branch.

    - `widths`, `free_energy` (F, SPEC §3, at each point), `residual`: shape (k,).
    - `index`: how many negative eigenvalues F's Hessian has ([`fls_jax.hessian_index`][]):
      0 at a local minimum of F, 1 at a saddle, such as the middle branch of an S-shaped
      curve, between two minima. It changes by one at each fold.
    - `smallest_singular_value`: of the EoS Jacobian in the solver's unknowns; it falls as
      √|C − C*| toward a fold C*.
    - `unknowns`: the solver's unknowns at each point, (Σ⁻¹, Δ_2, …, Δ_L) stacked over k
      (`solve`'s `precision0`; `at` interpolates them).
    - `folds`: the indices k at which a new branch begins.
    - `completed`: whether the curve reached the end width; False where the corrector failed
      or the point budget ran out (the message says which).
    """

    network: AbstractNetwork
    X: Array
    Y: Array
    widths: Float[Array, " k"]
    free_energy: Float[Array, " k"]
    residual: Float[Array, " k"]
    index: Int[Array, " k"]
    smallest_singular_value: Float[Array, " k"]
    unknowns: tuple
    branch: Int[Array, " k"]
    folds: Int[Array, " f"]
    completed: bool = eqx.field(static=True)
    message: str = eqx.field(static=True)

    def at(self, width: float) -> list[tuple[int, tuple[Array, ...]]]:
        """(branch, unknowns) for every branch that passes `width`: the unknowns linearly
        interpolated in 1/C between the two points either side, a start for
        `solve(network, X, Y, precision0=unknowns)` at that width, which then settles on that
        branch's solution (a few tens of iterations)."""
        u, out = 1 / np.asarray(self.widths), []
        uc = 1 / float(width)
        branch = np.asarray(self.branch)
        for j in range(len(u) - 1):
            if branch[j] != branch[j + 1] or not min(u[j], u[j + 1]) <= uc <= max(u[j], u[j + 1]):
                continue
            if out and out[-1][0] == branch[j]:
                continue
            w = (uc - u[j]) / (u[j + 1] - u[j]) if u[j + 1] != u[j] else 0.0
            p = tuple((1 - w) * x[j] + w * x[j + 1] for x in self.unknowns)
            out.append((int(branch[j]), p))
        return out


def _flat_state(lam1, shifts, network, X) -> Array:
    """The solver's unknowns (`_to_state`) as one vector."""
    return ravel_pytree(_to_state(lam1, shifts, _state_scale(network, X)))[0]


def _unknowns(z, network, X) -> tuple[Array, tuple[Array, ...]]:
    """(Σ⁻¹, (Δ_2, …, Δ_L)) from the vector of unknowns."""
    S = network.state_size(X.shape[1])
    return _from_state(_state_of(z, network, X), S, _state_scale(network, X))


# Module-level and jit-compiled once per network structure and shapes, so that a second
# `trace` of the same shapes (another width, target or σ²) reuses the programs: the start of
# the curve and one try along it (`arc_start`, `arc_step`: `solve(past_folds=True)`'s steps).
@eqx.filter_jit
def _start(z0, W, h, toward, network, X, Y) -> _Arc:
    return arc_start(lambda z: _curve_residual(z, W, network, X, Y), z0, h, toward, True)


@eqx.filter_jit
def _step(a: _Arc, W, h_max, h_min, network, X, Y) -> _Arc:
    # No target to land on (∞) and no budget of tries: `trace` stops past its end width.
    return arc_step(
        lambda z: _curve_residual(z, W, network, X, Y),
        a,
        jnp.inf,
        _default_rtol(X.dtype),
        h_max,
        h_min,
        2**30,
    )


@eqx.filter_jit
def _point(z, W, network, X, Y):
    """F, the relative residual, F's Hessian index (`_index`) and (Σ⁻¹, Δ_2, …, Δ_L) at z."""
    lam1, shifts = _unknowns(z[:-1], network, X)
    shifts = tuple(_sym(d) for d in shifts)
    sigma = spd_inverse_logdet(_sym(lam1))[0]
    net = _with_width(network, W / z[-1])
    F = _free_energy(net, sigma, shifts, X, Y)
    rel = jnp.linalg.norm(_curve_residual(z, W, network, X, Y)) / jnp.linalg.norm(z[:-1])
    return F, rel, _index(net, X, Y, lam1, shifts), (lam1, *shifts)


# An eigenvalue of F's Hessian counts as negative below −_INDEX_RTOL · max|λ|: directions
# along which F is flat (a singular prior's null space, where Δ_l does not move K^(l)) have
# |λ| ≤ 10⁻¹⁶ max|λ| from rounding (deep linear FCNs with n > d), while the smallest |λ| along
# the S-shaped curve of `tests/test_deep.py` (n = 20, 435 unknowns) is 2·10⁻¹⁰ max|λ| or more
# (`benchmarks/RESULTS.md`, stop 67). It is near 0 only close to a fold, where the index changes.
_INDEX_RTOL = 1e-12


def _index(network, X, Y, lam1, shifts) -> Array:
    """The number of negative eigenvalues of the Hessian of F (SPEC §3) in the upper
    triangles of Σ⁻¹ and of the Δ_l, each in its layer's units (`_state_scale`). At a
    solution of the EoS (a stationary point of F) the count is that in any other coordinates,
    SPEC §3's (Σ, K^(2), …, K^(L)) included (Sylvester's law of inertia), and unlike those,
    these exist on a singular prior."""
    n, S, L = X.shape[0], network.state_size(X.shape[1]), network.depth
    scale = _state_scale(network, X)
    blocks = (lam1, *shifts)
    y, unravel = ravel_pytree(tuple(_pack(s * b) for s, b in zip(scale, blocks, strict=True)))
    sizes = (S,) + (n,) * (L - 1)

    def F_of(y):
        lam, *deltas = (_unpack(b, m) / s for b, m, s in zip(unravel(y), sizes, scale, strict=True))
        return _free_energy(network, spd_inverse_logdet(lam)[0], tuple(deltas), X, Y)

    eig = jnp.linalg.eigvalsh(jax.hessian(F_of)(y))
    return jnp.sum(eig < -_INDEX_RTOL * jnp.abs(eig).max())


# Matrix-free index (`_lanczos_index`): an eigenvalue of F's Hessian counts as negative below
# −_LANCZOS_NEGATIVE · max|θ| (within ±_LANCZOS_NEGATIVE · max|θ| it is a flat direction), and
# the count as settled once the lowest Ritz value above +_LANCZOS_NEGATIVE · max|θ| has a
# residual bound below _LANCZOS_RTOL · max|θ|. Directions that the whitening leaves out
# (`_minimise._WHITEN_CUTOFF`) are not counted.
_LANCZOS_NEGATIVE = 1e-8
_LANCZOS_RTOL = 1e-8


def _whitened_hvp(network, X, Y, lam1, shifts) -> tuple[Callable[[Array], Array], Array]:
    """F's Hessian-vector product (SPEC §3) about the solution (`jax.linearize` of
    `jax.grad`) in the whitened coordinates of `_Whitened`, and Lanczos' start: a fixed
    random vector on the directions kept."""
    whitened = _Whitened(network, X, Y, lam1, shifts)
    w0, unravel = whitened.zero()
    hvp = jax.linearize(jax.grad(whitened.free_energy), w0)[1]
    # The start on the directions kept: F's Hessian in W maps into them, and left out, they
    # are exact zero eigenvalues that the stopping rule could settle on first.
    sizes = tuple(p.shape[0] for p in whitened.roots)
    v0 = unravel(jax.random.normal(jax.random.key(0), w0.shape, w0.dtype))
    v0 = tuple(
        _pack(k @ _unpack(v, m) @ k) for k, v, m in zip(whitened.keep, v0, sizes, strict=True)
    )
    return hvp, ravel_pytree(v0)[0]


def _lanczos_index(
    network, X, Y, lam1, shifts, max_steps: int, blocks: tuple[int, ...] = _RITZ_BLOCKS
) -> tuple[Array, Array, Array]:
    """(index or −1, lowest Ritz value outside the flat band ±_LANCZOS_NEGATIVE max|θ|
    / max|θ| (NaN where there is none), steps): Lanczos (`lanczos_lowest`) on F's
    Hessian (SPEC §3) in whitened coordinates (`_Whitened`) of the upper triangles of Λ and
    the Δ_l, by Hessian-vector products about the solution (`jax.linearize`). The coordinates
    are an affine map of the solver's unknowns, so the Hessian's inertia is that of
    `_index`'s (Sylvester), on the directions kept. The count of Ritz values below
    −_LANCZOS_NEGATIVE max|θ| is a lower bound on the index (θ_i ≥ λ_i), taken once the
    lowest Ritz value above +_LANCZOS_NEGATIVE max|θ| has converged (`_LANCZOS_RTOL`;
    those between are flat directions: the erf FCN of `benchmarks/lanczos_index.py --part
    narrow`, n = 128 on d = 5, has a cluster at ±3·10⁻¹⁰ max|θ| below its lowest genuine
    eigenvalue, 3.5·10⁻³); it is −1 where none is negative and that one has not converged
    in `max_steps`."""
    hvp, v0 = _whitened_hvp(network, X, Y, lam1, shifts)
    theta, bound, k = lanczos_lowest(hvp, v0, max_steps, _LANCZOS_RTOL, _LANCZOS_NEGATIVE, blocks)
    count, settled, first, scale = negative_ritz(theta, bound, k, _LANCZOS_NEGATIVE, _LANCZOS_RTOL)
    outside = jnp.where(first < k, jnp.take(theta, jnp.minimum(first, max_steps - 1)), jnp.nan)
    lowest = jnp.where(count > 0, theta[0], outside)
    return jnp.where(settled | (count > 0), count, -1), lowest / scale, k


@eqx.filter_jit
def _solution_index(
    solution: Solution, max_steps: int | None = None, blocks: tuple[int, ...] = _RITZ_BLOCKS
) -> Array:
    net, X, Y = solution.network, solution.X, solution.Y
    if max_steps is None:
        index = _index(net, X, Y, solution.precision, solution.kernel_shifts)
    else:
        args = (net, X, Y, solution.precision, solution.kernel_shifts, max_steps, blocks)
        index = _lanczos_index(*args)[0]
    index = jnp.where(jnp.isfinite(net.width), index, 0)
    return jnp.where(solution.converged, index, -1)


def hessian_index(
    solution: Solution, method: str = "auto", max_steps: int = 200
) -> Int[Array, "*batch"]:
    """Whether a solution of the EoS is a minimum of the free energy F (SPEC §3): the number of
    negative eigenvalues of F's Hessian there. 0 at a local minimum; 1 at a saddle, such as
    the middle branch of an S-shaped curve of solutions, between two minima
    ([`fls_jax.trace`][] gives it along the curve). After `solve(past_folds=True)` went
    through folds it says whether the branch it landed on is a minimum; it does not say
    whether another branch at the same width has a lower F (`trace` finds them).

    The count is taken in the solver's unknowns (the upper triangles of Σ⁻¹ and of the
    deeper layers' shifts Δ_l); at a solution it is the count in (Σ, K^(2), …, K^(L)) too
    (Sylvester's law of inertia), and it exists on singular GP-limit priors, whose flat
    directions count as non-negative.

    - `solution`: from [`fls_jax.solve`][], or a batch of them from [`fls_jax.sweep`][]
      (the index is then per element).
    - `method`:
        - `"dense"`: forms F's Hessian (N² entries for N unknowns) and its eigenvalues
          (O(N³)); eigenvalues below −10⁻¹² max|λ| count as negative. Exact, for N ≤ 3000
          (a depth-3 FCN with d = 5: n ≤ 38).
        - `"lanczos"`: matrix-free, for any n. Lanczos (full reorthogonalisation) on F's
          Hessian-vector products, in coordinates whitened by the layers' covariances
          (dΣ⁻¹ = Σ^{-1/2} dW Σ^{-1/2}, dΔ_l = K^(l)^{-1/2} dW K^(l)^{-1/2}), where the KL
          terms' curvature is a multiple of the identity. It counts the Ritz values below
          −10⁻⁸ max|θ|, once the lowest Ritz value above +10⁻⁸ max|θ| has converged
          (residual bound ≤ 10⁻⁸ max|θ|; those between are directions along which F is flat
          to rounding) or after `max_steps`: a lower bound on the index (each Ritz value
          bounds the eigenvalue of its rank from above), which tells a saddle from a minimum
          once the lowest one has converged. Directions along which K^(l) has an eigenvalue below
          10⁻¹⁰ of its largest, where F is flat or nearly so, are left out. Memory:
          max_steps + 1 vectors of the N unknowns.
        - `"auto"` (default): `"dense"` for N ≤ 3000, else `"lanczos"`.
    - `max_steps`: Lanczos' most steps, each one Hessian-vector product (a forward-mode
      derivative of F's gradient, linearised once about the solution). The authors'
      depth-3 erf FCN at n = 128 needed 64–75 steps at C ≥ 8 and 116–139 at C = 2 and 1
      (`benchmarks/RESULTS.md`, stop 68).

    **Returns:** an integer per solution: the index; 0 at C = ∞ (the KL terms' C·Hessian,
    positive definite, dominates as C → ∞); −1 where the solution did not converge (away
    from a stationary point the count depends on the coordinates), or where Lanczos neither
    found a negative Ritz value nor converged the lowest one in `max_steps` (near a fold,
    where the lowest eigenvalue nears 0: raise `max_steps`, or use `"dense"`).

    Both need float64 and no weight mean.
    """
    if not isinstance(solution, Solution):
        raise TypeError(f"hessian_index needs an fls_jax.Solution, got {type(solution)}")
    if method not in ("auto", "dense", "lanczos"):
        raise ValueError(f'method must be "auto", "dense" or "lanczos", got {method!r}')
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 2:
        raise ValueError(f"max_steps must be an integer ≥ 2, got {max_steps!r}")
    batched = jnp.ndim(solution.X) == 3
    one = jax.tree.map(lambda x: x[0] if eqx.is_array(x) else x, solution) if batched else solution
    # float64 and no weight mean for both; the size limit where "dense" is asked for.
    size = _check_dense(one.network, one.X, "hessian_index", dense=method == "dense")
    dense = method == "dense" or (method == "auto" and size <= _DENSE_MAX_UNKNOWNS)
    steps = None if dense else min(max_steps, size)
    # Under vmap the Lanczos step's block choice would compute every block (`_ritz_leading`).
    blocks = () if batched else _RITZ_BLOCKS
    index = functools.partial(_solution_index, max_steps=steps, blocks=blocks)
    return (eqx.filter_vmap(index) if batched else index)(solution)


def trace(
    network: AbstractNetwork,
    X: Float[ArrayLike, "n d"],
    Y: Float[ArrayLike, "n m"],
    to_width: float,
    *,
    max_points: int = 1000,
    step: float = 0.02,
    max_step: float = 0.2,
) -> Trace:
    """Follow the solutions of the EoS (SPEC §3) in width from `network.width` to `to_width`,
    through folds: pseudo-arclength continuation in (unknowns, 1/C).

    `solve` continues in 1/C from the GP limit and so can only follow the branch of solutions
    that starts there; where that branch folds back it stops (`Solution.width_reached`).
    At narrow widths the EoS of a deep network can have an S-shaped curve of solutions: three
    at one width, of which `solve` returns the one on the GP limit's branch, converged, even
    where another has the lower F, and none past the fold. `trace` follows the whole curve:
    each step predicts along the curve's tangent (the null vector of the Jacobian [∂R/∂x,
    ∂R/∂u], u = 1/C), and corrects by chord Newton on the residual R bordered by the
    arclength condition, halving the step where that fails. `Trace.at(width)` gives a start
    for `solve(..., precision0=...)` on each branch that passes a width.

    A tool for small problems: it forms the dense Jacobian, and F's Hessian with its
    eigenvalues, at every point (O(N³) for N unknowns) and refuses N > 3000 (a depth-3 FCN
    with d = 5: n ≤ 38). It runs a Python loop over points (its steps are those of
    `solve(past_folds=True)`, `arc_step`; they and each point's F are compiled programs,
    shared by every `trace` of the same shapes), is not differentiable, and needs float64.

    - `network`: a network of finite width, where `solve` converges (the curve's start).
    - `to_width`: the width at which to stop, narrower or wider than the start.
    - `max_points`: the most points kept.
    - `step`, `max_step`: the first and largest arclength step, relative to the norm of the
      unknowns at the start.
    """
    network, X, Y = _validate(network, X, Y)
    C0 = float(network.width)
    if not (math.isfinite(C0) and C0 > 0):
        raise ValueError(f"trace needs a network of finite positive width, got {C0}")
    if isinstance(to_width, str | bool) or np.ndim(to_width) != 0:
        raise TypeError(f"to_width must be a number, got {to_width!r}")
    to_width = float(to_width)
    if not (math.isfinite(to_width) and to_width > 0 and to_width != C0):
        raise ValueError(f"to_width must be positive, finite and not {C0}, got {to_width}")
    if max_points < 2 or not 0 < step <= max_step:
        raise ValueError("need max_points ≥ 2 and 0 < step ≤ max_step")
    _check_dense(network, X, "trace")
    start = solve(network, X, Y)
    if not bool(start.converged):
        raise ValueError(f"solve did not converge at the start width {C0}: trace starts there")
    x0 = _flat_state(start.precision, start.kernel_shifts, network, X)
    norm0 = float(jnp.linalg.norm(x0))
    W = norm0 if norm0 > 0 else 1.0  # z = (x, W·u): both parts weigh in the arclength
    Wj = jnp.asarray(W, X.dtype)  # an array: a Python float would be static under filter_jit

    args = (network, X, Y)
    h_max, h_min = (jnp.asarray(f * W, X.dtype) for f in (max_step, 1e-10))
    toward = jnp.asarray(1.0 if to_width < C0 else -1.0, X.dtype)  # in u = 1/C
    a = _start(jnp.append(x0, W / C0), Wj, jnp.asarray(step * W, X.dtype), toward, *args)
    rows, message = [], "reached the end width"

    def record(a: _Arc):
        z, J = np.asarray(a.z), np.asarray(a.J)
        F, rel, index, unknowns = _point(a.z, Wj, *args)
        rows.append(
            (
                W / z[-1],
                float(F),
                float(rel),
                int(index),
                float(np.linalg.svd(J[:, :-1], compute_uv=False)[-1]),
                np.sign(float(a.t[-1])),
                unknowns,
            )
        )

    record(a)
    while len(rows) < max_points:
        while True:  # tries from the last point, the step halved after each failure
            h = float(a.h)
            a = _step(a, Wj, h_max, h_min, *args)
            if bool(a.failed) or float(a.h) >= h:  # a step grows (or stays) once accepted
                break
        if bool(a.failed):
            message = f"the corrector failed at C = {W / float(a.z[-1]):.6g}"
            break
        record(a)
        C = W / float(a.z[-1])
        if (C - to_width) * (C0 - to_width) <= 0:
            break
    else:
        message = f"stopped after max_points = {max_points}"
    completed = message == "reached the end width"

    direction = np.array([r[5] for r in rows])
    folds = np.flatnonzero(direction[1:] != direction[:-1]) + 1
    branch = np.zeros(len(rows), int)
    for k in folds:
        branch[k:] += 1
    unknowns = tuple(jnp.stack([r[6][i] for r in rows]) for i in range(len(rows[0][6])))
    return Trace(
        network=network,
        X=X,
        Y=Y,
        widths=jnp.asarray([r[0] for r in rows]),
        free_energy=jnp.asarray([r[1] for r in rows]),
        residual=jnp.asarray([r[2] for r in rows]),
        index=jnp.asarray([r[3] for r in rows]),
        smallest_singular_value=jnp.asarray([r[4] for r in rows]),
        unknowns=unknowns,
        branch=jnp.asarray(branch),
        folds=jnp.asarray(folds, int),
        completed=completed,
        message=message,
    )
