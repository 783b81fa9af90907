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

In matrix form, with A = n K/M + κ I: Σ_ρ η_ρ/(nη_ρ + κ) = (M − κ tr A⁻¹)/n,
γ = ‖I − κ A⁻¹‖²_F / n and Σ_ρ κ² a_ρ²/(nη_ρ + κ)² = κ² ‖A⁻¹y‖²/M. The code finds κ by
bisection on the eigenvalues, then evaluates these with a Cholesky factor of A, through which
gradients flow (no derivative of eigenvectors, which degenerate modes would make undefined);
κ's own dependence on the hyper-parameters enters by the implicit function theorem.
"""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float

from ._free_energy import _gp_post_kernels
from ._network import AbstractNetwork
from ._solve import _concrete, _validate


Method = Literal["self_consistent", "equivalent_kernel"]


class LearningCurve(eqx.Module):
    """The expected test error of the GP limit against the training-set size (SPEC §5), from
    [`fls_jax.learning_curve`][]. Errors are averaged over outputs.

    **Fields:**

    - `n`: the training-set sizes (k).
    - `test_error`: E_g(n), the expected mean squared error of the mean predictor on a fresh
      input from the data measure, against the noiseless target (k).
    - `kappa`: the renormalised ridge κ(n) (σ² for the equivalent kernel) (k).
    - `gamma`: γ(n) = Σ_ρ n η_ρ²/(n η_ρ + κ)² (k).
    - `eigenvalues`: the kernel's eigenvalues η_ρ on the data measure, descending (M).
    - `target_power`: the target's power a_ρ² in each mode, averaged over outputs (M);
      Σ_ρ a_ρ² is the target's mean square, E_g at n = 0.
    - `method`: ``"self_consistent"`` or ``"equivalent_kernel"``.
    """

    n: Float[Array, " k"]
    test_error: Float[Array, " k"]
    kappa: Float[Array, " k"]
    gamma: Float[Array, " k"]
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
    """The learning curve of the network's GP limit (SPEC §5), without training.

    See the module docstring for the equations. The kernel is the network's NNGP output
    kernel (any depth, FCN or PatchCNN, SPEC §2); σ² is `network.noise`. Differentiable
    (`jax.grad` of `test_error` with respect to σ_w², σ_a², σ², `target_noise` or the pool),
    and `jax.jit`-able; the cost is one M×M eigendecomposition plus one Cholesky
    factorisation per training-set size.

    **Arguments:**

    - `network`: an [`fls_jax.FCN`][] or [`fls_jax.PatchCNN`][] at width ``inf`` with
      standard readout scaling (a mean-field readout's GP limit vanishes).
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
    X, Y = _validate(network, X, Y, deep_priors=False)
    if network.inducing is not None:
        raise ValueError("learning_curve does not take inducing points")
    if getattr(network, "scaling", "standard") != "standard":
        raise ValueError(
            "learning_curve needs standard readout scaling: a mean-field network's GP limit "
            "is zero (its readout variance σ_a²/C² vanishes as C → ∞)"
        )
    # A traced width (under jax.jit) cannot be checked here; the kernel is the GP's anyway.
    if _concrete(network.width) and np.isfinite(np.asarray(network.width)).any():
        raise ValueError(
            "learning_curve is the GP-limit (C = inf) theory: pass the network with width=inf "
            "(finite-width learning curves are not implemented; at finite C use fj.solve and "
            "fj.predict on drawn training sets, or fj.renormalise for linear FCNs)"
        )
    if _concrete(n):
        values = np.asarray(n, dtype=float)
        if values.ndim > 1 or not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(
                f"n must be positive, finite training-set sizes (a scalar or 1-d), got {n}"
            )
    if _concrete(target_noise):
        value = np.asarray(target_noise, dtype=float)
        if value.shape != () or not (np.isfinite(value) and value >= 0):
            raise ValueError(f"target_noise must be a finite number >= 0, got {target_noise}")
    n = jnp.asarray(n, X.dtype)
    target_noise = jnp.asarray(target_noise, X.dtype)
    return _learning_curve(network, X, Y, jnp.atleast_1d(n), target_noise, method)


@eqx.filter_jit
def _learning_curve(network, X, Y, ns, target_noise, method: Method) -> LearningCurve:
    M = X.shape[0]
    K = _gp_post_kernels(network, X)[-1] / M  # the integral operator on the pool's measure
    K = 0.5 * (K + K.T)
    eta, U = jnp.linalg.eigh(jax.lax.stop_gradient(K))
    eta = jnp.maximum(eta, 0.0)
    noise = network.noise
    eye = jnp.eye(M, dtype=X.dtype)
    tol = 1e3 * float(jnp.finfo(X.dtype).eps)

    def resolvent(n, kappa):
        A = n * K + kappa * eye
        return jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(A), True), eye)

    def one(n):
        if method == "equivalent_kernel":
            kappa = noise
        else:
            sg_noise = jax.lax.stop_gradient(noise)

            def excess(log_kappa, _):  # κ − σ² − κ Σ η/(nη + κ): −σ²·(…) ≤ 0 at κ = σ²
                kappa = jnp.exp(log_kappa)
                return kappa - sg_noise - kappa * jnp.sum(eta / (n * eta + kappa))

            lo = jnp.log(sg_noise)
            hi = jnp.log(sg_noise + jnp.sum(eta))
            sol = optx.root_find(
                excess,
                optx.Bisection(rtol=0.0, atol=tol, flip=False),
                0.5 * (lo + hi),
                options=dict(lower=lo, upper=hi),
                max_steps=256,
                throw=False,
            )
            k0 = jax.lax.stop_gradient(jnp.exp(sol.value))
            slope = 1 - jnp.sum(n * eta**2 / (n * eta + k0) ** 2)  # ∂(excess)/∂κ = 1 − γ
            # κ's dependence on (K, σ²) by the implicit function theorem: a Newton step whose
            # value is zero at the root and whose derivative is −∂_θ excess / (1 − γ).
            Ainv = resolvent(n, k0)
            res = k0 - noise - k0 * (M - k0 * jnp.trace(Ainv)) / n
            kappa = k0 - (res - jax.lax.stop_gradient(res)) / slope
        Ainv = resolvent(n, kappa)
        resid = eye - kappa * Ainv  # n K A⁻¹
        gamma = jnp.sum(resid**2) / n
        bias = kappa**2 * jnp.mean(jnp.sum((Ainv @ Y) ** 2, axis=0)) / M
        if method == "equivalent_kernel":
            error = bias + gamma * target_noise
        else:
            error = (bias + gamma * target_noise) / (1 - gamma)
        return error, kappa, gamma

    error, kappa, gamma = jax.lax.map(one, ns)
    power = jnp.mean((U.T @ jax.lax.stop_gradient(Y)) ** 2, axis=1) / M
    return LearningCurve(
        n=ns,
        test_error=error,
        kappa=kappa,
        gamma=gamma,
        eigenvalues=eta[::-1],
        target_power=power[::-1],
        method=method,
    )
