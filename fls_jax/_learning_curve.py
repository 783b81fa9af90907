"""Learning curves of the network's GP limit (SPEC §5): the expected test error against the
number of training points, from the kernel's spectrum on the data measure, without training.

Inputs x are drawn from a data measure μ, represented by a pool of M points (X, with the
target's values Y on them). The kernel's integral operator on μ, (T φ)(x) = E_μ[K(x, x′) φ(x′)],
is the M×M matrix K/M on the pool, with eigenvalues η_ρ and eigenvectors u_ρ; the target's
power in mode ρ is a_ρ² = (u_ρ · y)²/M. GP regression (the network at C = ∞) on n points drawn
from μ, with noise σ² (the ridge) and targets carrying noise of variance σ_ε², has the
expected test error of its mean predictor, against the noiseless target:

- **self-consistent** (Bordelon, Canatar & Pehlevan 2020; Canatar et al. 2021): with the
  renormalised ridge κ solving κ = σ² + κ Σ_ρ η_ρ/(n η_ρ + κ) and γ = Σ_ρ n η_ρ²/(n η_ρ + κ)²,

      E_g(n) = [Σ_ρ κ² a_ρ²/(n η_ρ + κ)² + γ σ_ε²] / (1 − γ);

  the modes that n points cannot resolve act on the others as extra noise (κ > σ²);
- **equivalent kernel** (Sollich; Cohen, Malka & Ringel 2021): the same with κ = σ² and no
  1/(1 − γ): the leading order in 1/n, exact as n → ∞.

Both are averages over training sets; neither is exact at finite n (the self-consistent one is
exact as n, M and the number of relevant modes grow together). `tests/test_learning_curve.py`
measures them against GP regression on drawn training sets.

**Finite width** (FCNs whose kernel a scalar renormalises: linear ones of any depth, exactly;
one hidden layer of any activation, as the proportional-limit approximation; see
`fj.renormalise`). The mean predictor at kernel scale u is the GP's with the ridge σ²/u: finite
width enters as a renormalised noise. u(n) is the saddle point of `fj.renormalise`'s action
with its data terms replaced by their training-set averages: for a training set of n points
and ridge λ, tr K(K + λ)⁻¹ → Σ_ρ nη_ρ/(nη_ρ + κ), yᵀ(K + λ)⁻¹y/n → [Σ_ρ κa_ρ²/(nη_ρ + κ) + σ_ε²]/κ
and λ²yᵀ(K + λ)⁻²y/n → (λ/κ)²(E_g + σ_ε²), with κ = κ(λ). Then E_g is the self-consistent
curve at the ridge σ²/u(n). Its derivatives include u's own, by the implicit function
theorem on the saddle-point equation.

**Finite width, PatchCNN** (one hidden layer). `fj.renormalise` rescales its
kernel by a P×P matrix over patch pairs, K_U = Σ_pq U_pq κ_pq. U(n) is the saddle point of the
same action with the data term averaged over training sets, now as matrix functions of the
operator T_U = K_U/M: with A = nT_U + κI and κ = σ² + κ tr T_U A⁻¹,
½[log det(I + nT_U/κ) + n log κ − n + nσ²/κ + n yᵀA⁻¹y/M + nσ_ε²/κ], the FCN's at T_U = uK
(`_patch_width_curve`). E_g is the self-consistent curve of K_U(n) at the ridge σ². With m
outputs U is Pm×Pm over (patch, output) pairs, the kernel does not factor over outputs, and
κ becomes an m×m ridge R (`_patch_outputs_width_curve`).

**Finite width, m outputs** (FCNs, linear when deep). `fj.renormalise` rescales the kernel
of m outputs by an m×m matrix, U ⊗ K. In U's eigenbasis the outputs decouple: direction i is
a GP with kernel u_i K and targets Y v_i, so the averaged action is the Wishart prior plus the
one-output data term summed over directions, each with its own renormalised ridge. It is
written as matrices that commute with U (an m×m ridge R), never in U's eigenbasis, which is
degenerate at the start U ∝ I (`_outputs_width_curve`). E_g is averaged over the directions.

The code takes one eigendecomposition of K/M, finds κ per n by bisection on the eigenvalues
and sums over modes. Its derivatives are written by hand (`_curve_jvp`) as traces
tr(dK f(K)) and bilinear forms in the eigenbasis, with κ's dependence from the implicit
function theorem: autodiff through the eigenvectors would be wrong wherever eigenvalues are
degenerate, e.g. the many zero eigenvalues of a linear kernel with M > d.
"""

import functools
import math
import warnings
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, ArrayLike, Bool, Float

from ._free_energy import _gp_post_kernels, _inverse_width, _sym
from ._linalg import (
    DenseLU,
    _drop_null_block,
    _eigh,
    _first_order_in,
    cholesky_inverse,
    first_order_term,
    from_principal_axes,
    kernel_spectrum,
    principal_axes,
    refuse_derivative,
    small_inverse_logdet,
)
from ._network import AbstractNetwork, PatchCNN
from ._renorm import (
    _BRACKET,
    _bisect_intervals,
    _check_matrix_renormalisation,
    _check_no_weight_mean,
    _check_scalar_renormalisation,
    _half_shapes,
    _least_prior,
    _matrix_saddle,
    _minimum_intervals,
    _patch_pair_kernels,
    _solve_log_scale,
    _stationarity_gap,
)
from ._solve import _concrete, _valid_hyper_parameters, _validate


Method = Literal["self_consistent", "equivalent_kernel"]


class LearningCurve(eqx.Module):
    """The expected test error of the GP limit against the training-set size (SPEC §5), from
    [`fls_jax.learning_curve`][]. Errors are averaged over outputs.

    **Fields:**

    - `n`: the training-set sizes (k).
    - `test_error`: E_g(n), the expected mean squared error of the mean predictor on a fresh
      input from the data measure, against the noiseless target (k).
    - `kappa`: the renormalised ridge κ(n) (σ² for the equivalent kernel) (k); at finite
      width, an FCN's is K's at the ridge σ²/u, a PatchCNN's that of Σ_pq U_pq κ_pq at σ²
      (for one patch, u times the FCN's); with m outputs, K's at σ²/u_i averaged over U's
      eigen-directions i (an FCN's), or the m×m ridge's mean eigenvalue (a PatchCNN's).
    - `gamma`: γ(n) = Σ_ρ n η_ρ²/(n η_ρ + κ)² (k); with m outputs, averaged as `kappa`.
    - `scale`: at finite width, the kernel's scale u(n) at the saddle point (the ridge is
      σ²/u), for a PatchCNN or m outputs the mean eigenvalue of `scale_matrix`; 1 at width
      ``inf`` (k).
    - `scale_matrix`: a PatchCNN's P×P scale U(n) over patch pairs at the saddle point (the
      kernel Σ_pq U_pq κ_pq, as `Renormalised.scale_matrix`; Pm×Pm over (patch, output)
      pairs, patch-major, with m outputs), an FCN's m×m scale over its m outputs (the kernel
      U ⊗ K; [[u(n)]] for one output); the identity at width ``inf`` (k×P×P, k×Pm×Pm or
      k×m×m).
    - `chi_proxy`: at finite width, the training-set average of the feature-learning proxy
      tᵀQ_f t/C of SPEC §4 (`Prediction.chi_proxy`), with Q_f = uK (a PatchCNN's K_U, m
      outputs' U ⊗ K, summed over outputs) and t = (Q_f + σ²)⁻¹y; 0 at width ``inf`` (k).
      The scalar u cannot learn a direction: for a non-linear hidden layer the curve is
      trustworthy only while this stays ≲ 1 (`docs/learning_curves.md`).
    - `converged`: per size, whether the values are finite and, at finite width, the
      saddle point was located as a minimum of the action (its bisection's bracket or
      residual within tolerance, the stationarity condition increasing through it), the
      lowest of at most 4 seen on a scan of 201 points in log u; for a PatchCNN or m
      outputs, the matrix saddle's checks as in `fj.renormalise` (a stationary minimum,
      within tolerance, in its local coordinates), and for m outputs the ridge's last Newton
      step within √eps of it, relative (k). False, with NaN values, where an input that
      could only be checked when the program ran (under `jax.jit` or `jax.vmap`) was
      invalid: at every size for a width, σ², σ_w², σ_a² or target noise out of range or
      NaN or inf in X or Y, at its own size for an n ≤ 0 or NaN.
    - `eigenvalues`: the kernel's eigenvalues η_ρ on the data measure, descending (M): the
      GP's, at every width.
    - `target_power`: the target's power a_ρ² in each mode, averaged over outputs (M);
      Σ_ρ a_ρ² is the target's mean square, E_g at n = 0.
    - `method`: ``"self_consistent"`` or ``"equivalent_kernel"``.
    """

    n: Float[Array, " k"]
    test_error: Float[Array, " k"]
    kappa: Float[Array, " k"]
    gamma: Float[Array, " k"]
    scale: Float[Array, " k"]
    scale_matrix: Float[Array, "k q q"]
    chi_proxy: Float[Array, " k"]
    converged: Bool[Array, " k"]
    eigenvalues: Float[Array, " M"]
    target_power: Float[Array, " M"]
    method: str = eqx.field(static=True)


def learning_curve(
    network: AbstractNetwork,
    X: Float[ArrayLike, "M d"],
    Y: Float[ArrayLike, "M m"] | Float[ArrayLike, " M"],
    n: Float[ArrayLike, " k"],
    *,
    target_noise: float | Float[ArrayLike, ""] = 0.0,
    method: Method = "self_consistent",
) -> LearningCurve:
    """The learning curve of a network (SPEC §5): its expected test error against the number
    of training points, without training.

    See the module docstring for the equations. The kernel is the network's NNGP output
    kernel (any depth, FCN or PatchCNN, SPEC §2); σ² is `network.noise`. At width ``inf``
    it is GP regression's curve, differentiable (`jax.grad` of `test_error` with respect to
    σ_w², σ_a², σ², `target_noise` or the pool); the cost is one M×M eigendecomposition,
    O(M) per training-set size, and for a derivative one M×M change of basis plus O(M²) per
    size. At finite width (FCNs, linear when deep) the kernel's scale u(n) renormalises the
    noise, differentiably too (u's own derivative included); with m outputs it is an m×m
    matrix U(n) (each size a saddle point whose every step inverts M blocks of m×m and
    solves an m²×m² system, O(Mm⁴)); a PatchCNN's
    kernel is renormalised by a P×P matrix U(n) over patch pairs (one hidden layer, one
    output; each size costs a saddle point whose every step takes an M×M eigendecomposition
    and three Cholesky factors, and P²M² memory holds the pair kernels). Derivatives
    are first order: a second derivative in the kernel (its hyper-parameters or X) or, at
    finite width, in anything raises `NotImplementedError` (at width ``inf``, second
    derivatives in σ², `target_noise` and Y are exact). For a
    non-linear hidden layer that scalar cannot learn a direction: measured against sampled
    erf networks, the finite-width curve is within 12 % only while n ≲ d and feature learning
    is weak, and up to 2600× too high once the network learns the teacher's direction
    (`benchmarks/RESULTS.md`, stop 32); `LearningCurve.chi_proxy` ≳ 1 flags where (SPEC §4's
    χ), and `solve` on drawn training sets does better there. `jax.jit`-able
    either way; a network built under `jax.jit` has a traced width, and the branch is then
    chosen when the program runs.

    **Arguments:**

    - `network`: an [`fls_jax.FCN`][] or [`fls_jax.PatchCNN`][] at width ``inf`` with
      standard readout scaling (a mean-field readout's GP limit vanishes), or at a finite
      width an FCN (linear in every layer when deep; with m outputs every hidden layer
      wider than m − 1) or a PatchCNN with one hidden layer (with m outputs, wider than
      Pm − 1), either scaling.
    - `X`: M inputs drawn from the data measure (the pool; M of a few hundred to a few
      thousand resolves the modes that matter for n up to about M/4).
    - `Y`: the target's noiseless values on the pool (M×m or M).
    - `n`: the training-set sizes (positive; need not be integers).
    - `target_noise`: σ_ε², the variance of the noise on the training targets (default 0).
    - `method`: ``"self_consistent"`` (default) or ``"equivalent_kernel"``.

    **Returns:** a [`fls_jax.LearningCurve`][].
    """
    if method not in ("self_consistent", "equivalent_kernel"):
        raise ValueError(f"method must be 'self_consistent' or 'equivalent_kernel', got {method!r}")
    network, X, Y = _validate(network, X, Y)
    if network.inducing is not None:
        raise ValueError("learning_curve does not take inducing points")
    # A traced width (a network built under jax.jit) is only known when the program runs:
    # then both branches are compiled and the width picks one (`_learning_curve`).
    concrete = _concrete(network.width)
    finite = concrete and bool(np.isfinite(np.asarray(network.width)).all())
    if finite:
        _check_finite_width(network, X, Y, "learning_curve at finite width")
        if method != "self_consistent":
            raise ValueError("learning_curve at finite width has method='self_consistent' only")
    elif concrete and getattr(network, "scaling", "standard") != "standard":
        # (A traced width is checked when the program runs: `_learning_curve`.)
        raise ValueError(
            "learning_curve needs standard readout scaling at width=inf: a mean-field "
            "network's GP limit is zero (its readout variance σ_a²/C² vanishes as C → ∞)"
        )
    if _concrete(n):
        kind = np.asarray(n).dtype.kind
        if kind not in "iuf":
            raise TypeError(f"n must be real training-set sizes, got {n!r} (dtype kind {kind!r})")
        values = np.asarray(n, dtype=float)
        if values.ndim > 1 or not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(
                f"n must be positive, finite training-set sizes (a scalar or 1-d), got {n}"
            )
        if np.any(values > X.shape[0]):
            warnings.warn(
                f"n = {n} exceeds the pool's M = {X.shape[0]} points: the curve is the formula's "
                "on the pool's empirical measure, which stands for the data only for n below "
                "about M/4 (docs/learning_curves.md)",
                UserWarning,
                stacklevel=2,
            )
    if _concrete(target_noise):
        value = np.asarray(target_noise, dtype=float)
        if value.shape != () or not (np.isfinite(value) and value >= 0):
            raise ValueError(f"target_noise must be a finite number >= 0, got {target_noise}")
    n = jnp.asarray(n, X.dtype)
    target_noise = jnp.asarray(target_noise, X.dtype)
    branch = "finite" if finite else ("gp" if concrete else "runtime")
    return _learning_curve(network, X, Y, jnp.atleast_1d(n), target_noise, method, branch)


def _check_finite_width(network: AbstractNetwork, X: Array, Y: Array, who: str) -> None:
    """The networks whose finite-width curve is written: FCNs (linear when deep), whose
    kernel `fj.renormalise` rescales by one scalar per layer, or by an m×m matrix with m
    outputs, and one-hidden-layer PatchCNNs (a P×P matrix, Pm×Pm with m outputs)."""
    if isinstance(network, PatchCNN):
        _check_no_weight_mean(network, who)
        if network.depth > 1:
            raise ValueError(f"{who} takes a PatchCNN with one hidden layer only")
        m = Y.shape[1]
        if m > 1:
            q = X.shape[1] // network.filter_size(X.shape[1]) * m
            _check_matrix_renormalisation(network, q, f"the {q}×{q} scale of {m} outputs")
    else:
        _check_scalar_renormalisation(network, who)
        m = Y.shape[1]
        if m > 1:
            _check_matrix_renormalisation(network, m, f"the {m}×{m} scale of {m} outputs")


def _stand_ins(network, X, Y, ns, target_noise):
    """What `learning_curve` could not check on traced values (under `jax.jit` or
    `jax.vmap`), checked when the program runs: whether the hyper-parameters, the target
    noise and the pool are valid, and per size whether n is. Returns those flags and the
    inputs with stand-ins for invalid values (width 10⁸, or ∞ where it was ∞; variances 1;
    n 1; σ_ε² 0; 0 for NaN or inf in X and Y), on which the program runs to the end: a NaN
    reaching an implicit derivative's linear solve inside would stop it (lineax raises on a
    non-finite system), and with it every element of a vmap."""
    valid = _valid_hyper_parameters(network) & (target_noise >= 0) & jnp.isfinite(target_noise)
    valid = valid & jnp.all(jnp.isfinite(X)) & jnp.all(jnp.isfinite(Y))
    sizes = (ns > 0) & jnp.isfinite(ns)
    width = jnp.where(valid | jnp.isposinf(network.width), network.width, 1e8)
    stand_in = eqx.tree_at(lambda n: n.width, network, width.astype(X.dtype))
    for field in ("noise", "sigma_w2", "sigma_a2"):
        value = jnp.where(valid, getattr(network, field), 1.0).astype(X.dtype)
        stand_in = eqx.tree_at(lambda n, f=field: getattr(n, f), stand_in, value)
    X, Y = (jnp.where(jnp.isfinite(a), a, 0.0) for a in (X, Y))
    target_noise = jnp.where(valid, target_noise, 0.0)
    return valid, sizes, stand_in, X, Y, jnp.where(sizes, ns, 1.0), target_noise


@eqx.filter_jit
def _learning_curve(network, X, Y, ns, target_noise, method: Method, branch: str) -> LearningCurve:
    given = ns
    valid, sizes, network, X, Y, ns, target_noise = _stand_ins(network, X, Y, ns, target_noise)
    M = X.shape[0]
    K = _gp_post_kernels(network, X)[-1] / M  # the integral operator on the pool's measure
    K = 0.5 * (K + K.T)
    noise = network.noise
    sc = method == "self_consistent"
    # One eigendecomposition for every branch and evaluation; nothing is differentiated
    # through it: `_curve_jvp` carries K's derivatives.
    eta, U = kernel_spectrum(K)

    # The scale's size: a PatchCNN's patches (as `renormalise`), an FCN's outputs.
    q = Y.shape[1]
    if isinstance(network, PatchCNN):
        q = X.shape[1] // network.filter_size(X.shape[1]) * Y.shape[1]

    def gp():
        error, kappa, gamma, _, _, _, power = _curve(K, Y, noise, target_noise, ns, eta, U, sc)
        ones, zeros = jnp.ones_like(kappa), jnp.zeros_like(kappa)
        identity = jnp.broadcast_to(jnp.eye(q, dtype=K.dtype), (*ns.shape, q, q))
        located = jnp.ones_like(kappa, dtype=bool)
        return error, kappa, gamma, ones, identity, zeros, eta, power, located

    def finite():
        if isinstance(network, PatchCNN) or Y.shape[1] > 1:
            # The matrix saddle's derivatives are first order. A second derivative raises
            # here, on the inputs, before it reaches the saddle, where it failed inside JAX
            # ("Linearization failed…", or a scan with nothing to scan over).
            net, Xg, Yg, Kg, s2 = _first_order_inputs((network, X, Y, K, target_noise))
            inv_width = _inverse_width(net) / net.width_ratio(net.depth)
            if isinstance(network, PatchCNN) and Y.shape[1] > 1:
                out = _patch_outputs_width_curve(net, Xg, Yg, s2, ns, inv_width)
            elif isinstance(network, PatchCNN):
                out = _patch_width_curve(net, Xg, Yg, s2, ns, inv_width)
            else:
                out = _outputs_width_curve(net, Kg, Yg, net.noise, s2, ns, eta, U, inv_width)
            error, kappa, gamma, scale, chi, Us, located = out
            return error, kappa, gamma, scale, Us, chi, eta, _power(U, Y), located
        inv_width = _inverse_width(network) / network.width_ratio(network.depth)
        k = _half_shapes(network)
        out = _finite_width_curve(K, Y, noise, target_noise, ns, k, eta, U, inv_width)
        return *out[:4], out[3][:, None, None], *out[4:]

    if branch == "gp":
        out = gp()
    elif branch == "finite":
        out = finite()
    else:  # the width is traced: decided at run time
        renormalisable = True
        try:
            _check_finite_width(network, X, Y, "")
        except ValueError:
            renormalisable = False
        if renormalisable and sc:
            out = jax.lax.cond(jnp.isinf(network.width), gp, finite)
            if network.scaling != "standard":  # a mean-field GP limit is zero
                out = (
                    eqx.error_if(
                        out[0],
                        jnp.isinf(network.width),
                        "learning_curve needs standard readout scaling at width=inf",
                    ),
                    *out[1:],
                )
        else:
            out = gp()
            out = (
                eqx.error_if(
                    out[0],
                    jnp.isfinite(network.width),
                    "learning_curve at finite width needs an FCN (linear when deep) or a "
                    "PatchCNN with one hidden layer and "
                    "method='self_consistent'",
                ),
                *out[1:],
            )
    error, kappa, gamma, scale, scale_matrix, chi_proxy, eta, power, located = out
    finite_values = jnp.isfinite(error) & jnp.isfinite(kappa) & jnp.isfinite(scale)
    # An invalid input's values are NaN: every size's for the hyper-parameters or the pool,
    # one size's for its n (`_stand_ins`).
    ok = valid & sizes
    error, kappa, gamma, scale, scale_matrix, chi_proxy = (
        jnp.where(ok.reshape(ok.shape + (1,) * (a.ndim - 1)), a, jnp.nan)
        for a in (error, kappa, gamma, scale, scale_matrix, chi_proxy)
    )
    eta, power = (jnp.where(valid, a, jnp.nan) for a in (eta, power))
    return LearningCurve(
        n=given,
        test_error=error,
        kappa=kappa,
        gamma=gamma,
        scale=scale,
        scale_matrix=scale_matrix,
        chi_proxy=chi_proxy,
        converged=located & finite_values & ok,
        eigenvalues=eta[::-1],
        target_power=power[::-1],
        method=method,
    )


def _power(U, Y):
    """a_ρ² = (u_ρ · y)²/M, averaged over outputs."""
    return jnp.mean((U.T @ Y) ** 2, axis=1) / Y.shape[0]


def _spectral(K, Y, ridge, target_noise, ns, eta, U, self_consistent: bool):
    """E_g, κ, γ, tr K(K+λ)⁻¹ and yᵀ(K+λ)⁻¹y/n − (training error)/λ (their training-set
    averages; the last `_resolvent_gap`'s, at the self-consistent κ) per n on K's
    eigendecomposition (η, U), at the ridge λ (a scalar or one per n), and what the JVP
    needs."""
    yr = U.T @ Y  # the target in the eigenbasis (M×m)
    tol = 1e3 * float(jnp.finfo(K.dtype).eps)
    ridge = jnp.broadcast_to(ridge, ns.shape)

    def kappa_of(n, r):
        return _kappa(eta, r, n, tol) if self_consistent else r

    kappa = jax.vmap(kappa_of)(ns, ridge)
    power = _power(U, Y)
    error, gamma, bias = jax.vmap(
        lambda n, kap: _error(eta, power, n, kap, target_noise, self_consistent)
    )(ns, kappa)
    a = ns[:, None] * eta + kappa[:, None]  # nη_ρ + κ, (k, M)
    dof = jnp.sum(ns[:, None] * eta / a, axis=1)
    gap = jax.vmap(_resolvent_gap, in_axes=(None, None, 0, 0, 0, None))(
        eta, power, ns, kappa, ridge, target_noise
    )
    return (error, kappa, gamma, dof, gap, eta, power), (U, yr, a, bias)


def _error(eta, power, n, kappa, target_noise, self_consistent: bool):
    """E_g at n points given κ (the module docstring's formula), with γ and the bias term."""
    a = n * eta + kappa
    gamma = jnp.sum(n * eta**2 / a**2)
    bias = kappa**2 * jnp.sum(power / a**2)
    error = bias + gamma * target_noise
    if self_consistent:
        error = error / (1 - gamma)
    return error, gamma, bias


@functools.partial(jax.custom_jvp, nondiff_argnums=(7,))
def _curve(K, Y, ridge, target_noise, ns, eta, U, self_consistent: bool):
    """(E_g, κ, γ, tr K(K+λ)⁻¹, yᵀ(K+λ)⁻¹y/n − training error/λ) per n, and the spectrum
    (η, a²), given K's eigendecomposition (η, U) from `kernel_spectrum`. Differentiable in
    K, Y, the ridge λ and σ_ε²; the spectrum's outputs are not (their tangents are zero)."""
    return _spectral(K, Y, ridge, target_noise, ns, eta, U, self_consistent)[0]


def _curve_jvp(self_consistent, primals, tangents):
    """Tangents from traces tr(dK f(K)) = Σ_ρ (UᵀdK U)_ρρ f(η_ρ) and bilinear forms in the
    eigenbasis, which degenerate modes leave well defined. With A = nK + κI, a_ρ = nη_ρ + κ:

    dκ = (dλ + κ² tr(dK A⁻²)) / (1 − γ)            (self-consistent; dλ for the EK)
    dγ = 2nκ tr(dK K A⁻³) − 2n dκ tr(K² A⁻³)
    d tr(nK A⁻¹) = nκ tr(dK A⁻²) − n dκ tr(K A⁻²)
    d(yᵀA⁻²y) = 2 (A⁻²y)ᵀdy − Σ_(q+r=3) (A⁻^q y)ᵀ(n dK + dκ)(A⁻^r y)
    and the gap yᵀ(K+λ)⁻¹y/n − training error/λ as written below, in a form that stays
    accurate as σ² → 0.
    """
    K, Y, ridge, target_noise, ns, eta, U = primals
    if not isinstance(tangents[0], SymbolicZero):
        # The rule holds K's eigenbasis fixed: differentiated again in K it would be wrong.
        U = _first_order_in(K, U, _SECOND_DERIVATIVE)
    if not isinstance(tangents[4], SymbolicZero):
        # Its tangent was silently dropped (a zero gradient in n); n's own derivatives
        # (E_g's explicit n besides nK) are not written.
        raise TypeError(
            "learning_curve is not differentiable with respect to n (the training-set "
            "sizes); differentiate with respect to the kernel's hyper-parameters, X or Y"
        )
    dK, dY, dridge, dtarget = (
        jnp.zeros_like(p) if isinstance(t, SymbolicZero) else t
        for p, t in zip(primals[:4], tangents[:4], strict=True)
    )
    out, (U, yr, a, bias) = _spectral(K, Y, ridge, target_noise, ns, eta, U, self_consistent)
    _, kappa, gamma, _, _, eta, power = out
    M, m = Y.shape
    dridge = jnp.broadcast_to(dridge, ns.shape)
    # The tangent in the eigenbasis (once for all n), without its rounding between modes
    # `kernel_spectrum` set to 0: it would enter divided by κ², which is σ²-small.
    dKr = _drop_null_block(U.T @ dK @ U, eta)
    dKd = jnp.diagonal(dKr)
    dyr = U.T @ dY
    n = ns[:, None]
    kk = kappa[:, None]
    if self_consistent:
        dkappa = (dridge + kappa**2 * jnp.sum(dKd / a**2, axis=1)) / (1 - gamma)
    else:
        dkappa = dridge
    dk = dkappa[:, None]
    dgamma = jnp.sum(2 * n * kk * dKd * eta / a**3 - 2 * n * dk * eta**2 / a**3, axis=1)
    ddof = jnp.sum(n * kk * dKd / a**2 - n * dk * eta / a**2, axis=1)

    def form(u, v):  # Σ_i u_iᵀ dK v_i / (mM) in the eigenbasis, per n
        return jnp.einsum("kri,rs,ksi->k", u, dKr, v) / (m * M)

    def weighted(w):  # Σ_ρ w_ρ a_ρ² per n (the target's power a_ρ²)
        return jnp.sum(w * power, axis=1)

    # A⁻¹y and A⁻²y in the eigenbasis, (k, M, m); forms averaged over outputs. The bias
    # κ² yᵀA⁻²y/(mM): κ's own tangent enters as 2κ dκ n Σ a²η/a³ (its two terms, 2κ dκ Σ a²/a²
    # and −2κ² dκ Σ a²/a³, cancel on the modes with η = 0).
    u1 = yr[None] / a[..., None]
    u2 = yr[None] / a[..., None] ** 2
    dbias = kappa**2 * (2 * jnp.sum(u2 * dyr[None], axis=(1, 2)) / (m * M) - 2 * ns * form(u2, u1))
    dbias = dbias + 2 * kappa * dkappa * ns * weighted(eta / a**3)
    numer = bias + gamma * target_noise
    dnumer = dbias + dgamma * target_noise + gamma * dtarget
    if self_consistent:
        derror = dnumer / (1 - gamma) + numer * dgamma / (1 - gamma) ** 2
    else:
        derror = dnumer
    # The gap G = yᵀA⁻²(nK + e)y/(mM) + σ_ε²E, with T = tr(K A⁻²), E = T/(1 − γ) and
    # e = κ²E (`_resolvent_gap`). K enters through f(x) = (nx + e)/(nx + κ)², whose divided
    # difference −n[n²xy − κ² + e(a_x + a_y)]/(a_x² a_y²) is taken as three rank-one forms:
    # nothing of size 1/κ cancels. κ's and e's own tangents combine into
    # −2dκ (λ/((1 − γ)κ)) n Σ a²η/a³ + κ² dE Σ a²/a².
    ridge_k = jnp.broadcast_to(ridge, ns.shape)
    T = jnp.sum(eta / a**2, axis=1)
    om = ridge_k / kappa + kappa * T  # 1 − γ, a sum of positive terms
    E = T / om
    e = kappa**2 * E
    dT = jnp.sum(dKd * (kk - n * eta) / a**3, axis=1) - 2 * dkappa * jnp.sum(eta / a**3, axis=1)
    dE = dT / om + T * dgamma / om**2
    ue = u2 * eta[None, :, None]
    w = (n * eta + e[:, None]) / a**2
    dgap = (
        2 * jnp.sum(yr[None] * w[..., None] * dyr[None], axis=(1, 2)) / (m * M)
        - ns * (ns**2 * form(ue, ue) - kappa**2 * form(u2, u2) + 2 * e * form(u1, u2))
        - 2 * dkappa * ridge_k / (om * kappa) * ns * weighted(eta / a**3)
        + kappa**2 * dE * weighted(1 / a**2)
        + dtarget * E
        + target_noise * dE
    )
    zeros = (jnp.zeros_like(eta), jnp.zeros_like(power))
    return out, (derror, dkappa, dgamma, ddof, dgap, *zeros)


_curve.defjvp(_curve_jvp, symbolic_zeros=True)


def _kappa(eta, ridge, n, tol):
    """The renormalised ridge: κ = λ + κ Σ η/(nη + κ), by bisection in log κ."""

    def excess(log_kappa, _):  # κ − λ − κ Σ η/(nη + κ): −λ·(…) ≤ 0 at κ = λ
        kappa = jnp.exp(log_kappa)
        return kappa - ridge - kappa * jnp.sum(eta / (n * eta + kappa))

    lo, hi = jnp.log(ridge), jnp.log(ridge + jnp.sum(eta))
    sol = optx.root_find(
        excess,
        optx.Bisection(rtol=0.0, atol=tol, flip=False),
        0.5 * (lo + hi),
        options=dict(lower=lo, upper=hi),
        max_steps=256,
        throw=False,
    )
    return jnp.exp(sol.value)


_SECOND_DERIVATIVE = (
    "second derivatives of learning_curve are not implemented in the kernel (its "
    "hyper-parameters or X) or, at finite width, in anything: differentiate once"
)


@jax.custom_jvp
def _at_root(z_star: Array, h: Array, slope: Array) -> Array:
    """z*, a root of H found with its inputs held fixed, with the implicit function theorem's
    derivative −dH/∂_zH (h = H(z*), `slope` = ∂_zH). First derivatives only: the rule holds
    ∂_zH fixed, so a second derivative raises instead of coming out wrong."""
    return z_star


@_at_root.defjvp
def _at_root_jvp(primals, tangents):
    z_star, h, slope = primals
    return z_star, -tangents[1] / refuse_derivative(_SECOND_DERIVATIVE, h, slope)


def _finite_width_curve(K, Y, noise, target_noise, ns, k, eta, U, inv_width):
    """The learning curve of a finite-width FCN whose kernel is renormalised by a scalar u
    (SPEC §5, `docs/learning_curves.md`): u(n) at the saddle point of `fj.renormalise`'s
    effective action with the data terms replaced by their training-set averages, then the
    GP curve with the ridge σ²/u. Returns (E_g, κ, γ, u, χ_proxy, η, a²) per n, with
    χ_proxy = tᵀuK t · `inv_width` averaged: tᵀuK t = yᵀ(K + λ)⁻¹K(K + λ)⁻¹y/u at λ = σ²/u,
    which `pull` already holds (n(yᵀ(K + λ)⁻¹y/n − training error/λ), divided by u).

    The saddle z = log u is found by bisection on the spectrum; its derivatives enter by the
    implicit function theorem (`_at_root`): −∂_θ H/∂_z H, with H(z) = z − Σ_l log(1 − g(z)/k_l)."""
    power = _power(U, jax.lax.stop_gradient(Y))
    # Targets whose power overflows (|y| ≳ 10¹⁵⁴) would stop the saddle's search in lineax
    # (a non-finite input); it runs on zeros instead, and the curve comes out flagged.
    finite_power = jnp.all(jnp.isfinite(power))
    power = jnp.where(finite_power, power, 0.0)
    tol = 1e3 * float(jnp.finfo(K.dtype).eps)
    gp = jnp.isinf(k[0])
    sg = jax.lax.stop_gradient
    sg_noise, sg_s2, sg_k = sg(noise), sg(target_noise), sg(k)

    def pull(dof, gap, n, z):
        """g(z) = u ∂_u[−log N(Y; 0, uK + σ²)] from the training-set averages at ridge λ:
        tr K(K + λ)⁻¹ and yᵀ(K + λ)⁻¹y/n − training error/λ (`_resolvent_gap`)."""
        return 0.5 * (dof - jnp.exp(-z) * n * gap)

    def cheap_pull(n, z, tol=tol):  # the same on the fixed spectrum: for the bisection and ∂_z H
        ridge = sg_noise * jnp.exp(-z)
        kappa = _kappa(eta, ridge, n, tol)
        dof = jnp.sum(n * eta / (n * eta + kappa))
        return pull(dof, _resolvent_gap(eta, power, n, kappa, ridge, sg_s2), n, z)

    def action(n, z):
        """S (up to a constant) reduced to z: the prior's least Σ_l k_l(e^{v_l} − 1 − v_l)
        over Σ_l v_l = z (`_least_prior`) plus the averaged data term −log N(Y; 0, e^z K + σ²),
        whose derivative in z is the pull g. Stationary in z at a saddle point, so that a
        rough root gives S to second order; S at v_l = log(1 − g/k_l) instead was off by
        hundreds where some u_l is tiny and the condition steep (u = 1.7·10⁻⁶)."""
        k_safe = jnp.where(gp, 1.0, sg_k)  # at C = ∞ nothing here is used
        data = _averaged_data_term(eta, power, n, sg_noise, sg_s2, z, tol)
        return _least_prior(z, k_safe)[0] + data

    def solve_z(n):
        # The action may have several minima (as `renormalise`'s may): the intervals of 201
        # points of [−50, 50] where the condition (dS/dz's sign) goes from − to + (the left
        # point with every u_l > 0) hold them. Up to `_CANDIDATES` of them are bisected
        # 16 steps (to 8·10⁻⁶ in z, on κ to 10⁻⁶), S compared there, and the root solved to
        # full accuracy in the lowest's interval (on all of [−50, 50] where none was seen).
        grid = jnp.linspace(-_BRACKET, _BRACKET, 201, dtype=K.dtype)
        g = jax.vmap(lambda z: cheap_pull(n, z, 1e-6))(grid)  # its sign is what counts
        intervals = _minimum_intervals(g, grid, sg_k)
        count = jnp.sum(intervals)
        first = jnp.argsort(~intervals, stable=True)[:_CANDIDATES]
        held = intervals[first]

        def rough_gap(z):
            return _stationarity_gap(cheap_pull(n, z, 1e-6), z, sg_k)

        def lowest():
            roots = _bisect_intervals(jax.vmap(rough_gap), grid[first], grid[first + 1], 16)
            actions = jax.vmap(lambda z: action(n, z))(roots)
            return first[jnp.argmin(jnp.where(held, actions, jnp.inf))]

        # (With one minimum or none, as usual, nothing to compare: the cost stays the scan's.)
        best = jax.lax.cond(count > 1, lowest, lambda: first[0])
        bracket = (
            jnp.where(count > 0, grid[best], -_BRACKET),
            jnp.where(count > 0, grid[best + 1], _BRACKET),
        )
        z, located = _solve_log_scale(lambda z: cheap_pull(n, z), sg_k, K.dtype, bracket)
        slope = jax.grad(lambda z: _stationarity_gap(cheap_pull(n, z), z, sg_k))(z)
        # A minimum: the condition increases through the root.
        ok = located & (slope > 0) & (count <= _CANDIDATES)
        located = finite_power & (gp | ok)
        return jnp.where(gp, 0.0, z), slope, located

    z_star, slope, located = jax.lax.map(solve_z, ns)
    # One evaluation at z* with the derivatives of (K, Y, σ², σ_ε²), for ∂_θ H; one with z's.
    ridge_star = noise * jnp.exp(-z_star)
    _, _, _, dof, gap, _, _ = _curve(K, Y, ridge_star, target_noise, ns, eta, U, True)
    h = jax.vmap(_stationarity_gap, in_axes=(0, 0, None))(pull(dof, gap, ns, z_star), z_star, k)
    z = jnp.where(gp, 0.0, _at_root(z_star, h, jnp.where(gp, 1.0, slope)))
    ridge = noise * jnp.exp(-z)
    error, kappa, gamma, _, gap, _, _ = _curve(K, Y, ridge, target_noise, ns, eta, U, True)
    chi_proxy = jnp.exp(-z) * ns * gap * inv_width
    return error, kappa, gamma, jnp.exp(z), chi_proxy, eta, power, located


_CANDIDATES = 4  # the most minima of the finite-width curve's action told apart


def _patch_width_curve(network, X, Y, target_noise, ns, inv_width):
    """The learning curve of a finite-width PatchCNN (one hidden layer, one output), whose
    kernel K_U = Σ_pq U_pq κ_pq a P×P matrix U renormalises (`fj.renormalise`,
    `_renormalise_patches`): U(n) at the saddle point of that action with its data term
    replaced by its training-set average, then the self-consistent curve of the kernel K_U*
    at the ridge σ². Returns (E_g, κ, γ, tr U*/P, χ_proxy, U*, located) per n.

    On the pool's measure T_U = K_U/M, with A = nT_U + κI and κ(U) its renormalised ridge
    (κ = σ² + κ tr T_U A⁻¹), the averaged data term −log N(y; 0, K_U + σ²) is

        D_n(U) = ½[log det(I + nT_U/κ) + n log κ − n + nσ²/κ + n yᵀA⁻¹y/M + nσ_ε²/κ],

    the scalar curve's `_averaged_data_term` with T = uK (it is that at U = uI when P = 1).
    Its gradient is the averaged pull: a deterministic equivalent differentiated in the
    kernel, κ's dependence included. D_n is written with Cholesky factors of A, smooth in U
    however degenerate T_U's spectrum; κ is bisected on T_U's eigenvalues (held fixed) and
    then takes two Newton steps on its equation in A's factors, which give κ(U)'s first and
    second derivatives (exact at the root), as S's Hessian needs. `_matrix_saddle` minimises
    the Wishart prior plus D_n; its Newton steps carry U*'s derivatives, and `_curve` those
    of E_g at K_U* (first order, as the scalar curve's). Cost per evaluation of D_n: one M×M
    eigendecomposition and three Cholesky factorisations; memory P²M² for the κ_pq."""
    M = X.shape[0]
    pairs = _patch_pair_kernels(network, X, X) / M  # (P, P, M, M): the operators κ_pq/M
    P = pairs.shape[0]
    y = Y[:, 0]
    noise = network.noise
    eye = jnp.eye(M, dtype=X.dtype)
    tol = 1e3 * float(jnp.finfo(X.dtype).eps)
    sg = jax.lax.stop_gradient

    def operator(U):
        T = jnp.einsum("pq,pqab->ab", U, pairs)
        return 0.5 * (T + T.T)

    def renormalised_ridge(T, n):
        eta = kernel_spectrum(T)[0]
        kappa = sg(_kappa(eta, sg(noise), n, tol))
        for _ in range(2):  # κ ← κ − h/h′, h = κ − σ² − κ(M − κ tr A⁻¹)/n
            inv = cholesky_inverse(n * T + kappa * eye)[1]
            tr1 = jnp.sum(inv**2)  # tr A⁻¹
            tr2 = jnp.sum((inv.T @ inv) ** 2)  # tr A⁻²
            h = kappa - noise - kappa * (M - kappa * tr1) / n
            slope = 1 - M / n + 2 * kappa * tr1 / n - kappa**2 * tr2 / n
            kappa = kappa - h / slope
        return kappa

    def averaged_nll(U, n):  # D_n(U)
        T = operator(U)
        kappa = renormalised_ridge(T, n)
        cho, inv = cholesky_inverse(n * T + kappa * eye)
        log_det = 2 * jnp.sum(jnp.log(jnp.diagonal(cho))) + (n - M) * jnp.log(kappa)
        quad = jnp.sum((inv @ y) ** 2) / M + target_noise / kappa
        return 0.5 * (log_det - n + n * noise / kappa + n * quad)

    def at_size(n):
        saddle = _matrix_saddle(lambda U: averaged_nll(U, n), P, network, X.dtype)
        T = operator(saddle.U)
        eta, V = kernel_spectrum(T)
        out = _curve(T, Y, noise, target_noise, n[None], eta, V, True)
        error, kappa, gamma, _, gap = (v[0] for v in out[:5])
        return error, kappa, gamma, saddle.U, n * gap * inv_width, saddle.converged

    error, kappa, gamma, U, chi_proxy, located = jax.lax.map(at_size, ns)
    scale = jnp.trace(U, axis1=1, axis2=2) / P
    return error, kappa, gamma, scale, chi_proxy, U, located


def _patch_outputs_width_curve(network, X, Y, target_noise, ns, inv_width):
    """The learning curve of a finite-width PatchCNN (one hidden layer) with m outputs, whose
    kernel Cov(f_o(x), f_r(x′)) = Σ_pq U_(p,o),(q,r) κ_pq(x, x′) a Pm×Pm matrix U renormalises
    (`fj.renormalise`, `_renormalise_patches`): U(n) at the saddle point of that action with
    its data term replaced by its training-set average, then the test error of that kernel's
    GP averaged over the outputs. Returns (E_g, κ, γ, tr U*/(Pm), χ_proxy, U*, located) per n.

    The kernel does not factor over outputs, so neither the one-output path's scalar ridge
    nor `_outputs_width_curve`'s eigenbasis of U applies. Each training point brings m
    outputs at once, and the ridge becomes an m×m matrix R. With 𝒯 the operator of the
    kernel on the pool's measure (mM×mM, output-major), 𝒜 = n𝒯 + R ⊗ I and Tr_M the sum of
    a matrix's diagonal pool blocks (m×m), R solves

        R = σ²I + (MR − R Tr_M[𝒜⁻¹] R)/n,

    and the averaged data term is

        D_n(U) = ½[log det 𝒜 − (M − n) log det R − nm + n(σ² + σ_ε²) tr R⁻¹ + n yᵀ𝒜⁻¹y/M],

    whose log-determinant part (the first four terms) is stationary in R at that root, as
    the scalar one is in κ; the quadratic forms are not, and D_n's derivatives in U carry
    R(U)'s. (Each training point's m×m block of (K + σ²)⁻¹ is R⁻¹; the equation is the one
    of the block Woodbury identity with each point's Ψᵀ(Σ̂ + λ)⁻¹Ψ replaced by its average.)
    Where U = Σ_i S_i ⊗ v_iv_iᵀ over an orthonormal output basis, everything is
    `_outputs_width_curve`'s, direction by direction, and with one output it is
    `_patch_width_curve`'s. The test error's bias is λ²d/dμ of the quadratic form at the
    sample covariance shifted by −μ times the population one, and χ's σ² derivative is
    taken the same way, both through R's Jacobian J = ∂F/∂R (m²×m²):

        m E_g = vᵀ((R² + σ²R_μ) ⊗ I)v/M + σ_ε² tr R⁻¹σ²R_μR⁻¹,   v = 𝒜⁻¹y,
        σ²R_μ = J⁻¹(Tr_M[𝒮²]/n),   𝒮 = R̃ − R̃𝒜⁻¹R̃,   R̃ = R ⊗ I,
        C χ_proxy = Q + σ² dQ/dσ²,   Q = n yᵀv/M + nσ_ε² tr R⁻¹   (dR/dσ² = J⁻¹I),

    with Ω⁻¹ = I + R⁻¹σ²R_μR⁻¹ = (I − Γ)⁻¹ (γ = tr Γ/m) and κ = tr R/m. R is found without
    derivatives by damped Newton steps from the scalar ridge of 𝒯's spectrum (the separable
    case's), until a step is below 10³eps or, below eps^(1/3), no longer half the one before
    (the residual's rounding floor, ~eps·cond 𝒜: 10⁻⁹–10⁻⁷ at σ² = 10⁻⁸), then takes two
    Newton steps with J held fixed, which carry its first and second derivatives, as the
    saddle's Hessians need; the size is flagged where their last is above √eps and above 10×
    that floor. Cost per evaluation of D_n: one (mM)×(mM)
    eigendecomposition, a few Cholesky factorisations of that size and M²m⁴ for J; memory
    P²M² for the κ_pq and (mM)² for 𝒜⁻¹."""
    M, m = Y.shape
    dtype = X.dtype
    # Solved in the targets' principal axes and U* rotated back by I_P ⊗ O (`principal_axes`),
    # as the FCN's m-output curve and `fj.renormalise` are.
    Y, O = principal_axes(Y)
    pairs = _patch_pair_kernels(network, X, X) / M  # (P, P, M, M): the operators κ_pq/M
    P = pairs.shape[0]
    y = Y.T.reshape(m * M)  # output-major: (o, a) ↦ o·M + a
    noise = network.noise
    eye = jnp.eye(m, dtype=dtype)
    eye_pool = jnp.eye(M, dtype=dtype)
    eps = float(jnp.finfo(dtype).eps)
    tol = 1e3 * eps
    cap = eps ** (1 / 3)  # the largest rounding floor the ridge's steps may stop at
    sg = jax.lax.stop_gradient

    def operator(U):  # 𝒯: Σ_pq U_(p,o),(q,r) κ_pq/M as an (mM)×(mM) matrix
        T = jnp.einsum("poqr,pqab->oarb", U.reshape(P, m, P, m), pairs).reshape(m * M, m * M)
        return 0.5 * (T + T.T)

    def pool_trace(B):  # Tr_M[B]: the sum of B's M diagonal m×m blocks
        return jnp.einsum("oara->or", B.reshape(m, M, m, M))

    def factor(T, R, n):  # (L, L⁻¹), L Lᵀ = 𝒜 = n𝒯 + R ⊗ I
        return cholesky_inverse(n * T + jnp.kron(R, eye_pool))

    def inverse(T, R, n):  # 𝒜⁻¹
        half = factor(T, R, n)[1]
        return half.T @ half

    def inverse_trace(half):  # Tr_M[𝒜⁻¹] = Tr_M[L⁻ᵀL⁻¹] from L⁻¹, without the (mM)³ product
        half = half.reshape(m * M, m, M)
        return jnp.einsum("joa,jra->or", half, half)

    def residual(R, C, n, s):  # F(R) = R − sI − (MR − R C R)/n, C = Tr_M[𝒜⁻¹], s = σ²
        return R - s * eye - (M * R - R @ C @ R) / n

    def jacobian(R, A_inv, n):  # J = ∂F/∂R, m²×m² over row-major vec
        # dF = (1 − M/n) dR + (dR C R + R C dR − R Tr_M[𝒜⁻¹(dR ⊗ I)𝒜⁻¹] R)/n, C = Tr_M[𝒜⁻¹]
        A4 = A_inv.reshape(m, M, m, M)
        N = jnp.einsum("iakb,jalb->ijkl", A4, A4)  # Tr_M[𝒜⁻¹(e_k e_lᵀ ⊗ I)𝒜⁻¹]_ij
        CR = pool_trace(A_inv) @ R
        J = (1 - M / n) * jnp.einsum("ik,jl->ijkl", eye, eye)
        J = J + jnp.einsum("ik,lj->ijkl", eye, CR) / n + jnp.einsum("ki,jl->ijkl", CR, eye) / n
        J = J - jnp.einsum("ia,abkl,bj->ijkl", R, N, R) / n
        return J.reshape(m * m, m * m)

    def start(T, n, noise):  # R with F(R) = 0, no derivatives: damped Newton from the scalar
        eta = kernel_spectrum(T)[0]
        R0 = _kappa(eta / m, noise, n * m, tol) * eye  # point, exact where U = I_P ⊗ sI

        def step(carry):
            R, size, _, i = carry
            A_inv = inverse(T, R, n)
            delta = _ridge_solve(jacobian(R, A_inv, n), residual(R, pool_trace(A_inv), n, noise))
            # R ≥ σ²I at the root: halve the step while R − tδ falls below σ²/2
            halvings = 0.5 ** jnp.arange(12, dtype=dtype)
            least = jax.vmap(lambda t: _eigh(_sym(R - t * delta))[0][0])(halvings)
            t = halvings[jnp.argmax(least >= 0.5 * noise)]
            new_size = jnp.max(jnp.abs(delta)) / jnp.max(jnp.abs(R))
            return _sym(R - t * delta), new_size, size, i + 1

        def settled(size, previous):  # at tol, or at the rounding floor: no longer halving
            return (size <= tol) | ((size <= cap) & (size > 0.5 * previous))

        def going(carry):
            _, size, previous, i = carry
            return ~settled(size, previous) & (i < 40)

        inf = jnp.asarray(jnp.inf, dtype)
        R, size, previous, _ = jax.lax.while_loop(going, step, (R0, inf, inf, 0))
        return R, settled(size, previous), size

    def ridge(U, n):
        """𝒯 and R(U): `start`, then two Newton steps with its J held fixed; and whether they
        settled (below)."""
        T = operator(U)
        R, started, floor = start(sg(T), sg(n), sg(noise))
        half = factor(T, R, n)[1]  # the first step's, whose values J takes (held fixed)
        J = sg(jacobian(R, sg(half).T @ sg(half), n))
        step = jnp.zeros((), dtype)
        for newton in range(2):
            if newton:  # the factor at the first step's R (at the start's: above)
                half = factor(T, R, n)[1]
            delta = _ridge_solve(J, residual(R, inverse_trace(half), n, noise))
            R = _sym(R - delta)
            step = jnp.max(jnp.abs(sg(delta))) / jnp.max(jnp.abs(sg(R)))
        # Settled: the last step within √eps of R, or within 10× the rounding floor the start
        # stopped at (at most eps^(1/3)). A linear PatchCNN at σ² = 10⁻⁸, n ≥ d, had 𝒜's
        # condition 10⁸–10⁹ and steps of 10⁻⁹–10⁻⁷ that no longer shrank; against √eps it was
        # flagged while E_g and U* agreed with the one-output curves to 10⁻⁸ (stop 58).
        return T, R, started & (step <= jnp.maximum(math.sqrt(eps), jnp.minimum(10 * floor, cap)))

    def averaged_nll(U, n):  # D_n(U)
        T, R, _ = ridge(U, n)
        cho, half = factor(T, R, n)
        R_inv, logdet_R = small_inverse_logdet(R)
        value = 2 * jnp.sum(jnp.log(jnp.diagonal(cho))) - (M - n) * logdet_R - n * m
        value = value + n * (noise + target_noise) * jnp.trace(R_inv)
        return 0.5 * (value + n * jnp.sum((half @ y) ** 2) / M)

    def at_size(n):
        saddle = _matrix_saddle(lambda U: averaged_nll(U, n), P * m, network, dtype)
        U = _first_order_only(saddle.U)
        T, R, solved = ridge(U, n)
        A_inv = inverse(T, R, n)
        J = jacobian(R, A_inv, n)
        v = (A_inv @ y).reshape(m, M)

        def form(B):  # vᵀ(B ⊗ I)v
            return jnp.sum((B @ v) * v)

        R_big = jnp.kron(R, eye_pool)
        S4 = (R_big - R_big @ A_inv @ R_big).reshape(m, M, m, M)
        R_mu = _sym(_ridge_solve(J, jnp.einsum("oasb,sbra->or", S4, S4) / n))  # σ² dR/dμ
        R_s = _sym(_ridge_solve(J, eye))  # dR/dσ²
        R_inv = small_inverse_logdet(R)[0]
        excess = _sym(R_inv @ R_mu @ R_inv)  # Ω⁻¹ − I
        error = (form(R @ R + R_mu) / M + target_noise * jnp.trace(excess)) / m
        Q = n * jnp.sum(v.reshape(-1) * y) / M + n * target_noise * jnp.trace(R_inv)
        dQ = -n * form(R_s) / M - n * target_noise * jnp.trace(R_inv @ R_s @ R_inv)
        chi = (Q + noise * dQ) * inv_width
        Gamma = eye - small_inverse_logdet(eye + excess)[0]
        ok = saddle.converged & solved
        return error, jnp.trace(R) / m, jnp.trace(Gamma) / m, U, chi, ok

    error, kappa, gamma, U, chi_proxy, located = jax.lax.map(at_size, ns)
    scale = jnp.trace(U, axis1=1, axis2=2) / (P * m)
    return error, kappa, gamma, scale, chi_proxy, from_principal_axes(U, O), located


def _ridge_solve(J: Array, B: Array) -> Array:
    """J⁻¹B for an m×m ridge's Newton system (J m²×m² over row-major vec, B m×m), NaN where J
    or B is not finite. Where U's blocks cannot be factorised (NaN; BFGS probing far out),
    lineax would stop the program on the non-finite system: it is solved on I and 0 there,
    and the step made NaN, as the blocks' own failure would make it, so that BFGS's line
    search turns the step down (measured: σ² = 10⁻⁶ then converges; stop 55)."""
    m = B.shape[-1]
    finite = jnp.all(jnp.isfinite(J)) & jnp.all(jnp.isfinite(B))
    operator = lx.MatrixLinearOperator(jnp.where(finite, J, jnp.eye(m * m, dtype=J.dtype)))
    x = lx.linear_solve(operator, jnp.where(finite, B, 0.0).reshape(m * m), DenseLU())
    return jnp.where(finite, x.value.reshape(m, m), jnp.nan)


def _pair_form(A: Array, eta: Array, x: Array, W: Array, y: Array) -> Array:
    """Σ_(ρ≠σ) A_ρσ x_ρᵀ W y_σ: a tangent A = VᵀdK V between distinct modes (without its
    rounding between modes `kernel_spectrum` set to 0), for the m-output curve's forms."""
    A = _drop_null_block(A, eta)
    A = A - jnp.diag(jnp.diagonal(A))
    return jnp.sum((x @ W) * (A @ y))


def _eigenvalue_tangent(A: Array, eta: Array) -> Array:
    """dη_ρ = (VᵀdK V)_ρρ, 0 on the modes `kernel_spectrum` set to 0."""
    return jnp.where(eta == 0, 0.0, jnp.diagonal(A))


def _action_form(A, eta, c, U, n):  # −(n²/2) Σ_(ρ≠σ) A_ρσ c_ρᵀ U c_σ
    return -0.5 * n**2 * _pair_form(A, eta, c, U, c)


def _error_form(A, eta, c, W, d, n):  # −2n Σ_(ρ≠σ) A_ρσ c_ρᵀ W d_σ
    return -2 * n * _pair_form(A, eta, c, W, d)


def _chi_form(A, eta, c, U, W, d, n, noise):  # −n²[Σ A c U c − 2σ² Σ A c W d]
    return -(n**2) * (_pair_form(A, eta, c, U, c) - 2 * noise * _pair_form(A, eta, c, W, d))


def _outputs_width_curve(network, K, Y, noise, target_noise, ns, eta, V, inv_width):
    """The learning curve of a finite-width FCN with m > 1 outputs, whose kernel U ⊗ K an
    m×m matrix U renormalises (`fj.renormalise`, `_renormalise_outputs`; one m×m factor per
    layer when deep and linear): U(n) at the saddle point of that action with its data term
    replaced by its training-set average, then the self-consistent curve of each output
    direction of U(n). Returns (E_g, κ, γ, tr U*/m, χ_proxy, U*, located) per n.

    In U's eigenbasis the outputs decouple: direction i is a GP with kernel u_i K, whose
    renormalised ridge at σ² is κ̃_i = u_i κ(σ²/u_i), and whose targets are Y v_i. Written
    without that eigenbasis (which is degenerate at the scalar start U ∝ I), as matrices that
    commute with U: the m×m ridge R solves R = σ²I + Σ_ρ η_ρ U R G_ρ with G_ρ = (nη_ρU + R)⁻¹,
    and with ã_ρ = Vᵀ_ρ Y/√M (the targets in mode ρ) the averaged data term is

        D_n(U) = ½[Σ_ρ log det(I + nη_ρ U R⁻¹) + n log det R − nm + n(σ² + σ_ε²) tr R⁻¹
                   + n Σ_ρ ã_ρᵀ G_ρ ã_ρ],

    the sum over directions of the scalar curve's `_averaged_data_term` (so the FCN's at
    m = 1). With T̃ = Σ_ρ η_ρ U G_ρ² and Ω = σ²R⁻¹ + RT̃ (= I − Γ, Γ = nΣ_ρ η_ρ²U²G_ρ²: κ's
    equation, a sum of positive terms), the curve averaged over the m directions is

        m E_g = Σ_ρ ã_ρᵀ G_ρ R Ω⁻¹ R G_ρ ã_ρ + σ_ε² tr Ω⁻¹Γ,

    and C χ_proxy = n Σ_ρ ã_ρᵀ Ω⁻¹(σ²R⁻¹ nη_ρ U G_ρ² + T̃ R G_ρ) ã_ρ + nσ_ε² tr Ω⁻¹T̃ (the
    scalar `_resolvent_gap` per direction). R is solved whitened by U: X = U⁻¹R (which
    commutes with U) solves X = σ²U⁻¹ + X Σ_ρ η_ρ B_ρ, B_ρ = (nη_ρ + X)⁻¹, the scalar κ's
    equation at λ = σ²/u_i per direction, so that G_ρ = B_ρU⁻¹, R = UX and log det(I +
    nη_ρUR⁻¹) = log det(nη_ρ + X) − log det X. X starts from κ(σ²/u_i) per eigenvalue of U
    (held fixed) and takes two Newton steps on its equation (the m²×m² Fréchet derivative,
    dense), which carry X(U)'s first and second derivatives, as the saddle's Hessians need.
    (Until stop 58 the steps were taken on R's equation, whose blocks nη_ρU + R have U's
    condition times X's: ~1/σ² where U* nears rank one, an output without target power.
    At σ² = 10⁻⁸ a step there left R's residual at 10⁻², and lineax stopped the program on
    the NaN it made in the Hessian's reverse pass.) The saddle runs in the targets' principal
    axes and U* is rotated back (the action is equivariant in the outputs): there U*'s
    eigenvalue along an output without target power is a diagonal entry. K's
    derivatives (σ_w², σ_a², X) are held in its fixed eigenbasis, as `fj.renormalise`'s:
    each η_ρ carries (VᵀdK V)_ρρ, and the quadratic forms in ã take the rest as rank-one
    forms of the divided differences, e.g. G's −nUG_ρG_σ (`first_order_term`). Cost per
    evaluation of D_n: M Cholesky factors of m×m blocks and an m²×m² solve per Newton step,
    O(Mm⁴)."""
    M, m = Y.shape
    dtype = K.dtype
    sg = jax.lax.stop_gradient
    tol = 1e3 * float(jnp.finfo(dtype).eps)
    eye = jnp.eye(m, dtype=dtype)
    # Solved in the targets' principal axes and U* rotated back (`principal_axes`): in the
    # original basis U*'s eigenvalue ~σ² along an output without target power was kept to
    # eps·cond U* only (σ² = 10⁻⁸: 6·10⁻⁸ relative), and the saddle did not settle (stop 58).
    Y, O = principal_axes(Y)
    a = V.T @ Y / math.sqrt(M)  # (M, m): ã_ρ; Y's derivatives at V fixed, K's in the forms
    # Targets whose power overflows run on zeros and come out flagged (as for one output).
    finite_power = jnp.isfinite(jnp.sum(sg(a) ** 2))
    a = jnp.where(finite_power, a, 0.0)
    lam = eta + first_order_term(_eigenvalue_tangent, K, V, eta)  # η with its tangent

    def whitened(X, n):  # B_ρ = (nη_ρ + X)⁻¹, (M, m, m), and log det(nη_ρ + X)
        return small_inverse_logdet(n * lam[:, None, None] * eye + X)

    def ridge(U, n):
        """X(U) = U⁻¹R(U): two Newton steps from its value per eigenvalue of U (held fixed),
        and the last step's size relative to X."""
        u, Q = _eigh(sg(U))
        X = (Q * jax.vmap(lambda ui: _kappa(sg(eta), sg(noise) / ui, sg(n), tol))(u)) @ Q.T
        U_inv, logdet_U = small_inverse_logdet(U)
        step = jnp.zeros((), dtype)
        # F's Jacobian in X at the start, held fixed (no derivatives) for both steps: the
        # start solves F = 0 already (to κ's tolerance), so the steps' derivatives, those of
        # X(U) to second order, are unchanged, while the m⁴ Jacobian and its solve carry no
        # tangents (the m-output curve's Hessians in U were mostly theirs). dF = dX − dX S +
        # Σ_ρ η_ρ X B_ρ dX B_ρ with S = Σ_ρ η_ρ B_ρ.
        B = whitened(X, n)[0]
        B0 = sg(B)
        S0 = jnp.einsum("r,rij->ij", sg(lam), B0)
        XB = jnp.einsum("ij,rjk->rik", X, B0)
        J = jnp.einsum("ik,lj->ijkl", eye, S0) - jnp.einsum("r,rik,rlj->ijkl", sg(lam), XB, B0)
        J = jnp.eye(m * m, dtype=dtype) - J.reshape(m * m, m * m)
        for newton in range(2):
            if newton:  # the blocks at the first step's X (at the start's: above)
                B = whitened(X, n)[0]
            F = X - noise * U_inv - X @ jnp.einsum("r,rij->ij", lam, B)
            delta = _ridge_solve(J, F)  # NaN where U's blocks could not be factorised
            X = _sym(X - delta)
            step = jnp.max(jnp.abs(sg(delta))) / jnp.max(jnp.abs(sg(X)))
        return X, U_inv, logdet_U, step

    def resolvents(U, n):
        """At the ridge: G_ρ = (nη_ρU + R)⁻¹ = B_ρU⁻¹ (M, m, m), log det(nη_ρU + R) − log det R
        = log det(nη_ρ + X) − log det X per mode (exactly 0 where η_ρ = 0), R = UX, R⁻¹ and
        log det R, the step's size and X. (X commutes with U, so these are symmetric.)"""
        X, U_inv, logdet_U, step = ridge(U, n)
        B, logdets = whitened(X, n)
        X_inv, logdet_X = small_inverse_logdet(X)
        G = _sym(jnp.einsum("rij,jk->rik", B, U_inv))
        R_inv = _sym(X_inv @ U_inv)
        logdet_R = logdet_U + logdet_X
        return G, logdets - logdet_X, _sym(U @ X), R_inv, logdet_R, step, X

    def averaged_nll(U, n):  # D_n(U)
        G, per_mode, _, R_inv, logdet_R, _, _ = resolvents(U, n)
        c = jnp.einsum("rij,rj->ri", G, a)
        trace_inv = jnp.trace(R_inv)
        value = jnp.sum(per_mode) + n * logdet_R - n * m + n * (noise + target_noise) * trace_inv
        value = 0.5 * (value + n * jnp.sum(a * c))
        return value + first_order_term(_action_form, K, V, eta, c, U, n)

    def at_size(n):
        saddle = _matrix_saddle(lambda U: averaged_nll(U, n), m, network, dtype)
        U = _first_order_only(saddle.U)
        G, _, R, R_inv, _, step, X = resolvents(U, n)
        c = jnp.einsum("rij,rj->ri", G, a)  # G_ρ ã_ρ
        d = jnp.einsum("rij,rj->ri", G, c)  # G_ρ² ã_ρ
        UG = jnp.einsum("ij,rjk->rik", U, G)
        T = _sym(jnp.einsum("r,rij,rjk->ik", lam, UG, G))  # T̃
        Gamma = _sym(n * jnp.einsum("r,rij,rkj->ik", lam**2, UG, UG))
        Omega = noise * R_inv + _sym(R @ T)
        Omega_inv = small_inverse_logdet(Omega)[0]
        C = _sym(R @ Omega_inv @ R)
        Rc = c @ R  # rows R G_ρ ã_ρ
        bias = jnp.sum((Rc @ Omega_inv) * Rc)
        error = bias + target_noise * jnp.sum(Omega_inv * Gamma)
        error = error + first_order_term(_error_form, K, V, eta, c, _sym(C @ U), d, n)
        error = error / m
        W = _sym(Omega_inv @ T @ R)
        lead = noise * n * jnp.sum(lam * jnp.sum((c @ _sym(Omega_inv @ R_inv @ U)) * c, axis=1))
        chi = n * (lead + jnp.sum(a * (c @ W)) + target_noise * jnp.sum(Omega_inv * T))
        chi = chi + first_order_term(_chi_form, K, V, eta, c, U, _sym(Omega_inv @ U), d, n, noise)
        kappa = jnp.trace(X) / m  # tr U⁻¹R/m
        ok = saddle.converged & finite_power & (step <= math.sqrt(float(jnp.finfo(dtype).eps)))
        return error, kappa, jnp.trace(Gamma) / m, U, chi * inv_width, ok

    error, kappa, gamma, U, chi_proxy, located = jax.lax.map(at_size, ns)
    scale = jnp.trace(U, axis1=1, axis2=2) / m
    return error, kappa, gamma, scale, chi_proxy, from_principal_axes(U, O), located


def _first_order_inputs(tree):
    """`_first_order_only` on every inexact array of a pytree (a network's hyper-parameters,
    the pool, …)."""
    dynamic, static = eqx.partition(tree, eqx.is_inexact_array)
    return eqx.combine(jax.tree.map(_first_order_only, dynamic), static)


@jax.custom_jvp
def _first_order_only(x: Array) -> Array:
    """x, whose first derivatives pass and whose second raise (`_SECOND_DERIVATIVE`): the
    matrix saddle's derivatives are exact to first order only."""
    return x


@_first_order_only.defjvp
def _first_order_only_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return x, dx * refuse_derivative(_SECOND_DERIVATIVE, x, jnp.ones_like(x))


def _resolvent_gap(eta, power, n, kappa, ridge, s2):
    """yᵀ(K + λ)⁻¹y/n − (training error)/λ averaged over training sets (the module
    docstring's averages). With b_ρ = nη_ρ + κ and T = Σ_ρ η_ρ/b_ρ² it is
    Σ a²/b + σ_ε²/κ − λ(Σ a²/b² + σ_ε²/κ²)/(1 − γ), and 1 − γ = λ/κ + κT (κ's equation):
    rearranged, [(λ/κ) n Σ a²η/b² + T(κ Σ a²/b + σ_ε²)] / (λ/κ + κT), sums of positive
    terms. The difference lost digits where σ² is tiny: u off by 6·10⁻⁵ at σ² = 10⁻⁹ and
    23× at 10⁻¹⁴ (n = 60 > d = 4, `tests/test_learning_curve.py`)."""
    b = n * eta + kappa
    T = jnp.sum(eta / b**2)
    r = ridge / kappa
    numerator = r * n * jnp.sum(power * eta / b**2) + T * (kappa * jnp.sum(power / b) + s2)
    return numerator / (r + kappa * T)


def _averaged_data_term(eta, power, n, noise, s2, z, tol):
    """−log N(Y; 0, e^z K + σ²) averaged over training sets of n points, up to a constant:
    ½[n z + Σ_ρ log(1 + nη_ρ/κ) + n log κ − n + nλ/κ + n e^{−z} quad] at λ = σ²e^{−z}, with
    quad the average of yᵀ(K + λ)⁻¹y/n. Stationary in κ (κ's equation), and its derivative
    in z is the pull g."""
    ridge = noise * jnp.exp(-z)
    kappa = _kappa(eta, ridge, n, tol)
    a = n * eta + kappa
    quad = jnp.sum(power / a) + s2 / kappa
    log_det = jnp.sum(jnp.log1p(n * eta / kappa)) + n * jnp.log(kappa) - n + n * ridge / kappa
    return 0.5 * (n * z + log_det + n * jnp.exp(-z) * quad)
