"""The free energy F of SPEC §3, written once, and the Equations of State derived from it.

    F(Σ) = ½ tr(Yᵀ K_f⁻¹ Y) + (m/2) log det K_f + (n m/2) log 2π  +  C · KL(N(0, Σ) ‖ N(0, Σ₀))

K_f = Q_f(Σ) + σ² I. The constant (n m/2) log 2π makes F at C = ∞ the exact negative log
marginal likelihood of GP regression with the NNGP kernel, so F is a (variational) negative
log-evidence for model selection.

The EoS are ∂F/∂Σ = 0. Since ∂F_data/∂Q_f = −½ A with A = TTᵀ − m K_f⁻¹ (the minus sign of
SPEC §3), (2/C) ∂F/∂Σ = Σ₀⁻¹ − Σ⁻¹ − (1/C) ∂_Σ tr[A Q_f(Σ)] with A held fixed: exactly the
first-layer EoS. The solver works on that residual, evaluated as the autodiff gradient of the
data term, so the physics lives here and nowhere else.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._linalg import spd_inverse_logdet
from ._network import AbstractNetwork


def _gaussian_kl(sigma: Float[Array, "S S"], prior_precision: Float[Array, "S S"]):
    """KL(N(0, Σ) ‖ N(0, Σ₀)) = ½[tr(Σ₀⁻¹Σ) − log det(Σ₀⁻¹Σ) − S]."""
    S = sigma.shape[0]
    _, logdet_sigma = spd_inverse_logdet(sigma)
    _, logdet_prec = spd_inverse_logdet(prior_precision)
    return 0.5 * (jnp.sum(prior_precision * sigma) - logdet_sigma - logdet_prec - S)


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


@jax.custom_jvp
def gp_negative_log_evidence(K: Float[Array, "n n"], Y: Float[Array, "n m"]) -> Float[Array, ""]:
    """D(K, Y) = ½ tr(Yᵀ K⁻¹ Y) + (m/2) log det K + (nm/2) log 2π (SPEC §3's data term).

    The negative log marginal likelihood of Y under N(0, K) per column, for a symmetric
    positive-definite K. Its derivative is ⟨G, dK⟩ + ⟨K⁻¹Y, dY⟩ with G from the hand-written
    `_evidence_grad`, so first and second derivatives cost one factorisation and a few
    matrix products.
    """
    n, m = Y.shape
    _, logdet, T = _evidence(K, Y)
    return 0.5 * jnp.sum(Y * T) + 0.5 * m * logdet + 0.5 * n * m * jnp.log(2 * jnp.pi)


@gp_negative_log_evidence.defjvp
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
    """D for K = σ²I + Z B Zᵀ of rank r < n, in r dimensions (Woodbury and the determinant lemma):

    K⁻¹ = σ⁻²[I − Z W⁻¹ Zᵀ],  log det K = (n − r) log σ² + log det B + log det W,
    W = σ² B⁻¹ + ZᵀZ.
    """
    n, m = Y.shape
    r = Z.shape[1]
    ZtY = Z.T @ Y
    W_inv, logdet_W = spd_inverse_logdet(noise * B_inv + Z.T @ Z)
    quad = (jnp.sum(Y * Y) - jnp.sum(ZtY * (W_inv @ ZtY))) / noise
    logdet = (n - r) * jnp.log(noise) + logdet_B + logdet_W
    return 0.5 * quad + 0.5 * m * logdet + 0.5 * n * m * jnp.log(2 * jnp.pi)


def data_term(
    network: AbstractNetwork,
    sigma: Float[Array, "S S"],
    X: Float[Array, "n d"],
    Y: Float[Array, "n m"],
) -> Float[Array, ""]:
    """½ tr(Yᵀ K_f⁻¹ Y) + (m/2) log det K_f + (nm/2) log 2π: the last layer's GP evidence.

    When Q_f has rank r = P·S < n (linear φ: Q_f = Z (I_P ⊗ cΣ) Zᵀ with Z the n×PS patch
    matrix, `AbstractNetwork.linear_features`) the same D is evaluated in r dimensions, so the
    EoS and their Newton Jacobian cost O(n r²) once plus O(r³) per tangent instead of O(n³).
    """
    n = Y.shape[0]
    features = network.linear_features(X)
    if features is not None and features[0].shape[1] < n:
        Z, c = features
        P = Z.shape[1] // sigma.shape[0]
        sigma_inv, logdet_sigma = spd_inverse_logdet(sigma)
        B_inv = jnp.kron(jnp.eye(P, dtype=sigma.dtype), sigma_inv / c)
        logdet_B = P * (sigma.shape[0] * jnp.log(c) + logdet_sigma)
        return _low_rank_negative_log_evidence(Z, B_inv, logdet_B, network.noise, Y)
    Kf = network.output_kernel(sigma, X) + network.noise * jnp.eye(n, dtype=Y.dtype)
    return gp_negative_log_evidence(Kf, Y)


def free_energy(
    network: AbstractNetwork,
    sigma: Float[Array, "S S"],
    X: Float[Array, "n d"],
    Y: Float[Array, "n m"],
) -> Float[Array, ""]:
    """The free energy F of SPEC §3 at first-layer covariance Σ.

    **Arguments:**

    - `network`: the network (priors, width, noise, activation).
    - `sigma`: Σ, the first-layer weight covariance (S×S, positive definite).
    - `X`, `Y`: training inputs (n×d) and targets (n×m).

    **Returns:** F(Σ), a scalar. At C = ∞ the KL term is dropped (its minimiser Σ = Σ₀ is
    then forced), so F is the NNGP regression's negative log marginal likelihood.
    """
    kl = _gaussian_kl(sigma, network.prior_precision(X.shape[1]))
    finite = jnp.isfinite(network.width)
    width = jnp.where(finite, network.width, 0.0)
    return data_term(network, sigma, X, Y) + jnp.where(finite, width * kl, 0.0)


def eos_residual(
    precision: Float[Array, "S S"],
    network: AbstractNetwork,
    X: Float[Array, "n d"],
    Y: Float[Array, "n m"],
) -> Float[Array, "S S"]:
    """The first-layer EoS residual in the precision domain (SPEC §3):

        R(Λ) = Σ₀⁻¹ − Λ − (1/C) ∂_Σ tr[A Q_f(Σ)] |_{Σ = Λ⁻¹}  =  (2/C) ∂F/∂Σ |_{Σ = Λ⁻¹}

    Σ is built from the symmetric part of Λ while the linear term uses Λ itself, so an
    antisymmetric part of Λ is driven to zero with Jacobian −I (never singular); `solve`
    passes symmetric Λ (it iterates on the upper triangle). Where Λ is not positive
    definite the residual is NaN, which the solver's line search rejects.
    """
    sigma, _ = spd_inverse_logdet(0.5 * (precision + precision.T))
    grad_data = jax.grad(data_term, argnums=1)(network, sigma, X, Y)
    inv_width = jnp.where(jnp.isfinite(network.width), 1 / network.width, 0.0)
    return network.prior_precision(X.shape[1]) - precision + 2 * inv_width * grad_data
