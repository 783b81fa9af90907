"""Gaussian expectations of activations: the post-kernel map Φ_φ of SPEC §2.

Every activation answers one question: for a centred Gaussian pair (h, h') with variances
``a = E[h²]``, ``b = E[h'²]`` and covariance ``c = E[h h']``, what is E[φ(h) φ(h')]?
Evaluated elementwise (and broadcasting), that single function builds the train kernel
Φ(K) (``a = diag K`` as a column, ``b`` as a row), the train/test cross kernel and the test
diagonal, so a new activation is one class with one method.
"""

import abc
import functools
import math
from collections.abc import Callable
from typing import ClassVar

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
    sampler and the quadrature checks) and [`fls_jax.AbstractActivation.kernel`][], and set
    the class attribute `odd`; `homogeneous = True` declares Φ(ta, tb, tc) = tΦ(a, b, c) for
    t > 0 (default False), which `renormalise` then uses.
    """

    odd: eqx.AbstractClassVar[bool]
    # Whether Φ is positively homogeneous of degree one, Φ(ta, tb, tc) = t Φ(a, b, c) for
    # t > 0 (`Linear`, `ReLU`): a network of such layers then has the kernel s_a Π_l σ_{w,l}²
    # times its kernel at unit hyper-parameters, which `renormalise` uses to differentiate
    # in them through the eigenvalues alone (exact on rank-deficient kernels).
    homogeneous: ClassVar[bool] = False

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

    def kernel_with_mean(self, a, b, c, ma, mb) -> Array:
        """E[φ(h)φ(h')] for (h, h') ~ N((ma, mb), [[a, c], [c, b]]), elementwise: the kernel
        of a first layer whose filters have a posterior mean (SPEC §3, "Non-odd
        activations"; `weight_mean=True` on the network). Optional: activations without it
        cannot be used with a mean."""
        raise NotImplementedError(f"{type(self).__name__} has no kernel with a mean")

    @property
    def supports_mean(self) -> bool:
        """Whether [`fls_jax.AbstractActivation.kernel_with_mean`][] is implemented."""
        return type(self).kernel_with_mean is not AbstractActivation.kernel_with_mean


class Linear(AbstractActivation):
    """φ(h) = h, so Φ(K) = K (SPEC §2)."""

    odd = True
    homogeneous = True

    def __call__(self, h):
        return jnp.asarray(h)

    def kernel(self, a, b, c):
        return jnp.asarray(c) + 0.0 * (jnp.asarray(a) + jnp.asarray(b))

    def kernel_with_mean(self, a, b, c, ma, mb):
        return self.kernel(a, b, c) + jnp.asarray(ma) * jnp.asarray(mb)


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
    homogeneous = True

    def __call__(self, h):
        return jnp.maximum(h, 0.0)

    def kernel(self, a, b, c):
        ab = _safe_sqrt(a * b)
        # A zero-variance input (e.g. an all-zero patch) gives φ ≡ 0 there: Φ = 0, not 0/0.
        # A NaN one (Σ not positive definite) stays NaN (`_safe_sqrt`).
        zero = ab == 0
        return jnp.where(zero, 0.0, ab / (2 * jnp.pi) * _arccos_j1(c / jnp.where(zero, 1.0, ab)))

    def kernel_with_mean(self, a, b, c, ma, mb):
        """E[h⁺h'⁺] with means (`_relu_pair`): in closed form through the bivariate normal
        distribution function (`_bivariate_normal`)."""
        return _relu_pair(*_float_arrays(a, b, c, ma, mb))


def _float_arrays(*xs) -> list[Array]:
    """`xs` as float arrays of one shape, in their common float dtype (float32 stays float32:
    `jnp.asarray(x, float)` made a float32 request's kernels float64 under x64, stop 61)."""
    dtype = jnp.result_type(*xs, float)
    return jnp.broadcast_arrays(*(jnp.asarray(x, dtype) for x in xs))


def _norm_pdf(x):
    return jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


# Gauss–Legendre nodes on [0, 1] for the bivariate normal integral (`_bivariate_normal`).
_GL = np.polynomial.legendre.leggauss(20)
_GL_X, _GL_W = 0.5 * (_GL[0] + 1), 0.5 * _GL[1]
# Above this |ρ| the integral is taken from the nearer end, ρ = ±1 (`_bivariate_normal`).
_BVN_HIGH = 0.925


def _bivariate_normal(h, k, rho):
    """Φ₂(h, k; ρ) = P(X ≤ h, Y ≤ k) for standard normals of correlation ρ, by Genz's method
    (Drezner–Wesolowsky's, refined: A. Genz, Statistics and Computing 14:251, 2004), 20
    Gauss–Legendre nodes in both branches. For |ρ| < 0.925: Φ(h)Φ(k) + ∫_0^ρ φ₂(h, k; t) dt
    over θ = arcsin t. Otherwise from the nearer end t = ±1: with H = −h, K' = ∓k (upper
    orthant), b = |H − K'| and s = √(1 − ρ²), the integrand over x = √(1 − t²) ∈ (0, s] has a
    boundary layer e^{−b²/(2x²)} (width b); its first terms in x² are integrated in closed
    form (a Φ(−b/s) term) and the smooth rest by quadrature. Within 2·10⁻¹⁵ of a 30-digit
    quadrature over random (h, k, ρ) with |ρ| up to 1 − 10⁻¹² and h ≈ ±k; it replaced 20 +
    200 nodes (3·10⁻¹²) evaluated in both branches everywhere.

    A plain function, differentiated through its quadrature (as accurate as its value). Its
    high branch has kinks in b that cancel in Φ₂: all are written in the one b = |H − K'|
    (max(H, K') = (H + K' + b)/2), so that at a tie (h = ±k, as at a zero mean) automatic
    differentiation takes the same side of each and gets Φ₂'s derivatives, of every order;
    the singular pieces (|ρ| = 1) are behind a double `where`. Not a custom JVP:
    `_relu_pair`'s rule calls it, and under `lax.scan` JAX differentiated custom JVPs
    called inside a rule through their primal (`_arccos_j1_jvp`)."""
    ndtr = jax.scipy.special.ndtr
    nodes, weights = (jnp.asarray(a, jnp.result_type(h, k, rho)) for a in (_GL_X, _GL_W))
    low = jnp.abs(rho) < _BVN_HIGH
    # Low branch: θ ∈ [0, arcsin ρ].
    t = jnp.arcsin(jnp.where(low, rho, 0.0))
    sn = jnp.sin(t[..., None] * nodes)
    hs, hk0 = (h * h + k * k)[..., None], (h * k)[..., None]
    f = jnp.exp(-(hs - 2 * hk0 * sn) / (2 * (1 - sn * sn)))
    value_low = ndtr(h) * ndtr(k) + t * (f @ weights) / (2 * jnp.pi)
    # High branch, in the upper orthant P(X > H, Y > K') of correlation |ρ|.
    r = jnp.abs(jnp.where(low, 0.95, rho))
    neg = rho < 0
    H, Kp = -h, jnp.where(neg, k, -k)
    hk = H * Kp
    s2 = (1 - r) * (1 + r)
    inside = s2 > 0
    s2 = jnp.where(inside, s2, 1.0)
    s = jnp.sqrt(s2)
    delta = H - Kp
    b, bs = jnp.abs(delta), delta * delta
    c, d = (4 - hk) / 8, (12 - hk) / 80
    # The closed-form part: ∫_0^s e^{−(b²/x² + hk)/2} (1 + c x²(1 + d x²)) dx, expanded.
    closed = (
        s * jnp.exp(-(bs / s2 + hk) / 2) * (1 - c * (bs - s2) * (1 - d * bs) / 3 + c * d * s2 * s2)
    )
    closed = closed - jnp.exp(-hk / 2) * math.sqrt(2 * math.pi) * ndtr(-b / s) * b * (
        1 - c * bs * (1 - d * bs) / 3
    )
    xs = (s[..., None] * nodes) ** 2
    root = jnp.sqrt(1 - xs)
    series = 1 + c[..., None] * xs * (1 + 5 * d[..., None] * xs)
    exact = jnp.exp(-hk[..., None] * xs / (2 * (1 + root) ** 2)) / root
    rest = jnp.exp(-(bs[..., None] / xs + hk[..., None]) / 2) * (series - exact)
    p = jnp.where(inside, (s * (rest @ weights) - closed) / (2 * jnp.pi), 0.0)
    top = (H + Kp + b) / 2  # max(H, K')
    value_high = jnp.where(neg, (ndtr(top) - ndtr(H)) - p, p + ndtr(-top))
    return jnp.where(low, value_low, value_high)


def _one_minus_rho_squared(rho):
    """1 − ρ² as (1 − ρ)(1 + ρ): each factor exact near ρ = ±1, where 1 − ρ² itself loses
    the digits that the O(√(1 − ρ)) terms of the ReLU kernel need to cancel (`_relu_pair`)."""
    return (1 - rho) * (1 + rho)


def _conditional_argument(h, k, rho):
    """(k − ρh)/√(1 − ρ²), and 0 at |ρ| = 1 (where k = ±h along any admissible direction:
    a pair of pre-activations perfectly correlated has equal standardised means). The
    numerator is (k − h) + (1 − ρ)h for ρ > 0 and (k + h) − (1 + ρ)h otherwise: on a kernel's
    diagonal (k = h, ρ = 1 up to rounding) k − ρh rounds to a few per cent of itself, which
    left 10⁻¹¹ in the kernel (its O(√(1 − ρ)) terms cancel only if all use the same ρ)."""
    r2 = _one_minus_rho_squared(rho)
    inside = r2 > 0
    numerator = jnp.where(rho > 0, (k - h) + (1 - rho) * h, (k + h) - (1 + rho) * h)
    return jnp.where(inside, numerator / jnp.sqrt(jnp.where(inside, r2, 1.0)), 0.0)


def _positive_part_mean(v):
    """E[(v + Z)⁺] = vΦ(v) + φ(v), Z ~ N(0, 1)."""
    return v * jax.scipy.special.ndtr(v) + _norm_pdf(v)


# |ρ| within this of 1 is taken as ±1 in the ReLU kernel with a mean (`_relu_terms`).
_RHO_SNAP = 8 * float(np.finfo(np.float64).eps)


def _relu_terms(a, b, c, ma, mb):
    """The standardised pieces of E[h⁺h'⁺]: s = √a, s' = √b, u = m/s, ρ, r = √(1 − ρ²),
    L = Φ₂(u, u'; ρ), and the conditional arguments v = (u' − ρu)/r, v' = (u − ρu')/r."""
    s1, s2 = _safe_sqrt(a), _safe_sqrt(b)
    zero = s1 * s2 == 0
    one = jnp.where(zero, 1.0, s1 * s2)
    rho = jnp.where(zero, 0.0, jnp.clip(c / one, -1.0, 1.0))
    # A kernel's diagonal has ρ = 1 up to a few roundings: snapped to ±1 (the boundary of
    # `_bivariate_normal` and `_conditional_argument`), so that its second derivatives are
    # the limits along admissible directions rather than O(1/√ε) terms that cancel only in
    # exact arithmetic (they made a Newton Jacobian NaN).
    edge = jnp.abs(rho) > 1 - _RHO_SNAP
    rho = jnp.where(edge, jnp.sign(rho), rho)
    u1 = jnp.where(zero, 0.0, ma / jnp.where(zero, 1.0, s1))
    u2 = jnp.where(zero, 0.0, mb / jnp.where(zero, 1.0, s2))
    r = _safe_sqrt(_one_minus_rho_squared(rho))
    L = _bivariate_normal(u1, u2, rho)
    v21 = _conditional_argument(u1, u2, rho)
    v12 = _conditional_argument(u2, u1, rho)
    return zero, s1, s2, u1, u2, rho, r, L, v21, v12


def _relu_pair_value(a, b, c, ma, mb):
    """E[h⁺h'⁺] for (h, h') ~ N((ma, mb), [[a, c], [c, b]]) (SPEC §2 with a mean):

        (ma mb + c) L + mb s φ(u) Φ(v) + ma s' φ(u') Φ(v') + s s' r φ(u) φ(v)

    (notation of `_relu_terms`), which is the arc-cosine kernel at zero mean. Its
    derivatives are Gaussian identities (Price's theorem, Stein's lemma), each finite on a
    kernel's diagonal (ρ = 1, u = u'): ∂_c = P(h > 0, h' > 0) = L, ∂_ma = E[θ(h) h'⁺]
    = mb L + s'ρ φ(u)Φ(v) + s' φ(u')Φ(v'), ∂_a = ½ E[δ(h) h'⁺] = (s' r / 2s) φ(u) E[(v + Z)⁺],
    and likewise in b and mb. A zero variance (an all-zero input) gives 0 and zero partials."""
    return _relu_pair_from_terms(c, ma, mb, _relu_terms(a, b, c, ma, mb))


def _relu_pair_from_terms(c, ma, mb, terms):
    """`_relu_pair_value` from `_relu_terms`' pieces (shared with the JVP rule)."""
    zero, s1, s2, u1, u2, _, r, L, v21, v12 = terms
    ndtr = jax.scipy.special.ndtr
    value = (
        (ma * mb + c) * L
        + mb * s1 * _norm_pdf(u1) * ndtr(v21)
        + ma * s2 * _norm_pdf(u2) * ndtr(v12)
        + s1 * s2 * r * _norm_pdf(u1) * _norm_pdf(v21)
    )
    return jnp.where(zero, 0.0, value)


_relu_pair = jax.custom_jvp(_relu_pair_value)


@_relu_pair.defjvp
def _relu_pair_jvp(primals, tangents):
    a, b, c, ma, mb = primals
    da, db, dc, dma, dmb = tangents
    terms = _relu_terms(a, b, c, ma, mb)
    zero, s1, s2, u1, u2, rho, r, L, v21, v12 = terms
    ndtr = jax.scipy.special.ndtr
    p1, p2 = _norm_pdf(u1) * ndtr(v21), _norm_pdf(u2) * ndtr(v12)
    d_ma = mb * L + s2 * (rho * p1 + p2)
    d_mb = ma * L + s1 * (rho * p2 + p1)
    s1_safe, s2_safe = jnp.where(zero, 1.0, s1), jnp.where(zero, 1.0, s2)
    d_a = s2 * r / (2 * s1_safe) * _norm_pdf(u1) * _positive_part_mean(v21)
    d_b = s1 * r / (2 * s2_safe) * _norm_pdf(u2) * _positive_part_mean(v12)
    tangent = L * dc + d_ma * dma + d_mb * dmb + d_a * da + d_b * db
    # The primal output is `_relu_pair_value`'s, from the same terms as the tangent: one
    # `_bivariate_normal` in place of two at every differentiated call site (with the one-patch
    # `first_layer_kernel`, a ReLU FCN's weight-mean solve traces 19.5k operations in place of
    # 25.8k, `benchmarks/solve_compile.py`). Nothing here is a custom JVP
    # (`_arccos_j1_jvp`): under `lax.scan` (the kernel's loop over patches) JAX's second
    # derivatives went through such calls' primal.
    return _relu_pair_from_terms(c, ma, mb, terms), jnp.where(zero, 0.0, tangent)


class Quadrature(AbstractActivation):
    """Any φ, with Φ by tensor-product Gauss–Hermite quadrature over the 2-d Gaussian (SPEC §2).

    **Arguments:**

    - `fn`: the activation, a JAX-traceable elementwise function.
    - `order`: number of Gauss–Hermite nodes per dimension (the kernel costs ``order²``
      evaluations of φ per entry). The rule is exact for polynomials of degree
      < 2·order; smooth φ converge exponentially fast, kinks (ReLU) only algebraically,
      and saturating φ slowly at large variance a: erf at order 40 is off by 2·10⁻⁴ at
      a = 3 and 2·10⁻² at a = 10 (`docs/equations.md`). Check at twice the order there.
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

    def __check_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Quadrature's fn must be a callable φ, got {self.fn!r}")
        if isinstance(self.order, bool) or not isinstance(self.order, int | np.integer):
            raise ValueError(f"Quadrature's order must be an integer ≥ 1, got {self.order!r}")
        if self.order < 1:
            raise ValueError(f"Quadrature's order must be an integer ≥ 1, got {self.order}")

    def __call__(self, h):
        return self.fn(jnp.asarray(h))

    def kernel(self, a, b, c):
        a, b, c = jnp.broadcast_arrays(jnp.asarray(a), jnp.asarray(b), jnp.asarray(c))
        zero = jnp.zeros_like(a)
        return _pair(self.fn, self.fn, self.order, True, a, b, c, zero, zero)

    def kernel_with_mean(self, a, b, c, ma, mb):
        """E[φ(h)φ(h')] with means, by the same quadrature about them (`_pair`)."""
        return _pair(self.fn, self.fn, self.order, False, *_float_arrays(a, b, c, ma, mb))


def _derivative(f: Callable[[Array], Array]) -> Callable[[Array], Array]:
    """f' of an elementwise f, elementwise."""
    return lambda h: jax.jvp(f, (h,), (jnp.ones_like(h),))[1]


def _times_h(f: Callable[[Array], Array]) -> Callable[[Array], Array]:
    return lambda h: h * f(h)


def _quadrature(f, g, order: int, a, b, c, ma, mb):
    """E[f(ma + x) g(mb + y)] for (x, y) ~ N(0, [[a, c], [c, b]]) by tensor-product
    Gauss–Hermite quadrature: x = √a z₁, y = √b (ρ z₁ + √(1−ρ²) z₂), ρ = c/√(ab)."""
    z, w = np.polynomial.hermite_e.hermegauss(order)
    w = w / w.sum()  # probabilists' weights, normalised to a N(0, 1) expectation
    sa, sb = _safe_sqrt(a), _safe_sqrt(b)
    # A zero variance makes x ≡ 0 and ρ irrelevant: avoid 0/0. A NaN one stays NaN.
    zero = sa * sb == 0
    rho = jnp.where(zero, 0.0, jnp.clip(c / jnp.where(zero, 1.0, sa * sb), -1.0, 1.0))
    perp = _safe_sqrt(1 - rho**2)
    zs, ws = jnp.asarray(z, dtype=rho.dtype), jnp.asarray(w, dtype=rho.dtype)

    # A scan over the z₁ nodes keeps memory at one broadcast of the z₂ nodes per entry.
    def body(acc, node):
        z1, w1 = node
        inner = g(mb[..., None] + sb[..., None] * (rho[..., None] * z1 + perp[..., None] * zs))
        return acc + w1 * f(ma + sa * z1) * (inner @ ws), None

    out, _ = jax.lax.scan(body, jnp.zeros_like(rho), (zs, ws))
    return out


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3))
def _pair(f, g, order: int, centred: bool, a, b, c, ma, mb):
    """E[f(h) g(h')] for (h, h') ~ N((ma, mb), [[a, c], [c, b]]) (`_quadrature`),
    differentiated by Gaussian identities rather than through the quadrature's ρ and
    √(1−ρ²), whose derivatives are wrong at ρ = 1 (every diagonal entry of a train kernel):
    ∂_ma E[f g] = E[f'(h) g(h')], Price's theorem ∂_c E[f g] = E[f'(h) g'(h')], and the heat
    equation ∂_a E[f g] = ½ E[f''(h) g(h')] with Stein's lemma E[(h − ma) f'(h) g(h')]
    = a E[f'' g] + c E[f' g'] to avoid f'': ∂_a E[f g] = (E[h f'(h) g(h')] − ma E[f' g]
    − c E[f' g']) / 2a, and likewise in b and mb. Each term is again a `_pair`, so higher
    derivatives follow the same rules. `centred` (static): the means are zero and not
    differentiated (a kernel without a mean), and their terms are skipped. A zero variance
    (an all-zero input, where ∂a/∂Σ = 0) gets a zero partial (SPEC §2)."""
    return _quadrature(f, g, order, a, b, c, ma, mb)


@_pair.defjvp
def _pair_jvp(f, g, order, centred, primals, tangents):
    a, b, c, ma, mb = primals
    da, db, dc, dma, dmb = tangents
    df, dg = _derivative(f), _derivative(g)

    def pair(f, g):
        return _pair(f, g, order, centred, a, b, c, ma, mb)

    both = pair(df, dg)
    stein_a, stein_b = pair(_times_h(df), g), pair(f, _times_h(dg))
    left = right = None
    if not centred:
        left, right = pair(df, g), pair(f, dg)  # the mean partials
        stein_a, stein_b = stein_a - ma * left, stein_b - mb * right

    def partial(var, term):
        zero = var == 0
        return jnp.where(zero, 0.0, (term - c * both) / (2 * jnp.where(zero, 1.0, var)))

    tangent = partial(a, stein_a) * da + partial(b, stein_b) * db + both * dc
    if left is not None and right is not None:
        tangent = tangent + left * dma + right * dmb
    return pair(f, g), tangent
