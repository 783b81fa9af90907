"""Architectures (SPEC §1–3): hyper-parameters as array leaves, one kernel path.

A network here is the posterior's *model*: architecture, priors, widths, noise and activation.
Every numerical hyper-parameter is a float array leaf, so ``jax.vmap`` over widths, noise or
priors and ``jax.grad`` with respect to them need no special cases.

Both architectures reduce to the same object: the input is cut into P patches of size S
(P = 1, S = d for a fully connected network), the first layer applies one filter
w ~ N(0, Σ) to every patch, and the readout averages over patches:

    Q_f(x, x') = (s_a / P) Σ_i Φ_φ(x_i Σ x_i'ᵀ)                (SPEC §3)

with s_a = σ_a² (standard scaling) or σ_a²/C (mean-field scaling).

Deeper networks (``depth`` = L > 1 hidden layers) put fully connected hidden layers
between that first layer and the readout. Layer l ≥ 2 has the function-space pre-kernel
K^(l) (n×n) with prior Q^(l−1) = σ_{w,l}² Φ(K^(l−1)), and the first layer's post-kernel is
Q^(1) = σ_{w,2}² (1/P) Σ_i Φ(X_i Σ X_iᵀ) (a hidden layer that sees all P·C first-layer
outputs); the readout acts on the last one, Q_f = s_a Φ(K^(L)) (SPEC §2–3).
"""

import abc
import dataclasses
from typing import Any, Literal, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._activation import AbstractActivation, Erf, Linear


Scaling = Literal["standard", "mean_field"]


_N = TypeVar("_N", bound="AbstractNetwork")


def _leaf(x) -> Array:
    return jnp.asarray(x, dtype=float)


def _canonical(network: _N) -> _N:
    """`network` with its hyper-parameters as its converters make them: strongly typed float
    arrays. `eqx.tree_at` bypasses the converters, and `eqx.filter_jit` holds a Python float
    left in a leaf static, so a width set that way compiled one program per value (10 s each
    for an erf FCN with n = 32, `benchmarks/entry_point_compiles.py`), and a weakly typed
    array (`jnp.asarray(jnp.inf)`) one more."""
    if all(isinstance(h, jax.Array) and not h.weak_type for h in _hyper_parameters(network)):
        return network
    return eqx.tree_at(_hyper_parameters, network, replace_fn=_leaf)


def _hyper_parameters(network: "AbstractNetwork") -> tuple:
    """(width, σ_w², σ_a², σ²): the array leaves that set the posterior (`_leaf`)."""
    return (network.width, network.sigma_w2, network.sigma_a2, network.noise)


def _python_numbers(r: Any) -> Any:
    """A tuple's NumPy numbers as Python floats (a static field must not hold arrays); anything
    else is left for `__check_init__` to judge."""
    if not isinstance(r, tuple):
        return r
    numpy = (np.integer, np.floating)
    return tuple(float(x) if isinstance(x, numpy) and not isinstance(x, np.bool_) else x for x in r)


class AbstractNetwork(eqx.Module):
    """A network: `depth` hidden layers of widths C_l = C · r_l and a linear readout.

    **Fields** (all numerical ones are float arrays, so they can be vmapped and differentiated):

    - `width`: C, the number of hidden neurons (FCN) or channels (PatchCNN); may be `inf`
      (the GP limit, SPEC §1). Hidden layer l has C_l = C · `width_ratios`[l−1].
    - `sigma_w2`: σ_w², prior variance times fan-in of the weights into each hidden layer
      (first layer: w ~ N(0, σ_w²/S · I)); a scalar for all layers, or one per layer
      (shape (depth,)).
    - `sigma_a2`: σ_a², readout prior variance times C_L (standard) or C_L² (mean-field).
    - `noise`: σ², the likelihood noise / temperature (> 0).
    - `activation`: an [`fls_jax.AbstractActivation`][], or a tuple of one per hidden layer.
    - `scaling`: ``"standard"`` or ``"mean_field"`` readout scaling (SPEC §1). Mean-field's
      output kernel σ_a²/C_L · Φ vanishes as C → ∞ at fixed σ_a² and σ²: at `width` = inf
      every solver and `renormalise` return its limit, the prior's zero predictor (σ² as 1/C,
      or σ_a² as C, keeps a non-trivial limit).
    - `depth`: L, the number of hidden layers (static, keyword-only; default 1).
    - `width_ratios`: (r_1, …, r_L), static, keyword-only; default all 1 (C_l = C).
    - `inducing`: optional r×d inducing inputs U (keyword-only; one hidden layer only). Given,
      the readout kernel is replaced by its Nyström approximation with the exact diagonal
      (FITC), Q_f ≈ Q_f(X, U) Q_f(U, U)⁻¹ Q_f(U, X) + diag(the rest), evaluated at Σ wherever
      Q_f is, so the free energy, the EoS, their derivatives and `predict` cost O(n r²) time
      and O(n r) memory instead of O(n³) and O(n²): the way past a dense Cholesky. An
      approximation, whose error falls as r grows (`docs/performance.md`);
      [`fls_jax.inducing_points`][] picks U.
    - `weight_mean`: static, keyword-only (default False). True gives the first layer's
      filters a posterior mean μ as well as the covariance Σ: w ~ N(μ, Σ), SPEC §3's
      "additional slow variable" of a non-odd φ (ReLU), whose zero-mean EoS miss a
      correction of the same order in 1/C (`docs/fidelity.md`). One hidden layer, no
      `inducing`, and an activation with a kernel for a mean (`Linear`, `ReLU`, `Quadrature`); the
      solution's mean is `Solution.weight_mean`.
    """

    width: Float[Array, ""] = eqx.field(converter=_leaf)
    sigma_w2: Float[Array, ""] | Float[Array, " L"] = eqx.field(converter=_leaf)
    sigma_a2: Float[Array, ""] = eqx.field(converter=_leaf)
    noise: Float[Array, ""] = eqx.field(converter=_leaf)
    activation: AbstractActivation | tuple[AbstractActivation, ...] = eqx.field(default_factory=Erf)
    scaling: Scaling = eqx.field(static=True, default="standard")
    depth: int = eqx.field(static=True, default=1, kw_only=True)
    width_ratios: tuple[float, ...] | None = eqx.field(
        static=True, default=None, kw_only=True, converter=_python_numbers
    )
    inducing: Float[Array, "r d"] | None = eqx.field(
        default=None, kw_only=True, converter=lambda u: None if u is None else _leaf(u)
    )
    weight_mean: bool = eqx.field(static=True, default=False, kw_only=True)

    def __check_init__(self):
        if not isinstance(self.weight_mean, bool):
            raise ValueError(f"weight_mean must be True or False, got {self.weight_mean!r}")
        if self.weight_mean:
            if self.depth != 1 or self.inducing is not None:
                raise ValueError(
                    "weight_mean=True is supported for one hidden layer without inducing points"
                )
            acts = self.activation if isinstance(self.activation, tuple) else (self.activation,)
            if not all(isinstance(a, AbstractActivation) and a.supports_mean for a in acts):
                raise ValueError(
                    "weight_mean=True needs an activation with a kernel for a mean "
                    "(fls_jax.ReLU, fls_jax.Linear or fls_jax.Quadrature)"
                )
        if self.inducing is not None:
            if self.depth != 1:
                raise ValueError("inducing points are supported for one hidden layer only")
            if jnp.ndim(self.inducing) != 2 or jnp.shape(self.inducing)[0] < 1:
                raise ValueError(
                    f"inducing must be a 2-d array (r, d) with r ≥ 1, got shape "
                    f"{jnp.shape(self.inducing)}"
                )
        if self.scaling not in ("standard", "mean_field"):
            raise ValueError(f"scaling must be 'standard' or 'mean_field', got {self.scaling!r}")
        if not isinstance(self.depth, int | np.integer) or self.depth < 1:
            raise ValueError(f"depth must be a positive integer, got {self.depth!r}")
        acts = self.activation if isinstance(self.activation, tuple) else (self.activation,)
        if not all(isinstance(a, AbstractActivation) for a in acts):
            raise TypeError(
                "activation must be an fls_jax.AbstractActivation instance (or a tuple of them)"
            )
        if isinstance(self.activation, tuple) and len(acts) != self.depth:
            raise ValueError(f"need {self.depth} activations (one per layer), got {len(acts)}")
        if jnp.ndim(self.sigma_w2) not in (0, 1) or (
            jnp.ndim(self.sigma_w2) == 1 and jnp.shape(self.sigma_w2)[0] != self.depth
        ):
            raise ValueError(
                f"sigma_w2 must be a scalar or have shape ({self.depth},) (one per hidden "
                f"layer), got shape {jnp.shape(self.sigma_w2)}"
            )
        if self.width_ratios is not None:
            r = self.width_ratios
            if (
                not isinstance(r, tuple)
                or len(r) != self.depth
                or not all(
                    isinstance(x, int | float | np.integer | np.floating)
                    and not isinstance(x, bool | np.bool_)
                    and np.isfinite(x)
                    and x > 0
                    for x in r
                )
            ):
                raise ValueError(
                    f"width_ratios must be a tuple of {self.depth} positive numbers, got {r!r}"
                )

    def layer_activation(self, layer: int) -> AbstractActivation:
        """φ of hidden layer `layer` (1-based)."""
        if isinstance(self.activation, tuple):
            return self.activation[layer - 1]
        return self.activation

    def layer_sigma_w2(self, layer: int) -> Float[Array, ""]:
        """σ_w² of the weights into hidden layer `layer` (1-based)."""
        return self.sigma_w2 if jnp.ndim(self.sigma_w2) == 0 else self.sigma_w2[layer - 1]

    def width_ratio(self, layer: int) -> float:
        """r_l = C_l / C of hidden layer `layer` (1-based)."""
        return 1.0 if self.width_ratios is None else float(self.width_ratios[layer - 1])

    def post_scale(self, layer: int) -> Float[Array, ""]:
        """The scale of layer `layer`'s post-kernel: σ_{w,l+1}² for l < L, s_a for l = L."""
        return self.readout_scale() if layer == self.depth else self.layer_sigma_w2(layer + 1)

    def post_kernel(self, layer: int, K: Float[Array, "n n"]) -> Float[Array, "n n"]:
        """Post-kernel of hidden layer l ≥ 2 on the train set: scale · Φ_l(K^(l)) (SPEC §2);
        Q^(l), the prior of K^(l+1), for l < L, and Q_f for l = L."""
        g = jnp.diagonal(K)
        return self.post_scale(layer) * self.layer_activation(layer).kernel(
            g[:, None], g[None, :], K
        )

    def post_kernel_diagonal(self, layer: int, g: Float[Array, " n"]) -> Float[Array, " n"]:
        """The diagonal of `post_kernel` from K^(l)'s diagonal g: it needs no other entry."""
        return self.post_scale(layer) * self.layer_activation(layer).kernel(g, g, g)

    @abc.abstractmethod
    def patches(self, X: Float[Array, "n d"]) -> Float[Array, "P n S"]:
        """Cut inputs into the P patches that the shared first-layer filter sees."""

    @abc.abstractmethod
    def filter_size(self, d: int) -> int:
        """S, the dimension of the first-layer filter for inputs of dimension d."""

    @abc.abstractmethod
    def check_input_dim(self, d: int) -> None:
        """Raise a ValueError if inputs of dimension d do not fit this architecture."""

    def prior_precision(self, d: int) -> Float[Array, "S S"]:
        """Σ₀⁻¹ = (S/σ_w²) I, the first-layer prior precision (SPEC §2)."""
        S = self.filter_size(d)
        sw2 = self.layer_sigma_w2(1)
        return (S / sw2) * jnp.eye(S, dtype=sw2.dtype)

    def prior_covariance(self, d: int) -> Float[Array, "S S"]:
        """Σ₀ = (σ_w²/S) I, the first-layer prior covariance (SPEC §2), without an inverse."""
        S = self.filter_size(d)
        sw2 = self.layer_sigma_w2(1)
        return (sw2 / S) * jnp.eye(S, dtype=sw2.dtype)

    def state_size(self, d: int) -> int:
        """The side of the first layer's state matrix: S, or S + 1 with `weight_mean`."""
        return self.filter_size(d) + int(self.weight_mean)

    def state_prior_precision(self, d: int) -> Float[Array, "s s"]:
        """The GP limit's first-layer state precision: Σ₀⁻¹, or with `weight_mean` the
        augmented [[Σ₀⁻¹, 0], [0, 1]] (μ = 0; `split_state`)."""
        return _augment(self.prior_precision(d), self.weight_mean)

    def state_prior_covariance(self, d: int) -> Float[Array, "s s"]:
        """The GP limit's first-layer state covariance: Σ₀, or [[Σ₀, 0], [0, 1]]."""
        return _augment(self.prior_covariance(d), self.weight_mean)

    def split_state(self, state: Float[Array, "s s"]) -> tuple[Array, Array | None]:
        """(Σ, μ) from the first layer's state matrix: the state is Σ itself (μ = None),
        or with `weight_mean` the augmented second moment M = [[Σ + μμᵀ, μ], [μᵀ, 1]] of
        (w, 1), read as μ = M[:S, S] / M[S, S] and Σ = M[:S, :S] − M[:S, S] M[S, :S] / M[S, S]
        (the Schur complement, = the inverse of the top-left block of M⁻¹). Neither depends on
        the corner of M⁻¹, which the EoS pin to M[S, S] = 1 (`eos_residual`)."""
        if not self.weight_mean:
            return state, None
        corner = state[-1, -1]
        # Both off-diagonal blocks, so that the gradient with respect to the state is
        # symmetric (the EoS' convention for a symmetric matrix, as for Σ).
        column = 0.5 * (state[:-1, -1] + state[-1, :-1])
        mu = column / corner
        return state[:-1, :-1] - jnp.outer(column, column) / corner, mu

    def join_state(self, sigma: Float[Array, "S S"], mu: Float[Array, " S"] | None):
        """The first layer's state matrix from (Σ, μ) (`split_state`'s inverse)."""
        if not self.weight_mean:
            return sigma
        mu = jnp.zeros(sigma.shape[0], sigma.dtype) if mu is None else mu
        top = jnp.concatenate([sigma + jnp.outer(mu, mu), mu[:, None]], axis=1)
        bottom = jnp.concatenate([mu, jnp.ones(1, sigma.dtype)])[None]
        return jnp.concatenate([top, bottom], axis=0)

    def readout_scale(self) -> Float[Array, ""]:
        """s_a = σ_a² (standard) or σ_a²/C_L (mean-field) (SPEC §2)."""
        if self.scaling == "standard":
            return self.sigma_a2
        width = self.width * self.width_ratio(self.depth)
        return jnp.where(jnp.isinf(width), 0.0, self.sigma_a2 / width)

    def first_layer_kernel(
        self,
        sigma: Float[Array, "S S"],
        X1: Float[Array, "n1 d"],
        X2: Float[Array, "n2 d"] | None = None,
    ) -> Float[Array, "n1 n2"]:
        """Post-kernel of the first layer, post_scale(1) · (1/P) Σ_i Φ_1(X1_i Σ X2_iᵀ)
        (SPEC §2–3): Q_f for depth 1, Q^(1) for deeper networks; X2 = None means X2 = X1.
        `sigma` is the first layer's state (`split_state`): with `weight_mean`, the
        pre-activations x_i · w have means x_i · μ (`AbstractActivation.kernel_with_mean`)."""
        P1 = self.patches(X1)
        P2 = P1 if X2 is None else self.patches(X2)
        act = self.layer_activation(1)
        sigma, mu = self.split_state(sigma)
        if isinstance(act, Linear) and mu is None:
            # Φ(K) = K: the patch average is one contraction over (patch, filter) indices,
            # with no per-patch n×n kernels (P times less memory and traffic).
            c = jnp.einsum("pns,st,pmt->nm", P1, sigma, P2) / P1.shape[0]
            return self.post_scale(1) * c

        def patch_kernel(p1, p2):
            a = jnp.einsum("ns,st,nt->n", p1, sigma, p1)
            b = a if X2 is None else jnp.einsum("ns,st,nt->n", p2, sigma, p2)
            c = p1 @ sigma @ p2.T
            if mu is None:
                return act.kernel(a[:, None], b[None, :], c)
            m1, m2 = p1 @ mu, p2 @ mu
            return act.kernel_with_mean(a[:, None], b[None, :], c, m1[:, None], m2)

        if P1.shape[0] == 1:
            # One patch (an FCN): a loop and its rematerialisation would save no memory (the
            # backward pass rebuilds the same intermediates at once) and cost compile time:
            # a ReLU FCN's solve with a weight mean compiled in ~15 % less time without them.
            total = patch_kernel(P1[0], P2[0])
        else:
            # One patch at a time, rematerialised in the backward pass: the kernel's
            # intermediates (and the EoS' derivatives of them) then take O(n²) memory, not
            # O(P n²): an erf PatchCNN's compiled solve (P = 8, n = 200) needs 6× less.
            @jax.checkpoint
            def add_patch(acc, patch):
                return acc + patch_kernel(*patch), None

            zero = jnp.zeros((P1.shape[1], P2.shape[1]), jnp.result_type(sigma, P1))
            total, _ = jax.lax.scan(add_patch, zero, (P1, P2))
        return self.post_scale(1) * total / P1.shape[0]

    def first_layer_kernel_diag(
        self, sigma: Float[Array, "S S"], X: Float[Array, "n d"]
    ) -> Float[Array, " n"]:
        """The diagonal of `first_layer_kernel(sigma, X)`, without the n×n kernel."""
        Pt = self.patches(X)
        sigma, mu = self.split_state(sigma)
        a = jnp.einsum("pns,st,pnt->pn", Pt, sigma, Pt)
        act = self.layer_activation(1)
        if mu is None:
            phi = act.kernel(a, a, a)
        else:
            m = jnp.einsum("pns,s->pn", Pt, mu)
            phi = act.kernel_with_mean(a, a, a, m, m)
        return self.post_scale(1) * jnp.mean(phi, axis=0)

    def output_kernel(
        self,
        sigma: Float[Array, "S S"],
        X1: Float[Array, "n1 d"],
        X2: Float[Array, "n2 d"] | None = None,
    ) -> Float[Array, "n1 n2"]:
        """Q_f(X1, X2) = (s_a/P) Σ_i Φ_φ(X1_i Σ X2_iᵀ) of a depth-1 network (SPEC §3);
        X2 = None means X2 = X1. Deeper networks' Q_f depends on K^(L): see `post_kernel`."""
        if self.depth != 1:
            raise ValueError("output_kernel(Σ) is defined for depth-1 networks only")
        return self.first_layer_kernel(sigma, X1, X2)

    def linear_features(self, X: Float[Array, "n d"]) -> tuple[Float[Array, "n r"], Array] | None:
        """(Z, c) with Q_f(Σ) = Z (I_P ⊗ cΣ) Zᵀ when φ is linear (else None): Z = [X_1 … X_P]
        is n×PS and c = s_a/P, so Q_f has rank ≤ P·S (SPEC §3, linear PatchCNN). Standard
        scaling only (mean-field's c vanishes at C = ∞, where the dense path is exact)."""
        if self.depth != 1 or not isinstance(self.activation, Linear) or self.weight_mean:
            return None
        if self.scaling != "standard":
            return None
        Pt = self.patches(X)
        Z = jnp.transpose(Pt, (1, 0, 2)).reshape(X.shape[0], -1)
        return Z, self.readout_scale() / Pt.shape[0]

    def output_kernel_diag(
        self, sigma: Float[Array, "S S"], X: Float[Array, "n d"]
    ) -> Float[Array, " n"]:
        """The diagonal Q_f(x, x) of a depth-1 network, without building the n×n kernel."""
        if self.depth != 1:
            raise ValueError("output_kernel_diag(Σ) is defined for depth-1 networks only")
        return self.first_layer_kernel_diag(sigma, X)


def _augment(M: Array, augment: bool) -> Array:
    """[[M, 0], [0, 1]] if `augment`, else M."""
    if not augment:
        return M
    S = M.shape[0]
    out = jnp.zeros((S + 1, S + 1), M.dtype)
    return out.at[:S, :S].set(M).at[S, S].set(1.0)


class FCN(AbstractNetwork):
    """Fully connected network (SPEC §1–3). With one hidden layer (default):
    f(x) = Σ_c a_c φ(w_c · x), w_c ~ N(0, σ_w²/d · I), a_c ~ N(0, σ_a²/C) (standard) or
    N(0, σ_a²/C²) (mean-field). With `depth` = L: h¹ = W¹x, h^(l) = W^(l) φ(h^(l−1)) with
    W^(l) ~ N(0, σ_{w,l}²/C_{l−1}), f = a · φ(h^(L)), a ~ N(0, σ_a²/C_L).
    """

    def patches(self, X):
        return X[None]

    def filter_size(self, d):
        return d

    def check_input_dim(self, d):
        if d < 1:
            raise ValueError("inputs must have at least one feature")


class PatchCNN(AbstractNetwork):
    """CNN with non-overlapping patches (SPEC §3, the paper's main model; deeper with `depth`):
    f(x) = Σ_i Σ_c a_ic φ(w_c · x_i), x cut into P = d/S patches x_i of size S, the filter w_c
    shared across patches, w_c ~ N(0, σ_w²/S · I), a_ic ~ N(0, σ_a²/(C P)) (standard scaling).

    **Fields:** those of [`fls_jax.AbstractNetwork`][] and `patch_size` (S, static).
    """

    patch_size: int = eqx.field(static=True, kw_only=True)

    def __check_init__(self):
        if (
            not isinstance(self.patch_size, int | np.integer)
            or isinstance(self.patch_size, bool | np.bool_)
            or self.patch_size < 1
        ):
            raise ValueError(f"patch_size must be a positive integer, got {self.patch_size}")

    def patches(self, X):
        n, d = X.shape
        return jnp.transpose(X.reshape(n, d // self.patch_size, self.patch_size), (1, 0, 2))

    def filter_size(self, d):
        return self.patch_size

    def check_input_dim(self, d):
        if d < 1:
            raise ValueError("inputs must have at least one feature")
        if d % self.patch_size != 0:
            raise ValueError(
                f"patch_size {self.patch_size} does not divide the input dimension {d}: "
                "PatchCNN needs non-overlapping patches that tile the input"
            )


@eqx.filter_jit
def _pivoted_cholesky(network: AbstractNetwork, X: Float[Array, "n d"], r: int):
    """Greedy pivoted Cholesky of Q_f(Σ₀) on X, one kernel column per step (O(n r) memory):
    the r pivots, and the smallest pivot value relative to the largest diagonal entry."""
    n = X.shape[0]
    sigma0 = network.prior_covariance(X.shape[1])
    diag = network.output_kernel_diag(sigma0, X)

    def step(k, carry):
        L, d, piv, smallest = carry
        i = jnp.argmax(d)
        col = network.output_kernel(sigma0, X, X[i][None])[:, 0]
        col = (col - L @ L[i]) / jnp.sqrt(d[i])
        smallest = jnp.minimum(smallest, d[i])
        d = jnp.maximum(d - col**2, 0.0).at[i].set(0.0)
        return L.at[:, k].set(col), d, piv.at[k].set(i), smallest

    init = (jnp.zeros((n, r), X.dtype), diag, jnp.zeros(r, int), jnp.max(diag))
    _, _, piv, smallest = jax.lax.fori_loop(0, r, step, init)
    return piv, smallest / jnp.max(diag)


def inducing_points(
    network: AbstractNetwork, X: Float[Array, "n d"], r: int, *, tol: float = 1e-10
) -> Float[Array, "r d"]:
    """r rows of X to use as a network's `inducing` points (the Nyström approximation of
    Q_f), chosen by greedy pivoted Cholesky of the GP-limit readout kernel Q_f(Σ₀): each
    next point is the one whose kernel is worst explained by those chosen so far. Costs r
    kernel columns, O(n r) memory and O(n r²) time.

    **Arguments:** `network` (its priors and activation; one hidden layer), the training
    inputs `X` (n×d) and the number of points `r` (1 ≤ r ≤ n); `tol`: a pivot below `tol`
    times the largest kernel diagonal entry means the data hold fewer than r kernel-distinct
    points, which is an error (ask for fewer).

    **Returns:** U, r×d, for `FCN(..., inducing=U)` or `PatchCNN(..., inducing=U)`.
    """
    X = jnp.asarray(X)
    # U is rows of X in its float dtype: float32 stays float32 (a float64 U made a float32
    # network's solve float64). The pivots are chosen in JAX's default float, in which the
    # network below is rebuilt (its converters).
    X = X.astype(jnp.result_type(X.dtype, float))
    if network.depth != 1:
        raise ValueError("inducing points are supported for one hidden layer only")
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-d array (n, d), got shape {X.shape}")
    network.check_input_dim(X.shape[1])
    # NaN in X or a prior variance ≤ 0 made a NaN pivot, reported as too few directions.
    from ._solve import _check_finite, _check_hyper_parameters  # _solve imports this module

    _check_finite("X", X)
    _check_hyper_parameters(network, ("sigma_w2",))
    if not isinstance(r, int | np.integer) or not 1 <= r <= X.shape[0]:
        raise ValueError(f"r must be an integer in [1, n = {X.shape[0]}], got {r!r}")
    # The pivots do not depend on the readout's scale; standard scaling keeps it non-zero.
    net = dataclasses.replace(
        network, scaling="standard", sigma_a2=1.0, width=jnp.inf, inducing=None
    )
    piv, smallest = _pivoted_cholesky(net, X.astype(float), int(r))
    if not float(smallest) > tol:
        raise ValueError(
            f"the GP kernel of these inputs has fewer than r = {r} distinct directions (a "
            f"pivot fell to {float(smallest):.1e} of the largest diagonal entry): use fewer "
            "inducing points"
        )
    return X[piv]
