"""Two-layer architectures (SPEC §1–3): hyper-parameters as array leaves, one kernel path.

A network here is the posterior's *model*: architecture, priors, widths, noise and activation.
Every numerical hyper-parameter is a float array leaf, so ``jax.vmap`` over widths, noise or
priors and ``jax.grad`` with respect to them need no special cases.

Both architectures reduce to the same object: the input is cut into P patches of size S
(P = 1, S = d for a fully connected network), the first layer applies one filter
w ~ N(0, Σ) to every patch, and the readout averages over patches:

    Q_f(x, x') = (s_a / P) Σ_i Φ_φ(x_i Σ x_i'ᵀ)                (SPEC §3)

with s_a = σ_a² (standard scaling) or σ_a²/C (mean-field scaling).
"""

import abc
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._activation import AbstractActivation, Erf, Linear


Scaling = Literal["standard", "mean_field"]


def _leaf(x) -> Array:
    return jnp.asarray(x, dtype=float)


class AbstractNetwork(eqx.Module):
    """A two-layer network: one hidden layer of `width` neurons/channels and a linear readout.

    **Fields** (all numerical ones are float arrays, so they can be vmapped and differentiated):

    - `width`: C, the number of hidden neurons (FCN) or channels (PatchCNN); may be `inf`
      (the GP limit, SPEC §1).
    - `sigma_w2`: σ_w², first-layer prior variance times fan-in: w ~ N(0, σ_w²/S · I).
    - `sigma_a2`: σ_a², readout prior variance times C (standard) or C² (mean-field).
    - `noise`: σ², the likelihood noise / temperature (> 0).
    - `activation`: an [`fls_jax.AbstractActivation`][].
    - `scaling`: ``"standard"`` or ``"mean_field"`` readout scaling (SPEC §1).
    """

    width: Float[Array, ""] = eqx.field(converter=_leaf)
    sigma_w2: Float[Array, ""] = eqx.field(converter=_leaf)
    sigma_a2: Float[Array, ""] = eqx.field(converter=_leaf)
    noise: Float[Array, ""] = eqx.field(converter=_leaf)
    activation: AbstractActivation = eqx.field(default_factory=Erf)
    scaling: Scaling = eqx.field(static=True, default="standard")

    def __check_init__(self):
        if self.scaling not in ("standard", "mean_field"):
            raise ValueError(f"scaling must be 'standard' or 'mean_field', got {self.scaling!r}")
        if not isinstance(self.activation, AbstractActivation):
            raise TypeError("activation must be an fls_jax.AbstractActivation instance")

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
        return (S / self.sigma_w2) * jnp.eye(S, dtype=self.sigma_w2.dtype)

    def readout_scale(self) -> Float[Array, ""]:
        """s_a = σ_a² (standard) or σ_a²/C (mean-field) (SPEC §2)."""
        if self.scaling == "standard":
            return self.sigma_a2
        return jnp.where(jnp.isinf(self.width), 0.0, self.sigma_a2 / self.width)

    def output_kernel(
        self,
        sigma: Float[Array, "S S"],
        X1: Float[Array, "n1 d"],
        X2: Float[Array, "n2 d"] | None = None,
    ) -> Float[Array, "n1 n2"]:
        """Q_f(X1, X2) = (s_a/P) Σ_i Φ_φ(X1_i Σ X2_iᵀ) (SPEC §3); X2 = None means X2 = X1."""
        P1 = self.patches(X1)
        P2 = P1 if X2 is None else self.patches(X2)
        if isinstance(self.activation, Linear):
            # Φ(K) = K: the patch average is one contraction over (patch, filter) indices,
            # with no per-patch n×n kernels (P times less memory and traffic).
            c = jnp.einsum("pns,st,pmt->nm", P1, sigma, P2) / P1.shape[0]
            return self.readout_scale() * c
        a = jnp.einsum("pns,st,pnt->pn", P1, sigma, P1)
        b = a if X2 is None else jnp.einsum("pns,st,pnt->pn", P2, sigma, P2)
        c = jnp.einsum("pns,st,pmt->pnm", P1, sigma, P2)
        phi = self.activation.kernel(a[:, :, None], b[:, None, :], c)
        return self.readout_scale() * jnp.mean(phi, axis=0)

    def linear_features(self, X: Float[Array, "n d"]) -> tuple[Float[Array, "n r"], Array] | None:
        """(Z, c) with Q_f(Σ) = Z (I_P ⊗ cΣ) Zᵀ when φ is linear (else None): Z = [X_1 … X_P]
        is n×PS and c = s_a/P, so Q_f has rank ≤ P·S (SPEC §3, linear PatchCNN). Standard
        scaling only (mean-field's c vanishes at C = ∞, where the dense path is exact)."""
        if not isinstance(self.activation, Linear) or self.scaling != "standard":
            return None
        Pt = self.patches(X)
        Z = jnp.transpose(Pt, (1, 0, 2)).reshape(X.shape[0], -1)
        return Z, self.readout_scale() / Pt.shape[0]

    def output_kernel_diag(
        self, sigma: Float[Array, "S S"], X: Float[Array, "n d"]
    ) -> Float[Array, " n"]:
        """The diagonal Q_f(x, x) for each row x of X, without building the n×n kernel."""
        Pt = self.patches(X)
        a = jnp.einsum("pns,st,pnt->pn", Pt, sigma, Pt)
        return self.readout_scale() * jnp.mean(self.activation.kernel(a, a, a), axis=0)


class FCN(AbstractNetwork):
    """Fully connected network with one hidden layer (SPEC §1–3):
    f(x) = Σ_c a_c φ(w_c · x), w_c ~ N(0, σ_w²/d · I), a_c ~ N(0, σ_a²/C) (standard) or
    N(0, σ_a²/C²) (mean-field).
    """

    def patches(self, X):
        return X[None]

    def filter_size(self, d):
        return d

    def check_input_dim(self, d):
        if d < 1:
            raise ValueError("inputs must have at least one feature")


class PatchCNN(AbstractNetwork):
    """Two-layer CNN with non-overlapping patches (SPEC §3, the paper's main model):
    f(x) = Σ_i Σ_c a_ic φ(w_c · x_i), x cut into P = d/S patches x_i of size S, the filter w_c
    shared across patches, w_c ~ N(0, σ_w²/S · I), a_ic ~ N(0, σ_a²/(C P)) (standard scaling).

    **Fields:** those of [`fls_jax.AbstractNetwork`][] and `patch_size` (S, static).
    """

    patch_size: int = eqx.field(static=True, kw_only=True)

    def __check_init__(self):
        if not isinstance(self.patch_size, int | np.integer) or self.patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {self.patch_size}")

    def patches(self, X):
        n, d = X.shape
        return jnp.transpose(X.reshape(n, d // self.patch_size, self.patch_size), (1, 0, 2))

    def filter_size(self, d):
        return self.patch_size

    def check_input_dim(self, d):
        if d % self.patch_size != 0:
            raise ValueError(
                f"patch_size {self.patch_size} does not divide the input dimension {d}: "
                "PatchCNN needs non-overlapping patches that tile the input"
            )
