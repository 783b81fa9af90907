"""Gaussian expectations of activations: the post-kernel map Φ_φ of SPEC §2.

Every activation answers one question: for a centred Gaussian pair (h, h') with variances
``a = E[h²]``, ``b = E[h'²]`` and covariance ``c = E[h h']``, what is E[φ(h) φ(h')]?
Evaluated elementwise (and broadcasting), that single function builds the train kernel
Φ(K) (``a = diag K`` as a column, ``b`` as a row), the train/test cross kernel and the test
diagonal, so a new activation is one class with one method.
"""

import abc
import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float


def _safe_sqrt(x: ArrayLike) -> Array:
    """√x with a zero derivative at x = 0 instead of ∞ (double `where`). For a variance: a
    zero one comes from an all-zero input or patch x, where ∂a/∂Σ = x xᵀ = 0, so any finite
    partial of Φ in a (and in c) is multiplied by zero, but an infinite one made the EoS NaN.
    For √(1−ρ²) in the quadrature: defined at ρ = 1 (Φ's derivatives there come from `_pair`'s
    Gaussian identities, not from this square root). A negative or NaN x (a variance from a Σ
    that is not positive definite) stays NaN: an activation must not turn an invalid kernel
    into a finite one (the solver's line search rejects NaN residuals)."""
    x = jnp.asarray(x)
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), jnp.where(x == 0, 0.0, jnp.nan))


class AbstractActivation(eqx.Module):
    """An activation φ and its Gaussian kernel map Φ_φ (SPEC §2).

    Subclasses implement [`fls_jax.AbstractActivation.__call__`][] (φ itself, used by the
    sampler and the quadrature checks) and [`fls_jax.AbstractActivation.kernel`][].
    """

    odd: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def __call__(self, h: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        """φ(h), elementwise."""

    @abc.abstractmethod
    def kernel(
        self,
        a: Float[ArrayLike, "..."],
        b: Float[ArrayLike, "..."],
        c: Float[ArrayLike, "..."],
    ) -> Float[Array, "..."]:
        """E[φ(h)φ(h')] for (h, h') ~ N(0, [[a, c], [c, b]]), elementwise with broadcasting.

        **Arguments:**

        - `a`: variance of h (> 0).
        - `b`: variance of h' (> 0).
        - `c`: covariance of h and h', with c² ≤ a b.

        **Returns:** Φ_φ evaluated at each (a, b, c): SPEC §2.
        """


class Linear(AbstractActivation):
    """φ(h) = h, so Φ(K) = K (SPEC §2)."""

    odd = True

    def __call__(self, h):
        return jnp.asarray(h)

    def kernel(self, a, b, c):
        return jnp.asarray(c) + 0.0 * (jnp.asarray(a) + jnp.asarray(b))


class Erf(AbstractActivation):
    """φ(h) = erf(h); Φ = (2/π) arcsin(2c / √((1+2a)(1+2b))) (SPEC §2, Williams 1997)."""

    odd = True

    def __call__(self, h):
        return jax.scipy.special.erf(h)

    def kernel(self, a, b, c):
        return (2 / jnp.pi) * jnp.arcsin(2 * c / jnp.sqrt((1 + 2 * a) * (1 + 2 * b)))


def _edge(rho):
    """π at ρ ≥ 1, 0 at ρ ≤ −1 (the value of J and of π − arccos there); NaN stays NaN."""
    return jnp.where(rho > 0, jnp.pi, jnp.where(rho <= 0, 0.0, jnp.nan))


def _j1_value(rho):
    """J(ρ) = √(1−ρ²) + (π − arccos ρ) ρ, the order-1 arc-cosine function times π, with
    J(1) = π and J(−1) = 0 beyond |ρ| ≥ 1. Finite derivatives of every order (double
    `where`); its first derivative is exact only inside, hence `_arccos_j1`."""
    inside = rho**2 < 1
    r = jnp.where(inside, rho, 0.0)
    value = jnp.sqrt(1 - r**2) + (jnp.pi - jnp.arccos(r)) * r
    return jnp.where(inside, value, _edge(rho))


@jax.custom_jvp
def _arccos_j1(rho):
    """`_j1_value`, with the derivative dJ/dρ = π − arccos ρ (finite at ρ = ±1, where the
    chain rule through √(1−ρ²) and arccos gives ∞ − ∞)."""
    return _j1_value(rho)


def _pi_minus_arccos(rho):
    """π − arccos ρ, whose derivative 1/√(1−ρ²) is infinite at |ρ| = 1. There (the diagonal
    of a kernel) ρ ≡ 1 along every admissible direction, so its tangent is zero up to
    roundoff: the derivatives are taken as 0, by a double `where` rather than a custom JVP,
    so that every order of derivative is finite (`_arccos_j1_jvp`)."""
    inside = rho**2 < 1
    value = jnp.pi - jnp.arccos(jnp.where(inside, rho, 0.0))
    return jnp.where(inside, value, _edge(rho))


@_arccos_j1.defjvp
def _arccos_j1_jvp(primals, tangents):
    # The primal output is `_j1_value`, not `_arccos_j1`: in second derivatives under
    # `lax.scan`, JAX differentiated a custom JVP called inside this rule through its primal,
    # which gave NaN at ρ = 1 (every diagonal entry of a ReLU kernel) and made a ReLU
    # network's Newton Jacobian and implicit gradients NaN.
    (rho,), (drho,) = primals, tangents
    return _j1_value(rho), _pi_minus_arccos(rho) * drho


class ReLU(AbstractActivation):
    """φ(h) = max(h, 0); Φ is the order-1 arc-cosine kernel (SPEC §2, Cho & Saul 2009).

    ReLU is not odd: the exact per-neuron posterior has a mean, which the zero-mean
    Gaussian EoS of SPEC §3 leave out. Results for ReLU networks are that approximation.
    """

    odd = False

    def __call__(self, h):
        return jnp.maximum(h, 0.0)

    def kernel(self, a, b, c):
        ab = _safe_sqrt(a * b)
        # A zero-variance input (e.g. an all-zero patch) gives φ ≡ 0 there: Φ = 0, not 0/0.
        # A NaN one (Σ not positive definite) stays NaN (`_safe_sqrt`).
        zero = ab == 0
        return jnp.where(zero, 0.0, ab / (2 * jnp.pi) * _arccos_j1(c / jnp.where(zero, 1.0, ab)))


class Quadrature(AbstractActivation):
    """Any φ, with Φ by tensor-product Gauss–Hermite quadrature over the 2-d Gaussian (SPEC §2).

    **Arguments:**

    - `fn`: the activation, a JAX-traceable elementwise function.
    - `order`: number of Gauss–Hermite nodes per dimension (the kernel costs ``order²``
      evaluations of φ per entry). The rule is exact for polynomials of degree
      < 2·order; smooth φ converge exponentially fast, kinks (ReLU) only algebraically.
    - `odd`: whether φ is odd (the zero-mean Gaussian EoS are then exact in form).

    Derivatives of Φ in (a, b, c) are Gaussian expectations of φ' (Price's theorem and
    Stein's lemma, `_pair`), by the same quadrature, so they are right on the diagonal
    c = √(ab) of a train kernel too; higher derivatives follow the same rules. A kink in φ
    (ReLU) has φ'' = 0 under JAX, so Φ's second derivatives miss its δ: use the closed form
    ([`fls_jax.ReLU`][]) where Newton steps or gradients of the EoS need them.
    """

    fn: Callable[[Array], Array] = eqx.field(static=True)
    order: int = eqx.field(static=True, default=40)
    odd: bool = eqx.field(static=True, default=False)  # pyright: ignore[reportIncompatibleVariableOverride]

    def __call__(self, h):
        return self.fn(jnp.asarray(h))

    def kernel(self, a, b, c):
        a, b, c = jnp.broadcast_arrays(jnp.asarray(a), jnp.asarray(b), jnp.asarray(c))
        return _pair(self.fn, self.fn, self.order, a, b, c)


def _derivative(f: Callable[[Array], Array]) -> Callable[[Array], Array]:
    """f' of an elementwise f, elementwise."""
    return lambda h: jax.jvp(f, (h,), (jnp.ones_like(h),))[1]


def _times_h(f: Callable[[Array], Array]) -> Callable[[Array], Array]:
    return lambda h: h * f(h)


def _quadrature(f, g, order: int, a, b, c):
    """E[f(h) g(h')] for (h, h') ~ N(0, [[a, c], [c, b]]) by tensor-product Gauss–Hermite
    quadrature: h = √a z₁, h' = √b (ρ z₁ + √(1−ρ²) z₂), ρ = c/√(ab)."""
    z, w = np.polynomial.hermite_e.hermegauss(order)
    w = w / w.sum()  # probabilists' weights, normalised to a N(0, 1) expectation
    sa, sb = _safe_sqrt(a), _safe_sqrt(b)
    # A zero variance makes h ≡ 0 and ρ irrelevant: avoid 0/0. A NaN one stays NaN.
    zero = sa * sb == 0
    rho = jnp.where(zero, 0.0, jnp.clip(c / jnp.where(zero, 1.0, sa * sb), -1.0, 1.0))
    perp = _safe_sqrt(1 - rho**2)
    zs, ws = jnp.asarray(z, dtype=rho.dtype), jnp.asarray(w, dtype=rho.dtype)

    # A scan over the z₁ nodes keeps memory at one broadcast of the z₂ nodes per entry.
    def body(acc, node):
        z1, w1 = node
        inner = g(sb[..., None] * (rho[..., None] * z1 + perp[..., None] * zs))
        return acc + w1 * f(sa * z1) * (inner @ ws), None

    out, _ = jax.lax.scan(body, jnp.zeros_like(rho), (zs, ws))
    return out


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _pair(f, g, order: int, a, b, c):
    """E[f(h) g(h')] for (h, h') ~ N(0, [[a, c], [c, b]]) (`_quadrature`), differentiated by
    Gaussian identities rather than through the quadrature's ρ and √(1−ρ²), whose derivatives
    are wrong at ρ = 1 (every diagonal entry of a train kernel): Price's theorem
    ∂_c E[f g] = E[f'(h) g'(h')], and the heat equation ∂_a E[f g] = ½ E[f''(h) g(h')] with
    Stein's lemma E[h f'(h) g(h')] = a E[f'' g] + c E[f' g'] to avoid f'':
    ∂_a E[f g] = (E[h f'(h) g(h')] − c E[f' g']) / 2a, and likewise in b. Each term is again
    a `_pair`, so higher derivatives follow the same rules. A zero variance (an all-zero
    input, where ∂a/∂Σ = 0) gets a zero partial (SPEC §2)."""
    return _quadrature(f, g, order, a, b, c)


@_pair.defjvp
def _pair_jvp(f, g, order, primals, tangents):
    a, b, c = primals
    da, db, dc = tangents
    df, dg = _derivative(f), _derivative(g)
    both = _pair(df, dg, order, a, b, c)

    def partial(var, term):
        zero = var == 0
        return jnp.where(zero, 0.0, (term - c * both) / (2 * jnp.where(zero, 1.0, var)))

    d_a = partial(a, _pair(_times_h(df), g, order, a, b, c))
    d_b = partial(b, _pair(f, _times_h(dg), order, a, b, c))
    return _pair(f, g, order, a, b, c), d_a * da + d_b * db + both * dc
