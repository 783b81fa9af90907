"""The free energy F of SPEC §3, written once, and the Equations of State derived from it.

    F = ½ tr(Yᵀ K_f⁻¹ Y) + (m/2) log det K_f + (n m/2) log 2π  +  C_1 · KL(N(0, Σ) ‖ N(0, Σ₀))
        + Σ_{l=2..L} C_l · KL(N(0, K^(l)) ‖ N(0, Q^(l−1)))

K_f = Q_f(Σ) + σ² I. The constant (n m/2) log 2π makes F at C = ∞ the exact negative log
marginal likelihood of GP regression with the NNGP kernel, so F is a (variational) negative
log-evidence for model selection.

The EoS are ∂F/∂Σ = 0. Since ∂F_data/∂Q_f = −½ A with A = TTᵀ − m K_f⁻¹ (the minus sign of
SPEC §3), (2/C) ∂F/∂Σ = Σ₀⁻¹ − Σ⁻¹ − (1/C) ∂_Σ tr[A Q_f(Σ)] with A held fixed: exactly the
first-layer EoS. The solver works on that residual, evaluated as the autodiff gradient of the
data term, so the physics lives here and nowhere else. Deeper layers are the same: each
layer's residual is (2/C_l) ∂F/∂(its covariance), in the precision domain (`eos_residual`).
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._linalg import cholesky_inverse, shifted_covariance, spd_inverse_logdet
from ._network import AbstractNetwork, _canonical


def _gaussian_kl(sigma: Float[Array, "S S"], prior_precision: Float[Array, "S S"]):
    """KL(N(0, Σ) ‖ N(0, Σ₀)) = ½[tr M − log det M − S] (SPEC §3), M = L₀ᵀΣL₀, L₀L₀ᵀ = Σ₀⁻¹.

    With L L ᵀ = M (Cholesky) and δ_i = L_ii − 1 this is
    ½[Σ_i (δ_i(2 + δ_i) − 2 log(1 + δ_i)) + Σ_{i>j} L_ij²], whose terms are O(δ²): its
    rounding error is O(eps ‖M − I‖), not O(eps). The free energy multiplies the KL by C,
    and tr M and log det M computed apart left C · 4·10⁻¹⁶ in F (4·10⁻⁴ at C = 10¹², 0.4 at
    10¹⁵ against the GP limit's F, for Σ = Σ₀ exactly)."""
    L0 = cholesky_inverse(prior_precision)[0]
    M = L0.T @ sigma @ L0
    L = cholesky_inverse(0.5 * (M + M.T))[0]
    delta = jnp.diagonal(L) - 1
    diagonal = delta * (2 + delta) - 2 * jnp.log1p(delta)
    return 0.5 * (jnp.sum(diagonal) + jnp.sum(jnp.tril(L, -1) ** 2))


def _first_layer_kl(network: AbstractNetwork, state: Array, d: int) -> Array:
    """KL(N(μ, Σ) ‖ N(0, Σ₀)) = KL(N(0, Σ) ‖ N(0, Σ₀)) + ½ μᵀΣ₀⁻¹μ of the first layer's
    filters (SPEC §3; μ = 0 without `weight_mean`), from its state (`split_state`)."""
    sigma, mu = network.split_state(state)
    precision = network.prior_precision(d)
    kl = _gaussian_kl(sigma, precision)
    return kl if mu is None else kl + 0.5 * mu @ precision @ mu


# Below this ‖ΔK‖_F a deeper layer's KL is summed as a series (`_shifted_kl`).
_KL_SERIES_BELOW = 1e-3


def _shifted_kl(logdet: Array, delta: Array, K: Array) -> Array:
    """KL(N(0, K) ‖ N(0, Q)) = ½[log det(I + ΔQ) − tr(ΔK)] for K = Q(I + ΔQ)⁻¹ (SPEC §3),
    given log det(I + ΔQ) (`shifted_covariance`). With G = ΔK, whose eigenvalues t are those
    of ΔQ mapped by e ↦ e/(1 + e), it is ½ Σ_{k≥2} tr(G^k)/k (= ½ Σ −log(1 − t) − t). Where
    ‖G‖_F < 10⁻³ (wide layers) the series to k = 6 is used: its terms are O(‖G‖²), so its
    rounding is O(eps ‖G‖), where the two O(‖G‖) terms computed apart left O(n eps), which F
    multiplies by C (10⁻³ in F at C = 10¹², n = 32). |tr(G^k)| ≤ ‖G‖_F^k bounds what is
    left out by ‖G‖_F⁷: 10⁻¹⁵ of the KL's O(‖G‖²) at the switch."""
    G = delta @ K
    small = jnp.sum(G * G) < _KL_SERIES_BELOW**2
    Gs = jnp.where(small, G, 0.0)
    G2 = Gs @ Gs
    G3 = G2 @ Gs

    def trace(A, B):  # tr(AB)
        return jnp.sum(A * B.T)

    series = (
        trace(Gs, Gs) / 2 + trace(G2, Gs) / 3 + trace(G2, G2) / 4 + trace(G3, G2) / 5
    ) + trace(G3, G3) / 6
    return 0.5 * jnp.where(small, series, logdet - jnp.trace(G))


def _evidence(K: Float[Array, "n n"], Y: Float[Array, "n m"]):
    """The pieces of the GP evidence at K: (K⁻¹, log det K, T = K⁻¹Y)."""
    Kinv, logdet = spd_inverse_logdet(K)
    return Kinv, logdet, Kinv @ Y


@jax.custom_jvp
def _evidence_grad(K: Float[Array, "n n"], Y: Float[Array, "n m"]) -> Float[Array, "n n"]:
    """G = ∂D/∂K = −½ TTᵀ + (m/2) K⁻¹ = −½ A (SPEC §3), for D the GP negative log evidence.

    Its derivative is written by hand, dG = ½(K⁻¹dK TTᵀ + TTᵀ dK K⁻¹) − (m/2) K⁻¹dK K⁻¹
    − ½(K⁻¹dY Tᵀ + T dYᵀK⁻¹): two n×n matrix products per tangent, the least any Newton
    Jacobian of the EoS can cost, where generic forward-over-reverse autodiff needs ~4× that.
    """
    m = Y.shape[1]
    Kinv, _, T = _evidence(K, Y)
    return -0.5 * T @ T.T + 0.5 * m * Kinv


@_evidence_grad.defjvp
def _evidence_grad_jvp(primals, tangents):
    (K, Y), (dK, dY) = primals, tangents
    m = Y.shape[1]
    Kinv, _, T = _evidence(K, Y)
    E = Kinv @ dK
    U = E @ T - Kinv @ dY  # −dT
    UT = U @ T.T
    dG = 0.5 * (UT + UT.T) - 0.5 * m * (E @ Kinv)
    return -0.5 * T @ T.T + 0.5 * m * Kinv, 0.5 * (dG + dG.T)


def gp_negative_log_evidence(
    K: Float[ArrayLike, "n n"], Y: Float[ArrayLike, "n m"] | Float[ArrayLike, " n"]
) -> Float[Array, ""]:
    """D(K, Y) = ½ tr(Yᵀ K⁻¹ Y) + (m/2) log det K + (nm/2) log 2π (SPEC §3's data term).

    The negative log marginal likelihood of Y (n×m, or n for one output) under N(0, K) per
    column, for a symmetric positive-definite K (n×n): a concrete K that is not (or that
    holds NaN), or a concrete Y with NaN or inf, raises a `ValueError`. Its derivative is
    ⟨G, dK⟩ + ⟨K⁻¹Y, dY⟩ with G from the hand-written `_evidence_grad`, so first and
    second derivatives cost one factorisation and a few matrix products.
    """
    K, Y = jnp.asarray(K), jnp.asarray(Y)
    Y = Y[:, None] if Y.ndim == 1 else Y
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be a square matrix (n, n), got shape {K.shape}")
    if Y.ndim != 2 or Y.shape[0] != K.shape[0]:
        raise ValueError(f"Y must have shape (n,) or (n, m) with n = {K.shape[0]}, got {Y.shape}")
    _check_positive_definite("K", K)
    from ._solve import _check_finite  # a cycle at import time: _solve uses this module

    _check_finite("Y", Y)
    return _gp_nle(K, Y)


def _check_positive_definite(name: str, A) -> None:
    """A clear error for a concrete matrix that is not finite, symmetric positive definite
    (its Cholesky factorisation fails), where F and D would be NaN."""
    from ._solve import _concrete  # a cycle at import time: _solve uses this module

    if not _concrete(A):
        return
    a = np.asarray(A, dtype=float)
    tol = 1e-10 * np.abs(a).max(initial=0.0)
    ok = bool(np.all(np.isfinite(a))) and np.allclose(a, a.T, rtol=0.0, atol=tol)
    if ok:
        try:
            np.linalg.cholesky(a)
        except np.linalg.LinAlgError:
            ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite, symmetric positive-definite matrix")


@jax.custom_jvp
def _gp_nle(K: Array, Y: Array) -> Array:
    """`gp_negative_log_evidence` for K (n×n) and Y (n×m) as they are, unchecked."""
    n, m = Y.shape
    _, logdet, T = _evidence(K, Y)
    return 0.5 * jnp.sum(Y * T) + 0.5 * m * logdet + 0.5 * n * m * jnp.log(2 * jnp.pi)


@_gp_nle.defjvp
def _gp_nle_jvp(primals, tangents):
    (K, Y), (dK, dY) = primals, tangents
    n, m = Y.shape
    _, logdet, T = _evidence(K, Y)
    value = 0.5 * jnp.sum(Y * T) + 0.5 * m * logdet + 0.5 * n * m * jnp.log(2 * jnp.pi)
    G = _evidence_grad(K, Y)
    return value, jnp.sum(G * dK) + jnp.sum(T * dY)


def _low_rank_negative_log_evidence(
    Z: Float[Array, "n r"], B_inv: Float[Array, "r r"], logdet_B, noise, Y: Float[Array, "n m"]
) -> Float[Array, ""]:
    """D for K = D_n + Z B Zᵀ with Z of rank r < n and D_n diagonal (`noise`: its n entries),
    in r dimensions (Woodbury and the determinant lemma): with Z̃ = D_n^{-1/2} Z,
    Ỹ = D_n^{-1/2} Y and W = B⁻¹ + Z̃ᵀZ̃,

    YᵀK⁻¹Y = ỸᵀỸ − ỸᵀZ̃ W⁻¹ Z̃ᵀỸ,  log det K = Σ log D_n + log det B + log det W.
    """
    n, m = Y.shape
    scale = jnp.sqrt(noise)[:, None]
    Zs, Ys = Z / scale, Y / scale
    ZtY = Zs.T @ Ys
    W_inv, logdet_W = spd_inverse_logdet(B_inv + Zs.T @ Zs)
    quad = jnp.sum(Ys * Ys) - jnp.sum(ZtY * (W_inv @ ZtY))
    logdet = 2 * jnp.sum(jnp.log(scale)) + logdet_B + logdet_W
    return 0.5 * quad + 0.5 * m * logdet + 0.5 * n * m * jnp.log(2 * jnp.pi)


def _feature_space(network: AbstractNetwork, X: Float[Array, "n d"]):
    """(Z, c) of `AbstractNetwork.linear_features` when Q_f = Z (I_P ⊗ cΣ) Zᵀ has rank
    r = P·S < n (linear φ, one hidden layer), else None: then the evidence, the EoS and the
    readout are evaluated in r dimensions. Decided from shapes, so it is static under jit."""
    features = network.linear_features(X)
    return features if features is not None and features[0].shape[1] < X.shape[0] else None


# Relative jitter on Q_f(U, U) of the Nyström readout: its inverse enters the model.
_NYSTROM_JITTER = 1e-10


class _LowRank(NamedTuple):
    """K_f = Z B Zᵀ + diag(noise), with Z n×r: B, B⁻¹, log det B and the diagonal, an
    n-vector (σ², or σ² plus the Nyström readout's correction)."""

    Z: Array
    B: Array
    B_inv: Array
    logdet_B: Array
    noise: Array


def _nystrom(network: AbstractNetwork, sigma: Array, X: Array) -> tuple[Array, Array]:
    """Features Φ = Q_f(X, U) L⁻ᵀ of the Nyström readout on the `inducing` points U
    (L Lᵀ = Q_f(U, U) + 10⁻¹⁰ relative jitter), so Φ Φᵀ = Q_f(X, U) Q_f(U, U)⁻¹ Q_f(U, X), and
    the diagonal it misses, Q_f(x, x) − ‖φ(x)‖² ≥ 0. Whitened features keep the Woodbury
    matrix I + ΦᵀD⁻¹Φ as well conditioned as K_f: with Q_f(U, U)⁻¹ inside it instead, its
    condition number reached 10⁹, the EoS residual had a round-off floor of 1.6·10⁻⁹ of its
    size at the GP limit, and solves stalled at 2·10⁻⁸ (erf FCN, n = 256, r = 128).
    Q_f(X, U) is not symmetric in its arguments, so the symmetric part of Σ is used: the EoS
    are the gradient with respect to a covariance."""
    if network.inducing is None:
        raise ValueError("the network has no inducing points")
    sigma = 0.5 * (sigma + sigma.T)
    U = network.inducing.astype(X.dtype)
    Quu = network.output_kernel(sigma, U)
    Quu = Quu + _NYSTROM_JITTER * jnp.mean(jnp.diagonal(Quu)) * jnp.eye(U.shape[0], dtype=Quu.dtype)
    _, L_inv = cholesky_inverse(Quu)
    Phi = network.output_kernel(sigma, X, U) @ L_inv.T
    gap = network.output_kernel_diag(sigma, X) - jnp.sum(Phi**2, 1)
    return Phi, jnp.maximum(gap, 0.0)


def _low_rank(network: AbstractNetwork, sigma: Array, X: Array) -> _LowRank | None:
    """K_f(Σ) on X as Z B Zᵀ + diagonal, Z of rank r, where one is used; else None.

    - A network with `inducing` points U: the Nyström readout with its diagonal made exact
      (the "fully independent training conditional" of sparse GPs),
      Q_f ≈ Φ Φᵀ + diag(Q_f − Φ Φᵀ), Φ = Q_f(X, U) L⁻ᵀ, L Lᵀ = Q_f(U, U) (`_nystrom`), B = I.
      Each output keeps its exact prior variance. Without the diagonal the targets' part
      outside span(Φ) counts as noise of variance σ², and Σ learned far more than the exact
      EoS' Σ: errors of 61 % and 36 % against 7.8 % and 3.4 % with it (erf FCN, n = 512,
      C = 64, r = 128 and 256; `benchmarks/inducing.py --without-diagonal`).
    - A linear network with P·S < n: its exact feature space (`_feature_space`).
    """
    if network.inducing is not None:
        Phi, gap = _nystrom(network, sigma, X)
        eye = jnp.eye(Phi.shape[1], dtype=Phi.dtype)
        return _LowRank(Phi, eye, eye, jnp.zeros((), Phi.dtype), network.noise + gap)
    features = _feature_space(network, X)
    if features is None:
        return None
    Z, c = features
    eye = jnp.eye(Z.shape[1] // sigma.shape[0], dtype=sigma.dtype)
    sigma_inv, logdet_sigma = spd_inverse_logdet(sigma)
    B_inv = jnp.kron(eye, sigma_inv / c)
    logdet_B = eye.shape[0] * (sigma.shape[0] * jnp.log(c) + logdet_sigma)
    noise = jnp.full(X.shape[0], network.noise, dtype=Z.dtype)
    return _LowRank(Z, jnp.kron(eye, c * sigma), B_inv, logdet_B, noise)


def data_term(
    network: AbstractNetwork,
    sigma: Float[Array, "S S"],
    X: Float[Array, "n d"],
    Y: Float[Array, "n m"],
) -> Float[Array, ""]:
    """½ tr(Yᵀ K_f⁻¹ Y) + (m/2) log det K_f + (nm/2) log 2π: the last layer's GP evidence.

    When Q_f = Z B Zᵀ has rank r < n (`_low_rank`: linear φ, where Q_f = Z (I_P ⊗ cΣ) Zᵀ with
    Z the n×PS patch matrix, or a Nyström readout on r inducing points) the same D is
    evaluated in r dimensions, so the EoS and their Newton Jacobian cost O(n r²) once plus
    O(r³) per tangent (linear φ) or O(n r²) per tangent (Nyström) instead of O(n³).
    """
    n = Y.shape[0]
    low_rank = _low_rank(network, sigma, X)
    if low_rank is not None:
        Z, _, B_inv, logdet_B, noise = low_rank
        return _low_rank_negative_log_evidence(Z, B_inv, logdet_B, noise, Y)
    Kf = network.output_kernel(sigma, X) + network.noise * jnp.eye(n, dtype=Y.dtype)
    return _gp_nle(Kf, Y)


def _layer_map(network: AbstractNetwork, layer: int, X: Float[Array, "n d"]):
    """cov_l ↦ post-kernel of hidden layer l on the train set: Q^(l) (l < L) or Q_f (l = L)."""
    if layer == 1:
        return lambda sigma: network.first_layer_kernel(sigma, X)
    return lambda K: network.post_kernel(layer, K)


def _gp_post_kernels(network: AbstractNetwork, X: Float[Array, "n d"]) -> list[Array]:
    """The GP limit's post-kernels (Q^(1), …, Q^(L−1), Q_f) on X (SPEC §2): the NNGP
    recursion with Σ = Σ₀ and K^(l) = Q^(l−1), without any inverse (Q^(l) may be singular)."""
    cov = network.state_prior_covariance(X.shape[1]).astype(X.dtype)
    posts = []
    for layer in range(1, network.depth + 1):
        cov = _layer_map(network, layer, X)(cov)
        posts.append(cov)
    return posts


def _inverse_width(network: AbstractNetwork) -> Array:
    """u = 1/C, 0 in the GP limit (C = ∞)."""
    finite = jnp.isfinite(network.width)
    return jnp.where(finite, 1 / jnp.where(finite, network.width, 1.0), 0.0)


def free_energy(
    network: AbstractNetwork,
    sigma: Float[Array, "S S"],
    X: Float[Array, "n d"],
    Y: Float[Array, "n m"],
    kernels: tuple[Float[Array, "n n"], ...] = (),
    *,
    mean: Float[Array, " S"] | None = None,
) -> Float[Array, ""]:
    """The free energy F of SPEC §3 at first-layer covariance Σ (and, for a network of depth
    L > 1, at the deeper pre-kernels K^(2), …, K^(L)); for a network with `weight_mean`, at
    the filters' mean μ too.

    **Arguments:**

    - `network`: the network (priors, width, noise, activation).
    - `sigma`: Σ, the first-layer weight covariance (S×S, positive definite).
    - `X`, `Y`: training inputs (n×d) and targets (n×m).
    - `kernels`: (K^(2), …, K^(L)), n×n each and positive definite; empty for a depth-1
      network. (A solution on a singular prior Q^(l) has singular K^(l): its F is
      `Solution.free_energy`, from the precision shifts.)
    - `mean`: μ (S), for a network with `weight_mean=True` only (default 0).

    **Returns:** F, a scalar. At C = ∞ the KL terms are dropped (their minimisers, the GP
    limit, are then forced), so F is the NNGP regression's negative log marginal likelihood.
    """
    from ._solve import _validate  # a cycle at import time: _solve uses this module

    network, X, Y = _validate(network, X, Y)
    L, n, S = network.depth, X.shape[0], network.filter_size(X.shape[1])
    if len(kernels) != L - 1:
        raise ValueError(f"a depth-{L} network needs {L - 1} kernels K^(2..L), got {len(kernels)}")
    if mean is not None and not network.weight_mean:
        raise ValueError("mean is for a network with weight_mean=True")
    _check_shapes(
        [("sigma", sigma, (S, S))]
        + [("mean", mean, (S,))] * (mean is not None)
        + [(f"kernels[{i}]", K, (n, n)) for i, K in enumerate(kernels)]
    )
    _check_positive_definite("sigma", sigma)
    for i, K in enumerate(kernels):
        _check_positive_definite(f"kernels[{i}]", K)
    state = network.join_state(jnp.asarray(sigma), None if mean is None else jnp.asarray(mean))
    return _free_energy_at_kernels(_canonical(network), state, X, Y, tuple(kernels))


# The public `free_energy` and `eos_residual` run as one compiled program each rather than
# operation by operation: on an erf FCN (n = 32, 2-core CPU) F's first call takes 0.33 s
# instead of 2.9 s, and each later one 0.4 ms instead of 112 ms (the residual: 0.58 s and
# 1.1 ms, against 1.9 s and 396 ms; `benchmarks/entry_point_compiles.py`). Under an outer
# `jax.jit`, `jax.grad` or `jax.vmap` they trace as before.
@eqx.filter_jit
def _free_energy_at_kernels(network, sigma, X, Y, kernels):
    # F is written in the solver's coordinates: Δ_l = K^(l)⁻¹ − Q^(l−1)⁻¹.
    shifts, cov = [], sigma
    for layer, K in enumerate(kernels, start=2):
        Q = _layer_map(network, layer - 1, X)(cov)
        shifts.append(spd_inverse_logdet(K)[0] - spd_inverse_logdet(Q)[0])
        cov = K
    return _free_energy(network, sigma, tuple(shifts), X, Y)


def _free_energy(network: AbstractNetwork, sigma: Array, shifts: tuple[Array, ...], X, Y):
    """F of SPEC §3 at Σ and the deeper layers' precision shifts Δ_l (`_layers`), written
    without any Q⁻¹: with K = Q(I + ΔQ)⁻¹, Q⁻¹K = I − ΔK, so
    KL(N(0, K) ‖ N(0, Q)) = ½[log det(I + ΔQ) − tr(ΔK)], the KL on Q's range where Q is
    singular."""
    L = network.depth
    kl = network.width_ratio(1) * _first_layer_kl(network, sigma, X.shape[1])
    if L == 1:
        data = data_term(network, sigma, X, Y)
    else:
        covs, posts, _, logdets = _layers(network, sigma, shifts, X)
        for layer in range(2, L + 1):
            layer_kl = _shifted_kl(logdets[layer - 2], _sym(shifts[layer - 2]), covs[layer - 1])
            kl = kl + network.width_ratio(layer) * layer_kl
        eye = jnp.eye(Y.shape[0], dtype=Y.dtype)
        data = _gp_nle(posts[-1] + network.noise * eye, Y)
    finite = jnp.isfinite(network.width)
    width = jnp.where(finite, network.width, 0.0)
    return data + jnp.where(finite, width * kl, 0.0)


def _sym(M: Array) -> Array:
    """The symmetric part of a matrix, or of each in a stack (the last two axes)."""
    return 0.5 * (M + jnp.swapaxes(M, -1, -2))


def _layers(network: AbstractNetwork, sigma: Array, shifts: tuple[Array, ...], X):
    """Forward pass over the layers from Σ and the precision shifts of the deeper layers:
    K^(l) = (Q^(l−1)⁻¹ + Δ_l)⁻¹ = Q^(l−1)(I + Δ_l Q^(l−1))⁻¹ (`shifted_covariance`: no Q⁻¹,
    so Q^(l−1) may be singular), where Δ_l = K^(l)⁻¹ − Q^(l−1)⁻¹ is the layer's learned
    precision shift (zero in the GP limit). Returns the covariances (Σ, K^(2), …), the
    post-kernels (Q^(1), …, Q_f), their pullbacks and log det(I + Δ_l Q^(l−1))."""
    covs, posts, pullbacks, logdets = [sigma], [], [], []
    for layer in range(1, network.depth + 1):
        Q, pullback = jax.vjp(_layer_map(network, layer, X), covs[-1])
        posts.append(Q)
        pullbacks.append(pullback)
        if layer < network.depth:
            K, logdet = shifted_covariance(_sym(Q), _sym(shifts[layer - 1]))
            covs.append(K)
            logdets.append(logdet)
    return covs, posts, pullbacks, logdets


def _shift_residuals(network: AbstractNetwork, lam1: Array, shifts: tuple[Array, ...], X, Y):
    """(R_1, …, R_L), R_l = (2/C_l) ∂F/∂cov_l in the precision domain (SPEC §3), from the
    unknowns (Λ₁, Δ_2, …, Δ_L); R_l = Q^(l−1)⁻¹ − K^(l)⁻¹ + … = −Δ_l + … for l ≥ 2.

    Deeper layers are solved for their precision shifts rather than their precisions: the
    shifts are O(1/C), and the Newton system in them is well scaled, while K^(l)⁻¹ itself
    moves with Q^(l−1)⁻¹, whose derivative grows like the square of Q's condition number.
    Nothing needs Q⁻¹: K^(l) = Q(I + ΔQ)⁻¹ (`_layers`) and B^(l+1) = Q⁻¹K^(l+1)Q⁻¹ − Q⁻¹
    = ΔKΔ − Δ (Δ = Δ_{l+1}, K = K^(l+1), since Q⁻¹K = I − ΔK), so a singular GP-limit prior
    (duplicate inputs, a deep linear FCN with n > d) is solved as any other.
    """
    L = network.depth
    sigma = spd_inverse_logdet(_sym(lam1))[0]
    if L == 1:
        # (2/C) ∂D/∂Σ through `data_term` (feature-space evaluation for linear φ).
        g = jax.grad(data_term, argnums=1)(network, sigma, X, Y)
        u = _inverse_width(network) / network.width_ratio(1)
        residual = network.state_prior_precision(X.shape[1]) - lam1 + 2 * u * g
        if network.weight_mean:
            # The corner of the augmented precision only normalises the state
            # (`split_state`): it is pinned to M[S, S] = 1, i.e. 1/M[S, S] = 1.
            residual = residual.at[-1, -1].set(1 - 1 / sigma[-1, -1])
        return _outside_domain((residual,), (sigma,))
    covs, posts, pullbacks, _ = _layers(network, sigma, shifts, X)
    residuals = []
    for layer in range(1, L + 1):
        r = network.width_ratio(layer)
        if layer == L:
            # (2/C_L) ∂D/∂K^(L): the cotangent is ∂D/∂Q_f = −½ A (SPEC §3).
            Kf = posts[-1] + network.noise * jnp.eye(Y.shape[0], dtype=Y.dtype)
            G = _evidence_grad(Kf, Y) * (2 * _inverse_width(network) / r)
        else:
            # (2 C_{l+1}/C_l) ∂KL(K^(l+1) ‖ Q^(l))/∂cov_l: ∂KL/∂Q = −½ B^(l+1) (SPEC §3).
            delta, K = _sym(shifts[layer - 1]), covs[layer]
            G = -(network.width_ratio(layer + 1) / r) * _sym(delta @ K @ delta - delta)
        (g,) = pullbacks[layer - 1](G)
        if layer == 1:
            residuals.append(network.prior_precision(X.shape[1]) - lam1 + g)
        else:
            residuals.append(g - shifts[layer - 2])
    return _outside_domain(tuple(residuals), covs)


def _outside_domain(residuals: tuple[Array, ...], covs) -> tuple[Array, ...]:
    """The residuals, or NaN where a layer's covariance is not finite: its precision is not
    positive definite (`spd_inverse_logdet` gives NaN), which is outside the EoS' domain.
    The solvers' line searches reject a NaN residual; this holds whatever an activation
    makes of a NaN kernel (a guard in Φ that maps it to a finite value made a finite,
    meaningless residual, and a solve converged on it)."""
    bad = jnp.zeros((), bool)
    for cov in covs:
        bad = bad | ~jnp.all(jnp.isfinite(cov))
    return tuple(jnp.where(bad, jnp.nan, r) for r in residuals)


def eos_residual(
    precision: Float[Array, "S S"] | tuple[Array, ...],
    network: AbstractNetwork,
    X: Float[Array, "n d"],
    Y: Float[Array, "n m"],
) -> Float[Array, "S S"] | tuple[Array, ...]:
    """The EoS residual in the precision domain (SPEC §3). For one hidden layer:

        R(Λ) = Σ₀⁻¹ − Λ − (1/C) ∂_Σ tr[A Q_f(Σ)] |_{Σ = Λ⁻¹}  =  (2/C) ∂F/∂Σ |_{Σ = Λ⁻¹}

    For depth L > 1, `precision` is the tuple of the solver's unknowns (Σ⁻¹, Δ_2, …, Δ_L),
    with Δ_l = K^(l)⁻¹ − Q^(l−1)⁻¹ the deeper layers' precision shifts (`Solution.precision`
    and `Solution.kernel_shifts`), and so is the result: R_1 = Σ₀⁻¹ − Σ⁻¹
    − (C_2/C_1) ∂_Σ tr[B^(2) Q^(1)(Σ)], R_l = Q^(l−1)⁻¹ − K^(l)⁻¹ − (C_{l+1}/C_l)
    ∂_K tr[B^(l+1) Q^(l)(K)] for 2 ≤ l < L, and R_L = Q^(L−1)⁻¹ − K^(L)⁻¹
    − (1/C_L) ∂_K tr[A Q_f(K)], with A and B held fixed: R_l = (2/C_l) ∂F/∂cov_l. In the
    shifts, Q^(l−1)⁻¹ − K^(l)⁻¹ = −Δ_l, and no Q⁻¹ is formed (`_shift_residuals`).

    For a network with `weight_mean=True` the unknown is the inverse of the augmented second
    moment M = [[Σ + μμᵀ, μ], [μᵀ, 1]] of (w, 1), i.e. [[Σ⁻¹, −Σ⁻¹μ], [−μᵀΣ⁻¹, 1 + μᵀΣ⁻¹μ]]
    ((S+1)×(S+1)), and R = [[Σ₀⁻¹, 0], [0, ·]] − M⁻¹ + (2/C) ∂D/∂M: its Σ block is the
    EoS above, and given it its last column vanishes exactly where μ = −(1/C) Σ₀ ∂D/∂μ,
    i.e. ∂F/∂μ = 0 (`docs/equations.md`); its corner is 1 − 1/M[S, S], which pins the
    normalisation M[S, S] = 1.

    Covariances are built from the symmetric part of each unknown while the linear term
    uses the unknown itself, so an antisymmetric part is driven to zero with Jacobian −I
    (never singular); `solve` passes symmetric ones. A concrete Σ⁻¹ (or augmented
    precision) that is not finite, symmetric positive definite, or a concrete Δ_l with NaN
    or inf, raises a `ValueError`. Traced (inside a root finder, `jax.jit` or `jax.vmap`),
    where Σ⁻¹ or Q^(l−1)⁻¹ + Δ_l is not positive definite the residual is NaN, which the
    solver's line search rejects; so it is for a concrete Δ_l that leaves the domain.

    **Arguments** (the unknowns first, as a root finder's residual takes them; then those of
    `free_energy`): `precision`, Σ⁻¹ (S×S) or the tuple above; the `network`; training
    inputs `X` (n×d) and targets `Y` (n×m or n). For example
    ``fj.eos_residual((sol.precision, *sol.kernel_shifts), sol.network, sol.X, sol.Y)``.

    **Returns:** R, of the same shape as `precision`.
    """
    from ._solve import _check_finite, _validate  # a cycle: _solve uses this module

    network, X, Y = _validate(network, X, Y)
    s, n = network.state_size(X.shape[1]), X.shape[0]
    if isinstance(precision, tuple | list):
        if len(precision) != network.depth:
            raise ValueError(
                f"need {network.depth} unknowns (Σ⁻¹, Δ_2, …, Δ_L), got {len(precision)}"
            )
        _check_shapes(
            [("precision[0]", precision[0], (s, s))]
            + [(f"precision[{i}]", p, (n, n)) for i, p in enumerate(precision[1:], start=1)]
        )
        _check_positive_definite("precision[0]", precision[0])
        for i, p in enumerate(precision[1:], start=1):
            _check_finite(f"precision[{i}]", p)
        return _compiled_residuals(network, precision[0], tuple(precision[1:]), X, Y)
    if network.depth != 1:
        raise ValueError("a network of depth > 1 needs the tuple (Σ⁻¹, Δ_2, …, Δ_L)")
    _check_shapes([("precision", precision, (s, s))])
    _check_positive_definite("precision", precision)
    return _compiled_residuals(network, precision, (), X, Y)[0]


def _check_shapes(named: list) -> None:
    """A clear error for an array of the wrong shape (name, array, shape)."""
    for name, value, shape in named:
        if jnp.shape(value) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {jnp.shape(value)}")


_compiled_residuals = eqx.filter_jit(_shift_residuals)
