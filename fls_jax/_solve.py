"""Solving the Equations of State: optimistix root finding over lineax solves (SPEC §3)."""

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._anderson import AbstractPreconditioner, Anderson
from ._arclength import _DENSE_MAX_UNKNOWNS, jacobian_sign, pseudo_arclength
from ._descent import FreeEnergyBFGS
from ._free_energy import (
    _check_positive_definite,
    _free_energy,
    _inverse_width,
    _layers,
    _shift_residuals,
    _sym,
)
from ._linalg import (
    DenseLU,
    KrylovOrDense,
    RelativeGMRES,
    _eigh,
    _pack,
    _unpack,
    spd_inverse_logdet,
)
from ._memory import guard_memory_maps
from ._minimise import minimise_free_energy
from ._network import _N, AbstractNetwork, _canonical, _hyper_parameters
from ._rootfind import _AbstractResidualRootFinder, _fro, _where


class _DampedNewtonState(eqx.Module):
    f: Array
    f_norm: Array
    result: optx.RESULTS


class DampedNewton(_AbstractResidualRootFinder):
    """Newton's method with a backtracking line search on ‖residual‖, as an optimistix solver.

    Each step solves J δ = f(y) with `linear_solver` (lineax; by default the Jacobian of the
    EoS is materialised and LU-factorised), then halves the step length α from 1 until
    f(y − α δ) is finite (the precision stays positive definite) and
    ‖f(y − αδ)‖ ≤ (1 − 10⁻⁴ α) ‖f(y)‖. Far from the root this is a safe, monotone descent on
    the residual; near it full steps are taken and convergence is quadratic. Works per
    element under `jax.vmap`. Stops when ‖f(y)‖_F ≤ atol + rtol ‖y‖_F; a line search that
    finds no acceptable step ends the solve with `RESULTS.nonlinear_divergence`, keeping the
    last accepted (finite) iterate.

    **Arguments:**

    - `rtol`, `atol`: tolerances on the residual, relative to ‖y‖ and absolute (Frobenius
      norms; `norm` is optimistix's field, unused).
    - `linear_solver`: a lineax solver for the Newton system.
    - `max_halvings`: most step-length halvings per step.
    """

    linear_solver: lx.AbstractLinearSolver = DenseLU()
    max_halvings: int = 40

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del options, aux_struct, f_struct
        f, _ = fn(y, args)
        return _DampedNewtonState(f=f, f_norm=_fro(f), result=optx.RESULTS.successful)

    def step(self, fn, y, args, options, state, tags):
        del options
        f, lin_fn, aux = jax.linearize(lambda _y: fn(_y, args), y, has_aux=True)
        jac = lx.FunctionLinearOperator(lin_fn, jax.eval_shape(lambda: y), tags=tags)
        delta = lx.linear_solve(jac, f, self.linear_solver, throw=False).value
        f_norm = _fro(f)

        def trial(alpha):
            y_new = jax.tree.map(lambda v, dv: v - alpha * dv, y, delta)
            f_new, _ = fn(y_new, args)
            n_new = _fro(f_new)
            ok = jnp.isfinite(n_new) & (n_new <= (1 - 1e-4 * alpha) * f_norm)
            return y_new, f_new, n_new, ok

        def cond(carry):
            k, _, _, _, _, ok = carry
            return (~ok) & (k < self.max_halvings)

        def body(carry):
            k, alpha, *_ = carry
            alpha = 0.5 * alpha
            return (k + 1, alpha, *trial(alpha))

        # The first pass of the loop tries α = 1, so that the residual is traced once.
        init = (jnp.array(-1), jnp.array(2.0, f_norm.dtype), y, f, f_norm, jnp.array(False))
        _, _, y_new, f_new, n_new, ok = jax.lax.while_loop(cond, body, init)
        y_out = _where(ok, y_new, y)
        f_out = _where(ok, f_new, f)
        result = optx.RESULTS.where(ok, optx.RESULTS.successful, optx.RESULTS.nonlinear_divergence)
        state = _DampedNewtonState(f=f_out, f_norm=jnp.where(ok, n_new, f_norm), result=result)
        return y_out, state, aux


class _Settled(optx.AbstractRootFinder):
    """The final root find of `solve`: no iterations, only the implicit adjoint. It stops at
    once with the result its `options` give (`{"converged": ok}`, a traced bool: whether the
    continuation reached the target width), so that `optx.root_find` carries the gradient
    of the root reached without compiling the chain's solver a second time."""

    rtol: float = 0.0
    atol: float = 0.0
    norm: Any = optx.two_norm

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_struct)  # a stand-in aux

    def step(self, fn, y, args, options, state, tags):
        return y, state, state

    def terminate(self, fn, y, args, options, state, tags):
        ok = options["converged"]
        return jnp.array(True), optx.RESULTS.where(
            ok, optx.RESULTS.successful, optx.RESULTS.nonlinear_max_steps_reached
        )

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return y, aux, {}


class Solution(eqx.Module):
    """The solved Equations of State of a network (SPEC §3).

    **Fields:**

    - `network`, `X`, `Y`: what was solved (the training data stays with the solution, so
      that [`fls_jax.predict`][] needs only the test inputs).
    - `sigma`: Σ, the learned first-layer weight covariance (S×S).
    - `precision`: Σ⁻¹.
    - `weight_mean`: μ, the first-layer filters' posterior mean (S): zero unless the
      network has `weight_mean=True`.
    - `kernels`: (K^(2), …, K^(L)), the learned pre-kernels of the deeper layers on the
      train set (n×n each); empty for one hidden layer.
    - `kernel_shifts`: (Δ_2, …, Δ_L), Δ_l = K^(l)⁻¹ − Q^(l−1)⁻¹, the deeper layers' learned
      precision shifts (zero in the GP limit) and, with Σ⁻¹, the solver's unknowns. They
      exist where the GP-limit prior Q^(l−1) is singular (then so is K^(l), which lives
      on Q^(l−1)'s range): K^(l) = Q^(l−1)(I + Δ_l Q^(l−1))⁻¹.
    - `free_energy`: F at the solution (SPEC §3).
    - `residual`: ‖R(y)‖ / ‖y‖ at the returned unknowns y (the upper triangle of Σ⁻¹, for
      deeper networks that and the Δ_l, each in its layer's units; `_state_scale`), the
      EoS residual reached relative to them: what the solvers' stopping rule
      compares with their rtol (1e-11 in float64 by default).
    - `num_steps`: solver iterations, summed over the continuation stages.
    - `num_stages`: continuation stages (root finds) run before the final check: 1 when
      the target width was solved directly, 0 at C = ∞ or with `precision0`. With
      `solve(past_folds=True)`, plus the points tried along the curve past the folds.
    - `num_folds`: folds of the curve of solutions that `solve(past_folds=True)` went
      through (0 otherwise): where it is positive and converged, the solution is on another
      branch of solutions than the one that starts at the GP limit (README, "Known
      limitations"); [`fls_jax.hessian_index`][] says whether it is a minimum of F.
    - `result`: the optimistix result code: `optx.RESULTS.successful` when converged,
      `nonlinear_max_steps_reached` where the continuation ran out of stages (or, from
      `precision0`, every solver of the chain failed).
    - `converged`: whether the solve met its tolerance: check it, per element of a vmap.
    - `width_reached`: the width C whose EoS the returned unknowns solve: `network.width`
      where converged. Where the continuation ran out of stages, the last width it
      converged at (∞: none, the GP limit), so that a failed solve says how far it got.
      One that stops at the same width with a larger `max_stages` has likely met a fold,
      where its branch of solutions ends (README, "Known limitations"); [`fls_jax.trace`][]
      follows the solutions past it, and `solve(past_folds=True)` goes on through it. NaN
      where a solve from `precision0` failed (its start solves no known width).
    """

    network: AbstractNetwork
    X: Float[Array, "n d"]
    Y: Float[Array, "n m"]
    sigma: Float[Array, "S S"]
    precision: Float[Array, "S S"]
    weight_mean: Float[Array, " S"]
    kernels: tuple[Float[Array, "n n"], ...]
    kernel_shifts: tuple[Float[Array, "n n"], ...]
    free_energy: Float[Array, ""]
    residual: Float[Array, ""]
    num_steps: Int[Array, ""]
    num_stages: Int[Array, ""]
    num_folds: Int[Array, ""]
    result: optx.RESULTS
    converged: Bool[Array, ""]
    width_reached: Float[Array, ""]


def _state_precision(solution: Solution) -> Array:
    """The first layer's unknown at a solution, for a warm start (`precision0`): Σ⁻¹, or with
    `weight_mean` the augmented [[Σ⁻¹, −Σ⁻¹μ], [−μᵀΣ⁻¹, 1 + μᵀΣ⁻¹μ]] (`eos_residual`)."""
    if not solution.network.weight_mean:
        return solution.precision
    lam, mu = solution.precision, solution.weight_mean
    eta = -lam @ mu
    top = jnp.concatenate([lam, eta[:, None]], axis=1)
    bottom = jnp.concatenate([eta, (1 + mu @ lam @ mu)[None]])[None]
    return jnp.concatenate([top, bottom], axis=0)


def _concrete(x) -> bool:
    try:
        np.asarray(x)
    except jax.errors.TracerArrayConversionError:
        return False
    return True


def _check_finite(name: str, A) -> None:
    """A clear error for a concrete array with NaN or inf (a traced one is not checked)."""
    if _concrete(A) and not np.all(np.isfinite(np.asarray(A))):
        raise ValueError(f"{name} contains NaN or inf")


def _check_hyper_parameters(network: AbstractNetwork, fields=None) -> None:
    """A clear error for a concrete hyper-parameter that breaks its rule
    (`_HYPER_PARAMETER_RULES`; all of them, or those named in `fields`)."""
    for field, name, rule, ok in _HYPER_PARAMETER_RULES:
        value = getattr(network, field)
        if (fields is None or field in fields) and _concrete(value):
            v = np.asarray(value)
            if np.isnan(v).any() or not np.all(ok(v)):
                raise ValueError(f"{name} must be {rule}, got {v}")


# The hyper-parameters' rules: (field, name, rule, test). The tests hold for NumPy and for
# traced values alike (NaN fails every comparison), so `_validate` checks concrete values
# with them and `_valid_hyper_parameters` traced ones.
_HYPER_PARAMETER_RULES = (
    ("width", "width", "> 0 (inf for the GP limit)", lambda v: v > 0),
    ("noise", "noise (σ²)", "> 0 and finite", lambda v: (v > 0) & (v < np.inf)),
    ("sigma_w2", "sigma_w2", "> 0 and finite", lambda v: (v > 0) & (v < np.inf)),
    ("sigma_a2", "sigma_a2", "> 0 and finite", lambda v: (v > 0) & (v < np.inf)),
)


def _validate(network: _N, X, Y) -> tuple[_N, Array, Array]:
    """Clear Python errors for bad input, before anything is traced or compiled; the network
    with its hyper-parameters as strongly typed arrays (`_canonical`), and X and Y as arrays
    of the common float dtype."""
    if not isinstance(network, AbstractNetwork):
        raise TypeError(f"network must be an fls_jax network (FCN, PatchCNN), got {type(network)}")
    for name, value, what in (("X", X, "inputs, n×d"), ("Y", Y, "targets, n or n×m")):
        if value is None:
            raise ValueError(f"{name} (the training {what}) is required, got None")
    guard_memory_maps(network, X, Y)
    X = jnp.asarray(X)
    Y = jnp.asarray(Y)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-d array (n, d), got shape {X.shape}")
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[0] != X.shape[0]:
        raise ValueError(f"Y must have shape (n,) or (n, m) with n = {X.shape[0]}, got {Y.shape}")
    if X.shape[0] < 1 or Y.shape[1] < 1:
        raise ValueError("need at least one training point and one output")
    for name, arr in (("X", X), ("Y", Y)):
        if jnp.iscomplexobj(arr):
            raise TypeError(f"{name} must be real, got dtype {arr.dtype}")
    network.check_input_dim(X.shape[1])
    U = network.inducing
    if U is not None and U.shape[1] != X.shape[1]:
        raise ValueError(f"inducing points must have d = {X.shape[1]} columns, got {U.shape}")
    for name, arr in (("X", X), ("Y", Y), ("inducing", U)):
        if arr is not None:
            _check_finite(name, arr)
    scalars = (("width", network.width), ("noise", network.noise))
    for name, value in (*scalars, ("sigma_a2", network.sigma_a2)):
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"{name} must be a scalar, got shape {jnp.shape(value)} (sweep it with "
                "fls_jax.sweep or jax.vmap over networks)"
            )
    _check_hyper_parameters(network)
    # The widest of the data's and the hyper-parameters' dtypes: with JAX's float64 enabled
    # a network's leaves are float64, and float32 data are promoted rather than mixed.
    params = _hyper_parameters(network)
    dtype = jnp.result_type(X.dtype, Y.dtype, *(jnp.result_type(p) for p in params), float)
    if jnp.finfo(dtype).bits < 64:
        _check_float32(network, X)
    return _canonical(network), X.astype(dtype), Y.astype(dtype)


def _check_key(key) -> None:
    """A single JAX PRNG key (typed, or the legacy uint32 pair), or a clear error."""
    typed = isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    legacy = getattr(key, "shape", None) == (2,) and getattr(key, "dtype", None) == jnp.uint32
    single = key.shape == () if typed else legacy
    if not (isinstance(key, jax.Array) and single):
        raise ValueError(f"key must be a single JAX PRNG key, e.g. jax.random.key(0), got {key!r}")


def _check_int(name: str, value, minimum: int) -> int:
    """`value` as an int, or a ValueError unless it is an integer (not a bool) ≥ `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_deep_float32(network: AbstractNetwork, X: Array) -> None:
    """Refuse a float32 solve of a deep network: its function-space layers did not converge
    in float32 where float64 did (depth-2 erf FCN, n = 48, C = 2 and 16, σ² at 2.5–6× the
    float32 threshold: relative residuals 1e-2–4.8 after 5000+ iterations; docs/performance.md)."""
    if network.depth > 1 and jnp.finfo(X.dtype).bits < 64:
        raise ValueError(
            "float32 is refused for networks of depth > 1: their deeper layers' EoS did not "
            "converge in float32. Enable float64 with jax.config.update('jax_enable_x64', "
            "True) (float64 data alone are not enough: without it JAX computes in float32)."
        )


def _check_max_stages(max_stages) -> None:
    if isinstance(max_stages, bool) or not isinstance(max_stages, int | np.integer):
        raise ValueError(f"max_stages must be a positive integer, got {max_stages!r}")
    if max_stages < 1:
        raise ValueError(f"max_stages must be a positive integer, got {max_stages}")


# Below this σ² / mean GP-kernel diagonal float32 is refused (docs/performance.md): at 1e-3
# the float32 solves of benchmarks/float32.py failed at C = 4 and the mean predictor lost
# 5e-4 of its size; at ≥ 1e-2 they converged with Σ within 1.5e-5 of float64.
_FLOAT32_MIN_NOISE_RATIO = 5e-3


def _check_float32(network: AbstractNetwork, X: Array) -> None:
    """Refuse float32 where K_f = Q_f + σ²I is too ill-conditioned for its Cholesky. Under
    standard scaling the GP kernel does not depend on the width, which may then be traced
    (`jax.vmap` over widths); under mean-field scaling it must be known (`sweep` checks
    each of its widths)."""
    leaves = (network.noise, network.sigma_w2, network.sigma_a2, X)
    if not all(_concrete(v) for v in leaves):
        return
    if not _concrete(network.width):
        if getattr(network, "scaling", "standard") != "standard":
            return
        network = eqx.tree_at(lambda net: net.width, network, 1.0)  # a stand-in
    Xd = jnp.asarray(X, jnp.float32)
    q = network.first_layer_kernel_diag(
        network.state_prior_covariance(X.shape[1]).astype(Xd.dtype), Xd
    )
    for layer in range(2, network.depth + 1):  # the GP diagonal through deeper layers
        q = network.post_scale(layer) * network.layer_activation(layer).kernel(q, q, q)
    ratio = float(network.noise) / float(jnp.mean(q))
    if not ratio >= _FLOAT32_MIN_NOISE_RATIO:
        raise ValueError(
            f"float32 is refused here: noise σ² is {ratio:.1e} of the mean GP-kernel diagonal "
            f"(float32 needs ≥ {_FLOAT32_MIN_NOISE_RATIO:g}); K_f = Q_f + σ²I is too "
            "ill-conditioned for a float32 Cholesky. Enable float64 with "
            "jax.config.update('jax_enable_x64', True) (float64 data alone are not enough: "
            "without it JAX computes in float32)."
        )


def _default_rtol(dtype) -> float:
    return 1e-11 if jnp.finfo(dtype).bits == 64 else 1e-5


def _krylov(rtol: float) -> RelativeGMRES:
    # lineax's GMRES always completes a restart cycle, so short cycles waste fewest
    # Jacobian products: restart 20 measured 2× faster per Newton step than 60 (n = 256).
    return RelativeGMRES(rtol=rtol, restart=20, max_steps=100)


# Above this many first-layer unknowns S(S+1)/2 a one-hidden-layer Newton step uses GMRES:
# a dense Jacobian costs one Jacobian-vector product per unknown. Measured on an erf FCN
# (d = 32, 528 unknowns, n = 256): 15–17× faster per solve at C = 64 … 4096, 1.2× at C = 8,
# same Σ to 6e-15 (`benchmarks/RESULTS.md`).
_DENSE_NEWTON_MAX = 256


def _unknowns(filter_size: int) -> int:
    """The first layer's unknowns: the S(S+1)/2 entries of Σ⁻¹'s upper triangle."""
    return filter_size * (filter_size + 1) // 2


def _newton(dtype, depth: int = 1, filter_size: int = 1) -> DampedNewton:
    """Damped Newton; its linear solver is a dense LU of the S(S+1)/2-dimensional Jacobian
    for one hidden layer with few unknowns, and matrix-free GMRES on Jacobian-vector
    products otherwise (S(S+1)/2 > 256, or deeper networks, whose unknowns include n×n
    precisions): an inexact Newton method, each step solved to 10⁻⁴ relative, enough for
    the outer iteration's fast convergence."""
    if depth == 1 and _unknowns(filter_size) <= _DENSE_NEWTON_MAX:
        return DampedNewton(rtol=_default_rtol(dtype), atol=0.0)
    return DampedNewton(rtol=_default_rtol(dtype), atol=0.0, linear_solver=_krylov(1e-4))


class _Subspace(eqx.Module):
    """M R on the packed residual, for U = (u₁ … u_k) orthonormal (S×k) and the
    Frobenius-orthogonal split R = U B Uᵀ + (C Uᵀ + U Cᵀ) + P R P (B = UᵀRU, C = P R U,
    P = I − U Uᵀ): M R = U (B ⊙ D) Uᵀ + (C' Uᵀ + U C'ᵀ) + P R P with C' = C diag(c). That is,
    R's component along u_i u_jᵀ + u_j u_iᵀ is scaled by D_ij and its component in
    {u_i vᵀ + v u_iᵀ : v ⊥ U} by c_i; D_ij, c_i ∈ (0, 1], so M is positive definite."""

    U: Array
    D: Array
    c: Array

    def __call__(self, f: Array) -> Array:
        U = self.U
        R = _unpack(f, U.shape[0])
        RU = R @ U
        B = U.T @ RU
        dC = (RU - U @ B) * (self.c - 1)
        dR = U @ (B * (self.D - 1)) @ U.T + dC @ U.T + U @ dC.T
        return _pack(R + dR)


class _LearnedSubspace(AbstractPreconditioner):
    """One hidden layer's warm-start preconditioner (`docs/equations.md`): the stiff part
    of the EoS Jacobian J at a solution is the subspace {u vᵀ + v uᵀ} of Σ's top eigenvectors
    u (the learned directions), where −J's eigenvalues grow with n/C while the rest stay
    near 1, so the plain step overshoots there. With U the top `directions` eigenvectors of
    Σ (Λ's smallest), M divides R's component along E_ij = u_i u_jᵀ + u_j u_iᵀ (i ≤ j) by
    q_ij = −⟨E_ij, J E_ij⟩/⟨E_ij, E_ij⟩ and its component in {u_i vᵀ + v u_iᵀ : v ⊥ U} by
    the Rayleigh quotient r_i on one such direction (v a fixed pseudo-random unit vector),
    each floored at 1 (`_Subspace`): k(k+1)/2 + k Jacobian-vector products at the start."""

    directions: int = eqx.field(static=True, default=3)

    def build(self, fn, y, args, active):
        S = (math.isqrt(8 * y.size + 1) - 1) // 2  # y holds S(S+1)/2 entries
        k = min(self.directions, S)
        lam = _unpack(y, S)
        U = _eigh(0.5 * (lam + lam.T))[1][:, :k]  # Λ's smallest: Σ's top
        z = jax.random.normal(jax.random.key(0), (S, k), y.dtype)
        z = z - U @ (U.T @ z)
        z = z / jnp.linalg.norm(z, axis=0)  # NaN where U spans R^S: c_i is then moot
        pairs = [(i, j) for i in range(k) for j in range(i, k)]
        E = [jnp.outer(U[:, i], U[:, j]) for i, j in pairs]
        E = [e + e.T if i != j else e for e, (i, j) in zip(E, pairs, strict=True)]
        E += [jnp.outer(U[:, i], z[:, i]) + jnp.outer(z[:, i], U[:, i]) for i in range(k)]
        E = jnp.stack(E)

        def quotients():
            _, lin = jax.linearize(lambda v: fn(v, args)[0], y)
            JE = jax.vmap(lambda e: _unpack(lin(_pack(e)), S))(E)
            return -jnp.sum(E * JE, axis=(1, 2)) / jnp.sum(E * E, axis=(1, 2))

        q = jax.lax.cond(active, quotients, lambda: jnp.ones(len(E), y.dtype))
        factor = jnp.where(jnp.isfinite(q), 1 / jnp.maximum(q, 1.0), 1.0)
        D = _unpack(factor[: len(pairs)], k)  # `pairs` is `_pack`'s order
        return _Subspace(U=U, D=D, c=factor[len(pairs) :])


def _anderson_newton(dtype, depth: int = 1, filter_size: int = 1) -> tuple:
    """`solver="anderson-newton"`, the default for deeper networks and more than
    `_DESCENT_MAX_UNKNOWNS` first-layer unknowns: Anderson acceleration (one residual per
    iteration), and where it fails, damped Newton from the same point (`_newton`). For
    deeper networks Anderson mixes with a fixed β = 0.1 and cuts back a step that leaves the
    domain or raises the residual more than 10× (`_DEEP_MIXING`). For one hidden
    layer it mixes a preconditioned residual from warm starts (`_LearnedSubspace`)."""
    deep = depth > 1
    anderson = Anderson(
        rtol=_default_rtol(dtype),
        atol=0.0,
        memory=_ANDERSON_MEMORY,
        mixing=_DEEP_MIXING if deep else 1.0,
        patience=_DEEP_PATIENCE if deep else _ANDERSON_PATIENCE,
        max_growth=_DEEP_MAX_GROWTH if deep else float("inf"),
        preconditioner=None if deep else _LearnedSubspace(),
    )
    return (anderson, _newton(dtype, depth, filter_size))


def _descent_fits(depth: int, filter_size: int) -> bool:
    return depth == 1 and _unknowns(filter_size) <= _DESCENT_MAX_UNKNOWNS


def _descent_solver(dtype, depth: int = 1, filter_size: int = 1, whiten: bool = False) -> tuple:
    """`solver="descent"`, the default for one hidden layer with at most
    `_DESCENT_MAX_UNKNOWNS` first-layer unknowns: `_anderson_newton` with a BFGS descent on
    the free energy (`FreeEnergyBFGS`) between Anderson and Newton, so that Newton starts
    within 10⁻² of a solution; the descent and Newton run once a continuation stage has
    failed (`_escalation`). One hidden layer only (the descent's stopping rule reads R off
    its gradient). `solver="whitened-descent"` (`whiten`) is the same chain with the
    descent started from Σ-whitened curvature (`FreeEnergyBFGS`'s `whiten`)."""
    if not _descent_fits(depth, filter_size):
        name = "whitened-descent" if whiten else "descent"
        raise ValueError(
            f'solver="{name}" is for one hidden layer with at most '
            f"{_DESCENT_MAX_UNKNOWNS} first-layer unknowns S(S+1)/2 (its BFGS matrix is "
            f"dense); this network has depth {depth} and {_unknowns(filter_size)}. Use "
            'solver="anderson-newton".'
        )
    anderson, newton = _anderson_newton(dtype, depth, filter_size)
    return (anderson, FreeEnergyBFGS(handover=_HANDOVER, whiten=whiten), newton)


def _resolve_solver(solver, dtype, depth: int, filter_size: int):
    """`solve`'s `solver`: None ("descent" where it fits, else "anderson-newton"), one of
    those names, or what the user passed."""
    if solver is None:
        solver = "descent" if _descent_fits(depth, filter_size) else "anderson-newton"
    if isinstance(solver, str):
        if solver in ("descent", "whitened-descent"):
            return _descent_solver(dtype, depth, filter_size, whiten=solver != "descent")
        if solver == "anderson-newton":
            return _anderson_newton(dtype, depth, filter_size)
        raise ValueError(
            'solver must be None, "descent", "whitened-descent", "anderson-newton" or '
            f"optimistix solvers, got {solver!r}"
        )
    solvers = solver if isinstance(solver, list | tuple) else (solver,)
    if depth > 1 and any(isinstance(s, FreeEnergyBFGS) for s in solvers):
        raise ValueError("FreeEnergyBFGS is for one hidden layer (it reads R off its gradient)")
    return solver


# The descent's BFGS keeps a dense inverse Hessian of the S(S+1)/2 unknowns per element of
# a vmap: 35 MiB at S = 64, the largest S allowed.
_DESCENT_MAX_UNKNOWNS = 2080
# Relative residual at which the descent hands over to Newton (`FreeEnergyBFGS`).
_HANDOVER = 1e-2


_ANDERSON_MEMORY = 30
# Iterations without halving the smallest residual before the chain moves on to Newton:
# erf FCN n = 128, C = 1 took 630 iterations with 40 against 1597 with none (and 883 with
# 60); at C = 8 and 4 (one stage, 130–142 iterations) 40 changed nothing, 10–20 cut
# converging runs short.
_ANDERSON_PATIENCE = 40
# Deeper networks: a plain step y + R(y) from a wider width's solution raised ‖R‖ ~170×
# (the shifts couple to the first layer through K^(2)'s learned top direction). With β = 1
# every step was cut back and restarted the history, and narrow widths took thousands of
# iterations over dozens of continuation stages. With β = 0.1 the history builds up, though
# the first ~50 iterations may raise the residual before it falls (hence the longer
# patience). Three-layer erf FCN, deep-erf teacher, 13 widths 30000 … 90: n = 128, 3457 →
# 795 iterations; n = 512, 2432 → 195 s, every width in one stage (`benchmarks/RESULTS.md`,
# 2026-11-30). Adaptive mixing from β = 1 took 676 iterations at n = 128 but 4 stages at
# n = 512, C = 90 (259 s). One hidden layer keeps a fixed β = 1: adaptive mixing saved
# iterations at n = 1024, C = 64 (erf FCN: 86 → 55) but took 310 against 105 at n = 2048,
# and 428 against 109 in the chain at n = 256, C = 8. Deeper networks dropped adaptive mixing
# too (2026-12-02): β, once halved, never recovered, and Anderson stalled where early steps
# had to be cut back. Deep linear FCN (n = 64, d = 16, C = 4) from the GP limit: 460 iterations
# in 6 stages → 69 in 1; erf depth 2 (n = 128, C = 4): 887 / 9 → 594 / 6; the depth-3 erf
# path sweep unchanged (2455 → 2471) (`benchmarks/deep_mixing.py`, `benchmarks/RESULTS.md`).
_DEEP_MIXING = 0.1
_DEEP_PATIENCE = 100
_DEEP_MAX_GROWTH = 10.0


def _default_max_steps(
    solver: optx.AbstractRootFinder | optx.AbstractMinimiser, filter_size: int, depth: int = 1
) -> int:
    if isinstance(solver, optx.AbstractMinimiser):
        return max(_DESCENT_MAX_STEPS, _DESCENT_STEPS_PER_UNKNOWN * _unknowns(filter_size))
    if isinstance(solver, Anderson):
        return _ANDERSON_MAX_STEPS if depth == 1 else _DEEP_ANDERSON_MAX_STEPS
    return _MAX_STEPS


Chain = tuple[tuple[optx.AbstractRootFinder | optx.AbstractMinimiser, int], ...]


def _chain(solver, max_steps, filter_size: int, depth: int = 1) -> Chain:
    """Normalise `solve`'s `solver` (a root finder, or a sequence of root finders and
    minimisers, each minimiser followed by a root finder) and `max_steps`
    (None, an int for all, or one per solver) to ((solver, max_steps), …). A minimiser's
    default cap grows with the S(S+1)/2 first-layer unknowns, and Anderson's is higher for
    deeper networks (`_default_max_steps`)."""
    solvers = tuple(solver) if isinstance(solver, list | tuple) else (solver,)
    kinds = (optx.AbstractRootFinder, optx.AbstractMinimiser)
    if not solvers or not all(isinstance(s, kinds) for s in solvers):
        raise TypeError(
            "solver must be an optimistix root finder or a sequence of root finders and "
            f"minimisers, got {solver}"
        )
    for s, after in zip(solvers, (*solvers[1:], None), strict=True):
        if isinstance(s, optx.AbstractMinimiser) and not isinstance(after, optx.AbstractRootFinder):
            raise ValueError(
                f"a minimiser in `solver` must be followed by a root finder, got {solvers}"
            )
    if max_steps is None:
        steps = tuple(_default_max_steps(s, filter_size, depth) for s in solvers)
    elif isinstance(max_steps, list | tuple):
        steps = tuple(max_steps)
    else:
        steps = (max_steps,) * len(solvers)
    if len(steps) != len(solvers) or not all(
        isinstance(k, int | np.integer) and k >= 1 for k in steps
    ):
        raise ValueError(
            f"max_steps must be None, an int ≥ 1 or one such int per solver, got {max_steps}"
        )
    return tuple((s, int(k)) for s, k in zip(solvers, steps, strict=True))


def _default_adjoint(depth: int = 1) -> optx.AbstractAdjoint:
    if depth == 1:
        return _ADJOINT
    return optx.ImplicitAdjoint(linear_solver=_krylov(1e-9))


# Defaults of `solve`, shared with the path schedule of `sweep`: iterations per root find of
# Newton and of Anderson acceleration, and continuation stages.
_MAX_STEPS = 12
_ANDERSON_MAX_STEPS = 200
# Deeper networks: a cap of 200 cut off root finds that were still converging at narrow widths,
# and each cut-off quartered the continuation's step. A depth-3 erf FCN in the authors' style
# (n = 32, C = 2) took 64 stages and failed with 200; 4 stages and 1100 iterations with 400 to
# 1000. `benchmarks/deep_tasks.py`, seeds 1 and 2: 297 stages, 42852 iterations, 2 failed →
# 140 / 16654 / 0 with 600 (300: 146 / 17838; 400: 143 / 17257). The authors' depth-3 path
# sweep (n = 128): 2598 → 2053 iterations (82.5 s against 70–79 s). With 1000 neither
# changed: the root finds that fail stop first by their patience (`_DEEP_PATIENCE`) or a
# growing residual (stop 64, `benchmarks/RESULTS.md`).
_DEEP_ANDERSON_MAX_STEPS = 600
_DESCENT_MAX_STEPS = 1000
# BFGS builds its curvature from one gradient per step, so a descent needs more steps the
# more unknowns it has: erf FCN d = 64 (2080 unknowns), n = 256, C = 1 took ~2550 BFGS steps
# (one stage, 49 s); capped at 1000 it gave up and the continuation took 11 stages (174 s).
_DESCENT_STEPS_PER_UNKNOWN = 2
_MAX_STAGES = 64
# The one-hidden-layer adjoint: GMRES to 1e-10, a dense LU where that fails (`KrylovOrDense`).
_ADJOINT = optx.ImplicitAdjoint(linear_solver=KrylovOrDense(_krylov(1e-10)))


def _state_scale(network: AbstractNetwork, X: Array) -> tuple[Array, ...]:
    """The factors on the solver's blocks (`_to_state`): 1 for one hidden layer; for deeper
    networks Σ⁻¹ times σ_w²(1)/2 and each Δ_l times q_l, the mean diagonal of its layer's
    GP-limit pre-kernel Q^(l−1) (`_gp_diagonal_scales`), so that every block is measured in
    its own layer's units. Two maps of the hyper-parameters leave the network's function
    unchanged and move the blocks apart, and these factors follow both:

    - inputs ×α with σ_w²(1) ÷α²: Σ⁻¹ grows by α² as 1/σ_w²(1) does, the q_l stay;
    - for a homogeneous φ (ReLU, linear), σ_w²(l) ×c with σ_w²(l+1) ÷c (σ_a² ÷c for l = L):
      Σ⁻¹ falls by c (l = 1) as 1/σ_w²(1) does, or Δ_l by c as 1/q_l does.

    In raw units the solvers' norms weighed the blocks α² or c apart: a depth-2 erf FCN failed
    at α = 1000 (stop 62), a depth-3 ReLU FCN at c = 10³ on its last pair of layers (stop 63;
    `benchmarks/RESULTS.md`, `benchmarks/input_scale.py`). Invariance fixes all but the
    constant in κσ_w²(1): κ = ½ makes it 1 on the authors' data (σ_w² = 2), the raw weighting
    with which the deep solvers were tuned. κ = 1 took their depth-3 path sweep 4995
    iterations against 2598 (stop 63), and the prior's units, κ = 1/S, 2902 (stop 62, with
    raw Δ_l). A non-finite or zero scale (all-zero inputs) is replaced by 1."""
    if network.depth == 1:
        return (jnp.ones((), X.dtype),)
    return (_finite_scale(network.layer_sigma_w2(1) / 2), *_gp_diagonal_scales(network, X))


def _finite_scale(x: Array) -> Array:
    return jnp.where((x > 0) & jnp.isfinite(x), x, 1.0)


def _gp_diagonal_scales(network: AbstractNetwork, X: Array) -> tuple[Array, ...]:
    """(q_2, …, q_L): the mean diagonal of Q^(1), …, Q^(L−1) at the GP limit (K^(l) = Q^(l−1),
    SPEC §3). A diagonal needs only diagonals: the first layer's pre-activation variances
    σ_w²/S ‖x_i‖² per patch, then q ↦ post_scale · Φ(q, q, q) layer by layer, O(nd)."""
    patches = network.patches(X)
    var = network.layer_sigma_w2(1) / patches.shape[-1] * jnp.sum(patches**2, axis=-1)
    diag = network.post_scale(1) * jnp.mean(network.layer_activation(1).kernel(var, var, var), 0)
    scales = []
    for layer in range(2, network.depth + 1):
        scales.append(_finite_scale(jnp.mean(diag)))
        if layer < network.depth:
            diag = network.post_kernel_diagonal(layer, diag)
    return tuple(scales)


def _to_state(lam1: Array, shifts: tuple[Array, ...], scale: tuple[Array, ...]):
    """The solver's unknowns: the upper triangle of Σ⁻¹ (one hidden layer), or, for deeper
    networks, that and the deeper layers' n×n precision shifts Δ_l (`_shift_residuals`),
    each times its factor of `_state_scale`."""
    if not shifts:
        return _pack(lam1)
    return (_pack(scale[0] * lam1), *(s * d for s, d in zip(scale[1:], shifts, strict=True)))


def _from_state(state, S: int, scale: tuple[Array, ...]) -> tuple[Array, tuple[Array, ...]]:
    if isinstance(state, tuple):
        shifts = tuple(d / s for s, d in zip(scale[1:], state[1:], strict=True))
        return _unpack(state[0], S) / scale[0], shifts
    return _unpack(state, S), ()


def _gp_state(network: AbstractNetwork, X: Array):
    """The GP limit (SPEC §3): Σ = Σ₀ and K^(l) = Q^(l−1), i.e. all shifts zero."""
    lam1 = network.state_prior_precision(X.shape[1]).astype(X.dtype)
    n = X.shape[0]
    shifts = tuple(jnp.zeros((n, n), X.dtype) for _ in range(network.depth - 1))
    return _to_state(lam1, shifts, _state_scale(network, X))


def _width_at(u: Array) -> Array:
    """C = 1/u, ∞ at u = 0 (the GP limit): the inverse of `_inverse_width`."""
    return jnp.where(u > 0, 1 / jnp.where(u > 0, u, 1.0), jnp.inf)


def _with_width(network: AbstractNetwork, width) -> AbstractNetwork:
    return eqx.tree_at(lambda net: net.width, network, jnp.asarray(width, network.width.dtype))


class _Continuation(eqx.Module):
    u: Array  # inverse width reached so far (0 = the GP limit)
    lam: Any  # the converged unknowns at u
    h: Array  # next step in u
    steps: Array  # iterations spent (all solvers)
    stages: Array  # root finds tried
    failures: Array  # stages failed in a row (or in all, `_escalation`)
    done: Array
    failed: Array


def _masked(fn, active):
    """`fn` where `active`, else zero (a zero residual, or a constant free energy), so that
    a skipped element's solve stops at its first check: under vmap a `lax.cond` runs both
    branches, and without the mask every element would run the fallback solver wherever
    one needed it."""
    return lambda y, a: jax.tree.map(lambda r: jnp.where(active, r, 0.0), fn(y, a))


def _descend(solver, max_steps, lam, args, active) -> tuple[Any, Array, Array]:
    """A minimiser of the chain on F/C from `lam`: (its end point where it succeeded, else
    `lam`; whether it did; its steps). Without vmap an inactive element skips it."""

    def run():
        energy = _masked(_state_free_energy, active)
        sol = optx.minimise(energy, solver, lam, args=args, max_steps=max_steps, throw=False)
        good = active & (sol.result == optx.RESULTS.successful)
        return _where(good, sol.value, lam), good, sol.stats["num_steps"]

    return jax.lax.cond(active, run, lambda: (lam, active, jnp.array(0)))


def _options(solver, warm) -> dict | None:
    """A root find's optimistix `options`: an Anderson solver's preconditioner is built only
    where the start is warm (a converged point of a neighbouring problem)."""
    return {"precondition": warm} if isinstance(solver, Anderson) else None


def _root(fn, solver, max_steps, start, lam, args, active, value, ok, warm):
    """A root finder of the chain from `start`: (the root where it succeeded, else `value`
    if an earlier one did, else `lam`; success; its steps)."""

    def run():
        sol = optx.root_find(
            _masked(fn, active),
            solver,
            start,
            args=args,
            options=_options(solver, warm),
            max_steps=max_steps,
            throw=False,
        )
        good = active & (sol.result == optx.RESULTS.successful)
        return _where(good, sol.value, lam), good, sol.stats["num_steps"]

    # Without vmap the cond skips a solver outright; under vmap both branches run, and
    # the skipped elements' root finds stop at their first check (`_masked`).
    return jax.lax.cond(active, run, lambda: (value, ok, jnp.array(0)))


def _attempt(
    fn, chain: Chain, lam, args, failures, after: int, warm
) -> tuple[Any, Array, Array, Any]:
    """Root-find from `lam` with the root finders of `chain` in turn: the i-th (i ≥ 1)
    starts again from `lam`, and runs only where all earlier ones failed and the
    continuation has already failed `i × after` times in a row (`failures`,
    `_fallback_after`). A minimiser in the chain descends the free energy from `lam`
    (`_state_free_energy`) under the same rule as the root finder after it, which then
    starts from its end point, and runs only where the descent succeeded. Returns the
    value reached (`lam` where all failed), whether a root finder succeeded, the
    iterations spent, and where a root finder after the chain would start (the end point
    of a trailing minimiser that succeeded, else the value). `warm`: whether `lam` is a
    converged point of a neighbouring problem (`_options`)."""
    value, ok, steps = lam, jnp.array(False), jnp.array(0)
    start, ready = lam, jnp.array(True)  # where the next root finder starts; may it run
    rank = 0  # root finders so far
    for solver, max_steps in chain:
        active = ready & ~(ok | (failures < rank * after))
        if isinstance(solver, optx.AbstractMinimiser):
            start, ready, new_steps = _descend(solver, max_steps, lam, args, active)
        else:
            value, ok, new_steps = _root(
                fn, solver, max_steps, start, lam, args, active, value, ok, warm
            )
            start, ready, rank = lam, jnp.array(True), rank + 1
        steps = steps + new_steps
    return value, ok, steps, _where(ok | ~ready, value, start)


def _escalation(chain: Chain, depth: int) -> tuple[int, bool]:
    """How a continuation escalates through `chain`: (stages that must fail before each
    further solver may run, whether that count survives a success).

    A chain without a minimiser: `_fallback_after`, counting failures in a row. A chain
    with one (`solver="descent"`): the first stage tries the target with the first root
    finder alone; once a stage has failed, every later stage may run the whole chain. A
    descent that jumped from the GP limit to the target could end in another minimum of F
    than the continuation's (erf PatchCNN S = 16, P = 8, n = 256, C = 4: F = −48.596 against
    −48.900); started from the continuation's last converged point it reached the
    continuation's (`docs/performance.md`, 2026-12-01). The count stays up after a success
    because otherwise each success switched the descent off again, the next stage failed,
    and the step in 1/C shrank geometrically (erf FCN n = 256, C = 1: 64 stages, no
    convergence)."""
    if any(isinstance(s, optx.AbstractMinimiser) for s, _ in chain):
        return _DESCENT_AFTER, True
    return _fallback_after(depth), False


# Stages that must fail before a chain's minimiser (and what follows it) may run.
_DESCENT_AFTER = 1


def _fallback_after(depth: int) -> int:
    """Stages that must fail in a row before a continuation stage uses the chain's next
    solver. For one hidden layer at once: a dense Newton step costs ~100 residuals and it
    rescues the hard widths (erf FCN n = 256, C = 1: with 1 the continuation ran out of
    stages). For deeper networks after one failure: there a GMRES Newton step costs ~350
    residuals, and Anderson on a shorter step in u was 3.6–10× faster than falling back at
    once (depth 2, n = 128, C = 4 and 8; measured while developing, 2026-11-30)."""
    return 0 if depth == 1 else 1


# From the GP limit, a one-hidden-layer continuation's first stage aims for the width at which
# the GP start's relative residual is this (`_first_fraction`). Against trying the target
# directly (with the warm-start preconditioner in both): erf FCN d = 32, C = 64, n = 1024 /
# 2048: 69 / 117 → 51 / 59 iterations; n = 512, C = 16 / 4 / 1: 127 / 360 / 538 → 84 / 115 /
# 162; 0.5 and 0.25 were within 20 % of 1 either way (`benchmarks/RESULTS.md`, 2026-12-01).
_FIRST_RESIDUAL = 1.0


def _first_fraction(fn, network, X, Y, u0, lam0) -> Array:
    """The fraction of the way to the target in u = 1/C that the first stage tries. From
    the GP limit of one hidden layer the residual R = 2u ∂_Σ D(Σ₀) is linear in u, so
    ‖R‖/‖Λ‖ at the target, r, gives the u at which it is `_FIRST_RESIDUAL`: aim there
    (fraction min(1, ρ/r)), and let the warm, preconditioned stages after it go on. A
    first step straight to the target from a large r wandered for most of its iterations
    (n = 2048: relative residual 4.7 at the start). Deeper networks keep the direct try."""
    one = jnp.ones((), X.dtype)
    if network.depth > 1:
        return one

    def aimed():
        r = _fro(fn(lam0, (network, X, Y))) / _fro(lam0)
        frac = jnp.minimum(1.0, _FIRST_RESIDUAL / r)
        return jnp.where(jnp.isfinite(frac) & (frac > 0), frac, 1.0).astype(X.dtype)

    # From a converged width (a path sweep) the target directly: no residual is evaluated.
    return jax.lax.cond(u0 > 0, lambda: one, aimed)


def _jacobian_sign(fn, lam, u, network, X, Y) -> Array:
    """The sign of det ∂R/∂Λ of the residual `fn` at the unknowns `lam` and width 1/u."""
    flat, unravel = ravel_pytree(lam)
    args = (_with_width(network, _width_at(u)), X, Y)
    return jacobian_sign(lambda z: ravel_pytree(fn(unravel(z), args))[0], flat)


def _continuation(
    fn, chain: Chain, u0, lam0, network, X, Y, max_stages: int, keep_sign: bool = False
):
    """Adaptive homotopy in u = 1/C from a solved point (u0, Λ0) to the target width (SPEC §3).

    `solve` starts from the GP limit (u0 = 0, Λ0 = Σ₀⁻¹); a path sweep starts from the
    previous, wider, solution. The first stage tries the target directly, so easy problems
    cost one root find; from the GP limit of one hidden layer with strong feature learning
    it tries the width where the GP start's residual is ρ = 1 instead (`_first_fraction`).
    Each stage tries the solvers of `chain` in turn (`_attempt`). A stage that fails
    quarters the step in u and retries from the last converged point; one that succeeds
    doubles the next step. Failed stages unlock the chain's later solvers (`_escalation`).
    A stage from a converged width is a warm start (`_options`). Each vmapped element
    follows its own path. Inputs are `stop_gradient`-ed: derivatives come from the final
    root find's implicit adjoint.

    `keep_sign` (`solve(past_folds=True)`, dense): a stage whose root is found is accepted
    only where det ∂R/∂Λ there has the sign it has at the start, else it counts as failed.
    Past a fold no solution is near, and a root finder may converge to a solution on
    another branch: an odd number of folds away, det ∂R/∂Λ has the other sign. Seed 0 of
    `benchmarks/deep_narrow_scan.py` at σ² = 10⁻³, C = 2 jumped from C = 3.765 across the
    fold at 3.577 onto a saddle of F at 3.048 (F's Hessian index 1), then stalled at 3.003,
    with XLA's default code generation on an AMD EPYC (stop 67); with the check it stops at
    the fold, and the arclength goes on from there as designed.
    """
    network, X, Y, u0, lam0 = jax.lax.stop_gradient((network, X, Y, u0, lam0))
    u_target = _inverse_width(network)
    after, sticky = _escalation(chain, network.depth)
    # The sign of det ∂R/∂Λ at the start, which every accepted stage must keep (`keep_sign`).
    sign0 = _jacobian_sign(fn, lam0, u0, network, X, Y) if keep_sign else None

    def cond(c: _Continuation):
        return ~(c.done | c.failed)

    def body(c: _Continuation):
        u_try = jnp.minimum(u_target, c.u + c.h)
        args = (_with_width(network, _width_at(u_try)), X, Y)
        # A stage from a converged width (not the GP limit) is a warm start (`_options`).
        lam, ok, steps, _ = _attempt(fn, chain, c.lam, args, c.failures, after, c.u > 0)
        if keep_sign:
            same = jax.lax.cond(
                ok,
                lambda: _jacobian_sign(fn, lam, u_try, network, X, Y) == sign0,
                lambda: jnp.array(True),
            )
            ok = ok & same
            lam = _where(ok, lam, c.lam)
        stages = c.stages + 1
        return _Continuation(
            u=jnp.where(ok, u_try, c.u),
            lam=lam,
            h=jnp.where(ok, 2 * c.h, 0.25 * c.h),
            steps=c.steps + steps,
            stages=stages,
            failures=jnp.where(ok, c.failures if sticky else 0, c.failures + 1),
            done=ok & (u_try >= u_target),
            failed=stages >= max_stages,
        )

    init = _Continuation(
        u=u0,
        lam=lam0,
        h=(u_target - u0) * _first_fraction(fn, network, X, Y, u0, lam0),
        steps=jnp.array(0),
        stages=jnp.array(0),
        failures=jnp.array(0),
        done=u_target <= u0,
        failed=~_valid_hyper_parameters(network),  # no stage at all for invalid ones
    )
    return jax.lax.while_loop(cond, body, init)


def solve(
    network: AbstractNetwork,
    X: Float[ArrayLike, "n d"],
    Y: Float[ArrayLike, "n m"] | Float[ArrayLike, " n"],
    *,
    solver: optx.AbstractRootFinder | Sequence[Any] | str | None = None,
    max_steps: int | Sequence[int] | None = None,
    max_stages: int = _MAX_STAGES,
    precision0: Float[ArrayLike, "S S"] | tuple | None = None,
    adjoint: optx.AbstractAdjoint | None = None,
    past_folds: bool = False,
    minimise: bool = False,
) -> Solution:
    """Solve the Equations of State of SPEC §3.

    For one hidden layer the unknown is the precision Λ = Σ⁻¹ and the residual is
    R(Λ) = Σ₀⁻¹ − Λ − (1/C) ∂_Σ tr[A Q_f(Σ)] (A = TTᵀ − m K_f⁻¹ held fixed), i.e.
    (2/C) ∂F/∂Σ.
    For depth L > 1 the unknowns are Σ⁻¹ and the deeper layers' n×n precision shifts
    Δ_l = K^(l)⁻¹ − Q^(l−1)⁻¹, with the residuals of [`fls_jax.eos_residual`][]; no Q^(l−1)⁻¹ is
    formed, so singular GP-limit priors (duplicate inputs, a deep linear FCN with n > d) are
    solved too. The solver is a chain of optimistix solvers, tried in turn at each continuation
    stage. The solve starts from the GP limit and tries the target width directly with the
    chain's first solver (for one hidden layer, at most as far as the width where the GP start's
    relative residual is 1); where that fails (small widths, strong feature learning) an
    automatic homotopy in 1/C takes over, adapting its own steps, separately for each element of
    a vmap, and its stages may use the rest of the chain. The default is `"descent"` for one
    hidden layer with S(S+1)/2 ≤ 2080 first-layer unknowns: [`fls_jax.Anderson`][] acceleration
    of the fixed-point map (one residual evaluation per iteration); where it fails, a BFGS
    descent on the free energy ([`fls_jax.FreeEnergyBFGS`][]) to within 10⁻² of a solution, then
    [`fls_jax.DampedNewton`][] from there. The descent and Newton run once a stage has failed,
    from the continuation's last converged point, which keeps the descent on the continuation's
    branch of solutions (`docs/performance.md`). From a warm start (a continuation stage after
    the first, a path sweep's next width, `precision0`) Anderson mixes a residual rescaled along
    Σ's three top (learned) directions (nine Jacobian-vector products; `docs/equations.md`).
    Otherwise (deeper networks, larger S) `"anderson-newton"`: Anderson, and where it fails,
    Newton from the same point (dense LU for S(S+1)/2 ≤ 256 unknowns, matrix-free GMRES
    otherwise). Gradients with respect to the hyper-parameters and the data flow by implicit
    differentiation of the final root find.

    **Arguments:**

    - `network`: an [`fls_jax.FCN`][] or [`fls_jax.PatchCNN`][].
    - `X`: training inputs (n×d). `Y`: targets (n×m, or n for one output).
    - `solver`: None (above), `"descent"`, `"anderson-newton"` (rtol 1e-11 in float64),
      `"whitened-descent"` (`"descent"` with `FreeEnergyBFGS(whiten=True)`: 5–8× faster
      on anisotropic inputs such as the digits' pixels, but on a PatchCNN with several
      minima of F it followed another branch; `docs/equations.md`), an optimistix root
      finder, or a sequence of root finders and minimisers tried in turn at each
      continuation stage. A minimiser (`optx.AbstractMinimiser`) minimises F/C from
      the stage's start and the root finder after it starts from its end point, where it
      succeeded; in a chain with a minimiser, the solvers after the first run once a stage
      has failed. The last solver must be a root finder.
    - `max_steps`: iteration cap of each root find (continuation stage): one int for all
      solvers or one per solver (default: 200 for Anderson, 600 for deeper networks;
      max(1000, S(S+1)) for a minimiser; 12 for others).
    - `max_stages`: cap on the continuation stages (root finds) before giving up.
    - `precision0`: a starting Σ⁻¹ (e.g. the solution at a neighbouring width), or for
      depth L > 1 the tuple of unknowns (Σ⁻¹, Δ_2, …, Δ_L), i.e.
      `(sol.precision, *sol.kernel_shifts)`; with `weight_mean`, the (S+1)×(S+1) augmented
      precision of [`fls_jax.eos_residual`][]. A start where F is not finite (shifts that
      make a K^(l) indefinite) is refused. Given, it replaces the GP-limit start *and* the
      continuation: one root find from there.
    - `adjoint`: how to differentiate (default: implicit, no backprop through iterations).
    - `past_folds`: where the continuation in 1/C stops short of the target (its branch of
      solutions folds back, or it stalls where the curve nearly does; README, "Known
      limitations"), go on from its last converged width by pseudo-arclength continuation
      (`fls_jax.trace`'s method, jit-compiled and per element of a vmap) through the folds to
      the target width. Past a fold the solution is on another branch of solutions than the
      GP limit's, connected to it through the folds: `num_folds` counts them, and
      [`fls_jax.hessian_index`][] says whether it is a minimum of F. With it the
      continuation also refuses a root on another branch (the sign of det ∂R/∂Λ changed: a
      root finder jumped across a fold), so that the arclength starts on the GP limit's
      branch. Dense (O(N³) per point along the curve, N unknowns): at most 3000 unknowns,
      float64, no `weight_mean`, no `precision0`. Off by default: it compiles a dense
      Jacobian into the solve. The continuation's failing stages come first: with it, a
      smaller `max_stages` (16) took the 6 networks of `docs/deep.md` to the same solutions
      in 62 s instead of 106 s (stop 66).
    - `minimise`: after the continuation (and `past_folds`, or `precision0`'s root find),
      minimise F at the target width from the point reached, converged or not, then run
      the chain's root finders from the minimiser's end: a trust-region Newton method
      whose steps are truncated conjugate gradients on F's Hessian-vector products
      (Steihaug), in coordinates whitened by the layers' covariances at each iteration's
      point (those of [`fls_jax.hessian_index`][]'s Lanczos), at most 500 iterations.
      Matrix-free, so at any n, and it needs no path in C: where the continuation stops
      short of the target (a fold, a stall) it can reach a solution there, and where it
      ends at a saddle of F it follows a direction of negative curvature off it. Where it
      finds no root, the continuation's result stands. The solution is a stationary point
      of F reached by descent, normally a minimum: check [`fls_jax.hessian_index`][]. It
      need not be the branch connected to the GP limit's (`past_folds`' answer) nor F's
      lowest minimum (`docs/deep.md`). A saddle whose gradient has no component along its
      negative directions (in exact arithmetic) is not left. At n = 128 it solved 2 of 4
      narrow networks that the continuation left unconverged; at the others F's minimum has
      kernels so ill-conditioned (10¹⁰–10¹²) that the EoS residual's rounding (10⁻⁹) lies
      above the tolerance, and they are reported unconverged (`docs/deep.md`). Which
      minimum a descent from a saddle reaches can change with the hyper-parameters
      (σ² ± 10⁻⁵ relative, in `docs/deep.md`), and the solution with it. float64, no
      `weight_mean`. Off by default. `num_steps` counts its Hessian-vector products.

    **Returns:** a [`fls_jax.Solution`][]. Non-convergence is reported in `result` and
    `converged`, never raised, so one failing element does not spoil a vmapped sweep; the
    returned state is then the last converged point of the continuation (from `precision0`,
    that start), never NaN from a rejected step.
    """
    network, X, Y = _validate(network, X, Y)
    _check_max_stages(max_stages)
    _check_deep_float32(network, X)
    S = network.state_size(X.shape[1])
    chain = _chain(_resolve_solver(solver, X.dtype, network.depth, S), max_steps, S, network.depth)
    if adjoint is None:
        adjoint = _default_adjoint(network.depth)
    if precision0 is not None:
        precision0 = _validate_precision0(network, X, Y, precision0)
    _check_rescue(network, X, precision0, past_folds, minimise)
    args = (chain, max_stages, precision0, adjoint, bool(past_folds), bool(minimise))
    return _solve(network, X, Y, *args)


def _check_rescue(network: AbstractNetwork, X: Array, precision0, past_folds, minimise) -> None:
    """The limits of `solve`'s (and `sweep`'s) rescues: `past_folds` is dense, float64, and
    needs a continuation to extend; `minimise` needs float64."""
    if past_folds:
        if precision0 is not None:
            raise ValueError("past_folds extends the continuation from the GP limit: no precision0")
        _check_dense(network, X, "past_folds")
    if minimise:
        _check_dense(network, X, "minimise", dense=False)


def _check_dense(network: AbstractNetwork, X: Array, what: str, dense: bool = True) -> int:
    """The limits of dense pseudo-arclength (`fj.trace`, `solve(past_folds=True)`): float64,
    no weight mean, at most `_DENSE_MAX_UNKNOWNS` unknowns (checked on shapes alone; not
    with `dense=False`, as for `solve(minimise=True)` and the Lanczos index). Returns the
    number of unknowns."""
    if X.dtype != jnp.float64:
        raise TypeError(f"{what} needs float64 (jax.config.update('jax_enable_x64', True))")
    if network.weight_mean:
        raise ValueError(f"{what} does not support networks with a weight mean")
    size = sum(x.size for x in jax.tree.leaves(jax.eval_shape(_gp_state, network, X)))
    if dense and size > _DENSE_MAX_UNKNOWNS:
        raise ValueError(
            f"{what} forms dense Jacobians: {size} unknowns is more than "
            f"{_DENSE_MAX_UNKNOWNS}; use fewer training points"
        )
    return size


def _validate_precision0(
    network: AbstractNetwork, X: Array, Y: Array, precision0
) -> tuple[Array, ...]:
    S, n, L = network.state_size(X.shape[1]), X.shape[0], network.depth
    if L == 1 and not isinstance(precision0, tuple | list):
        precision0 = (precision0,)
    if not isinstance(precision0, tuple | list) or len(precision0) != L:
        raise ValueError(f"precision0 must be a tuple of {L} unknowns (Σ⁻¹, Δ_2, …, Δ_L)")
    shapes = [(S, S)] + [(n, n)] * (L - 1)
    out = []
    for i, (p, shape) in enumerate(zip(precision0, shapes, strict=True)):
        p = jnp.asarray(p, X.dtype)
        if p.shape != shape:
            raise ValueError(f"precision0 must have shapes {shapes}, got {p.shape}")
        if i == 0:  # Σ⁻¹ (or the augmented state's inverse) must be a precision matrix
            _check_positive_definite("precision0[0]", p)
        else:
            _check_finite(f"precision0[{i}]", p)
        out.append(p)
    leaves = (*out, X, Y, *jax.tree.leaves(eqx.filter(network, eqx.is_array)))
    if L > 1 and all(_concrete(v) for v in leaves):
        # Finite shifts can still leave the domain: K^(l) = Q(I + Δ_l Q)⁻¹ indefinite. The
        # solve then starts at NaN and returns it, converged=False (stop 69).
        shifts = tuple(_sym(d) for d in out[1:])
        F = _free_energy(network, spd_inverse_logdet(_sym(out[0]))[0], shifts, X, Y)
        if not np.isfinite(float(F)):
            raise ValueError(
                "precision0 is outside the domain of the EoS: the free energy there is not "
                "finite (a deeper layer's K^(l) = Q^(l-1) (I + Δ_l Q^(l-1))⁻¹ is not positive "
                "semi-definite); start from a solution's (precision, *kernel_shifts)"
            )
    return tuple(out)


def _state_residual(state, args):
    """EoS residuals on the solver's unknowns (`_to_state`)."""
    net, X, Y = args
    S, scale = net.state_size(X.shape[1]), _state_scale(net, X)
    R = _shift_residuals(net, *_from_state(state, S, scale), X, Y)
    return _to_state(R[0], R[1:], scale)


def _state_free_energy(state, args):
    """F/C at the solver's unknowns (`_to_state`; 0 in the GP limit): what a minimiser in
    the chain descends. Its stationary points are the EoS (SPEC §3)."""
    net, X, Y = args
    lam1, shifts = _from_state(state, net.state_size(X.shape[1]), _state_scale(net, X))
    sigma = spd_inverse_logdet(_sym(lam1))[0]
    return _inverse_width(net) * _free_energy(net, sigma, shifts, X, Y)


def _valid_hyper_parameters(network: AbstractNetwork) -> Array:
    """`_validate`'s rules on the hyper-parameters, as a traced flag: under `jax.jit` or
    `jax.vmap` they are not known when `_validate` runs, and an invalid one (a negative or
    NaN width: 1/C < 0 read as "already at the target") must fail the solve, not pass as
    the GP limit."""
    ok = jnp.array(True)
    for field, _, _, test in _HYPER_PARAMETER_RULES:
        ok = ok & jnp.all(test(getattr(network, field)))
    return ok


@eqx.filter_jit
def _solve(
    network, X, Y, chain: Chain, max_stages, precision0, adjoint, past_folds=False, minimise=False
) -> Solution:
    rescue = (past_folds, minimise)
    if precision0 is None:
        state0 = _gp_state(network, X)
        return _solve_from(network, X, Y, chain, max_stages, 0.0, state0, adjoint, *rescue)[0]
    state0 = _to_state(precision0[0], tuple(precision0[1:]), _state_scale(network, X))
    return _solve_from(network, X, Y, chain, 0, None, state0, adjoint, *rescue)[0]


# Most points (corrector attempts) along the curve of `solve(past_folds=True)`. Stop 65's
# S-shaped curve (depth-3 erf FCN, n = 20) took 153 points from C = 8 to 2 (`fj.trace`).
_ARC_MAX_POINTS = 1000


def _state_of(x, network, X):
    """The solver's unknowns (`_to_state`'s pytree) from their vector (`ravel_pytree`)."""
    return ravel_pytree(_gp_state(network, X))[1](x)


def _curve_residual(z, W, network, X, Y) -> Array:
    """The EoS residual (SPEC §3), flattened, at z = (the solver's unknowns as one vector,
    W/C): the coordinates in which `fj.trace` and `solve(past_folds=True)` follow the curve
    of solutions, W the norm of the unknowns at its start, so that both parts weigh in the
    arclength."""
    net = _with_width(network, _width_at(z[-1] / W))
    return ravel_pytree(_state_residual(_state_of(z[:-1], network, X), (net, X, Y)))[0]


def _past_folds(network, X, Y, cont: _Continuation, active):
    """Pseudo-arclength continuation of the EoS from the continuation's last converged point
    (u > 0) to the target width (`pseudo_arclength` on `_curve_residual`). An element that
    is not `active` (its continuation reached the target) skips it."""
    network, X, Y, u, lam = jax.lax.stop_gradient((network, X, Y, cont.u, cont.lam))
    x0 = ravel_pytree(lam)[0]
    W = _fro(x0)
    W = jnp.where(W > 0, W, 1.0)
    arc = pseudo_arclength(
        lambda z: _curve_residual(z, W, network, X, Y),
        jnp.append(x0, W * u),
        W * _inverse_width(network),
        active & (u > 0),
        _default_rtol(X.dtype),
        _ARC_MAX_POINTS,
    )
    return _state_of(arc.z[:-1], network, X), arc.z[-1] / W, arc


def _minimised(network, X, Y, chain: Chain, state, active):
    """`solve(minimise=True)`: F minimised at the target width from `state` (the point the
    continuation reached, converged or not, or `precision0`'s root find's), matrix-free
    (`minimise_free_energy`), then the chain's root finders from its end. Returns the
    unknowns (the minimiser's root where found, else `state`), whether it was found, and
    the iterations spent (the minimiser's Hessian-vector products and the root finders')."""
    network, X, Y, state = jax.lax.stop_gradient((network, X, Y, state))
    active = active & (_inverse_width(network) > 0)  # F/C is 0 in the GP limit: solved
    scale = _state_scale(network, X)
    lam1, shifts = _from_state(state, network.state_size(X.shape[1]), scale)
    lam1, shifts, _, products = minimise_free_energy(network, X, Y, lam1, shifts, active)
    end = _to_state(lam1, shifts, scale)
    root, found, steps, _ = _attempt(
        _state_residual, chain, end, (network, X, Y), jnp.array(0), 0, True
    )
    found = found & active
    return _where(found, root, state), found, products + steps


def _solve_from(
    network, X, Y, chain: Chain, max_stages, u0, state0, adjoint, past_folds=False, minimise=False
) -> tuple[Solution, Any]:
    """Continuation from the solved point (u0 = 1/C0, unknowns `state0`) (skipped when u0
    is None: then the chain's solvers try from `state0`), then, with `past_folds`, the
    pseudo-arclength continuation where it stopped short (`_past_folds`), then with
    `minimise` a minimisation of F at the target width from the point reached
    (`_minimised`), then a root find at the target width that takes no iteration and
    carries the implicit adjoint (`_Settled`). Returns the solution and the unknowns reached
    (a warm start for the next)."""
    S = network.state_size(X.shape[1])
    args = (network, X, Y)
    valid = _valid_hyper_parameters(network)
    folds = jnp.array(0)
    if u0 is None:
        # No continuation: no shorter step to try, so every solver of the chain may run.
        start, ok, steps, _ = _attempt(
            _state_residual,
            chain,
            jax.lax.stop_gradient(state0),
            jax.lax.stop_gradient(args),
            jnp.array(0),
            0,
            True,
        )
        stages = 0
        reached = jnp.full((), jnp.nan, X.dtype)  # a failed start solves no known width
    else:
        u0 = jnp.asarray(u0, X.dtype)
        cont = _continuation(
            _state_residual, chain, u0, state0, *args, max_stages, keep_sign=past_folds
        )
        start, ok, steps, stages = cont.lam, cont.done, cont.steps, cont.stages
        reached = _width_at(cont.u)
        if past_folds:
            lam, u, arc = _past_folds(network, X, Y, cont, ~ok & valid)
            start = _where(ok, start, lam)
            reached = jnp.where(ok, reached, _width_at(u))
            ok = ok | arc.done
            steps, stages, folds = steps + arc.steps, stages + arc.points, arc.folds
    if minimise:
        start, found, more = _minimised(network, X, Y, chain, start, valid)
        ok, steps, stages = ok | found, steps + more, stages + 1
    ok = ok & valid
    # The root find that carries the implicit adjoint, at the root reached (no iterations).
    sol = optx.root_find(
        _state_residual,
        _Settled(),
        start,
        args=args,
        options={"converged": ok},
        max_steps=1,
        adjoint=adjoint,
        throw=False,
    )
    lam1, shifts = _from_state(sol.value, S, _state_scale(network, X))
    shifts = tuple(_sym(d) for d in shifts)
    covs = tuple(_layers(network, spd_inverse_logdet(_sym(lam1))[0], shifts, X)[0])
    rel = _fro(_state_residual(sol.value, args)) / _fro(sol.value)
    sigma, mu = network.split_state(covs[0])
    S1 = network.filter_size(X.shape[1])
    converged = (sol.result == optx.RESULTS.successful) & jnp.isfinite(rel)
    solution = Solution(
        network=network,
        X=X,
        Y=Y,
        sigma=sigma,
        precision=lam1[:S1, :S1],  # with `weight_mean`, Σ⁻¹ is the state's top-left block
        weight_mean=jnp.zeros(S1, X.dtype) if mu is None else mu,
        kernels=covs[1:],
        kernel_shifts=shifts,
        free_energy=_free_energy(network, covs[0], shifts, X, Y),
        residual=rel,
        num_steps=steps,
        num_stages=jnp.asarray(stages),
        num_folds=folds,
        result=sol.result,
        converged=converged,
        width_reached=jnp.where(converged, network.width, reached).astype(X.dtype),
    )
    return solution, sol.value
