"""Dense linear algebra that can be vmapped safely on XLA:CPU, with hand-written derivatives.

jaxlib 0.10's CPU LAPACK kernels split a *batched* factorisation across XLA's intra-op thread
pool and block until the pieces are done. When the thunk executor runs as many such calls at
once as the pool has threads, every worker waits on the others and the program hangs at 0 %
CPU: it happened in vmapped width sweeps on 2 cores (gdb: all workers in
``jax::ParallelBatchMap`` under ``lapack_dtrsm_ffi``). jaxlib 0.11.2 compiles that path out,
but it cannot be installed here. So every factorisation in fls_jax goes through this module,
where on CPU a vmap becomes a loop of unbatched LAPACK calls (no cost that matters: LAPACK
works matrix by matrix anyway), and other platforms keep their batched kernels.
"""

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Float


def _cpu_sequential(f: Callable) -> Callable:
    """f, except that under vmap on CPU it runs as a sequential loop over the batch."""
    seq = jax.custom_batching.sequential_vmap(f)

    def g(*args):
        return jax.lax.platform_dependent(*args, cpu=seq, default=f)

    return g


@_cpu_sequential
def _cholesky_inverse_logdet(K):
    n = K.shape[0]
    op = lx.MatrixLinearOperator(K, lx.positive_semidefinite_tag)
    state = lx.Cholesky().init(op, {})
    chol = state[0]
    # The solver's `compute` directly: `lx.linear_solve` compares the vector's structure with
    # the operator's, which fails inside `jax.shard_map` (the vector's carries the mesh;
    # lineax issue #185), and a sharded `sweep` runs this per device.
    solve = jax.vmap(lambda b: lx.Cholesky().compute(state, b, {})[0], in_axes=1, out_axes=1)
    inv = solve(jnp.eye(n, dtype=K.dtype))
    return 0.5 * (inv + inv.T), 2 * jnp.sum(jnp.log(jnp.abs(jnp.diagonal(chol))))


@jax.custom_jvp
def spd_inverse_logdet(K: Float[Array, "n n"]) -> tuple[Float[Array, "n n"], Float[Array, ""]]:
    """(K⁻¹, log det K) of a symmetric positive-definite K, by one lineax Cholesky solve.

    Its derivative is written by hand, d(K⁻¹) = −K⁻¹ dK K⁻¹ and d log det K = tr(K⁻¹ dK),
    so every derivative of the free energy (the EoS, the Newton Jacobian, hyper-parameter
    gradients) costs matrix products with the stored inverse, not new factorisations.
    A K that is not positive definite gives NaN, which the solver's line search rejects.
    """
    return _cholesky_inverse_logdet(K)


@spd_inverse_logdet.defjvp
def _spd_inverse_logdet_jvp(primals, tangents):
    (K,), (dK,) = primals, tangents
    inv, logdet = spd_inverse_logdet(K)
    return (inv, logdet), (-inv @ dK @ inv, jnp.sum(inv * dK))


@_cpu_sequential
def _cholesky_and_inverse(A):
    L = jnp.linalg.cholesky(A)
    eye = jnp.eye(A.shape[0], dtype=A.dtype)
    return L, jax.scipy.linalg.solve_triangular(L, eye, lower=True)


@jax.custom_jvp
def cholesky_inverse(A: Float[Array, "r r"]) -> tuple[Float[Array, "r r"], Float[Array, "r r"]]:
    """(L, L⁻¹) with L L ᵀ = A, L lower triangular, for a symmetric positive-definite A.

    Its derivative is written by hand: with M = L⁻¹ dA L⁻ᵀ and Ψ its lower triangle with the
    diagonal halved, dL = L Ψ and d(L⁻¹) = −Ψ L⁻¹ (matrix products only, and the rule calls
    this function again, so derivatives of any order work). A that is not positive definite
    gives NaN.
    """
    return _cholesky_and_inverse(A)


def _cholesky_tangents(L: Array, L_inv: Array, dA: Array) -> tuple[Array, Array]:
    M = L_inv @ dA @ L_inv.T
    psi = jnp.tril(M) - 0.5 * jnp.diag(jnp.diagonal(M))
    return L @ psi, -psi @ L_inv


@cholesky_inverse.defjvp
def _cholesky_inverse_jvp(primals, tangents):
    (A,), (dA,) = primals, tangents
    L, L_inv = cholesky_inverse(A)
    return (L, L_inv), _cholesky_tangents(L, L_inv, dA)


@_cpu_sequential
def _guarded_cholesky_and_inverse(A):
    L = jnp.linalg.cholesky(A)
    ok = jnp.all(jnp.isfinite(L))
    eye = jnp.eye(A.shape[0], dtype=A.dtype)
    L = jnp.where(ok, L, eye)
    return L, jax.scipy.linalg.solve_triangular(L, eye, lower=True), ok


@jax.custom_jvp
def guarded_cholesky_inverse(A: Float[Array, "r r"]) -> tuple[Array, Array, Array]:
    """`cholesky_inverse` with a flag: (L, L⁻¹, ok), where a failed factorisation (A not
    numerically positive definite) gives ok = False and L = L⁻¹ = I instead of NaN.

    For a caller that drops such an A by `ok` (`jnp.where`) and still differentiates the
    rest: a NaN factor, even where its results are multiplied by 0 or not selected, turns
    reverse-mode derivatives into NaN (0 · NaN), but the identity keeps every value and
    derivative downstream finite. Same derivative rule as `cholesky_inverse`."""
    return _guarded_cholesky_and_inverse(A)


@guarded_cholesky_inverse.defjvp
def _guarded_cholesky_inverse_jvp(primals, tangents):
    (A,), (dA,) = primals, tangents
    L, L_inv, ok = guarded_cholesky_inverse(A)
    flag: Any = np.zeros(np.shape(ok), dtype=jax.dtypes.float0)  # ok has no tangent
    return (L, L_inv, ok), (*_cholesky_tangents(L, L_inv, dA), flag)


def small_cholesky(A: Float[Array, "*batch m m"]) -> Float[Array, "*batch m m"]:
    """Lower Cholesky factors of a stack of small symmetric positive-definite matrices.

    A loop over the m columns in elementwise arithmetic over the whole stack: no LAPACK
    call, so no batched factorisation for jaxlib 0.10 to deadlock on (module docstring),
    however many matrices are stacked and however many such stacks run at once; plain
    automatic differentiation of any order; a program whose size does not grow with m
    (past `_UNROLL`). Cost O(m³) per matrix: meant for the m×m blocks of m outputs, not for
    kernels. A matrix that is not positive definite gives NaN, as LAPACK's does."""
    return _small_cholesky(A)


# Up to this m the column loops of `small_cholesky` and `small_cholesky_solve` are unrolled
# in Python, above it they are `fori_loop`s. For m = 2 (two outputs' blocks) the unrolled
# form compiles faster: a two-output FCN's `renormalise` (n = 16, saddle) 21 → 9 s to lower
# and compile, its gradient 32 → 19–20 s. Unrolled up to m = 4 (a PatchCNN's 4×4 scale), an
# erf PatchCNN's gradient compiled slower, 12 → 17.5–19 s (2-core CPU, stop 52,
# `benchmarks/small_cholesky_compile.py`).
_UNROLL = 2


def _small_cholesky(A: Array) -> Array:
    """The column loop of `small_cholesky`, unrolled up to m = `_UNROLL`."""
    m = A.shape[-1]
    if m > _UNROLL:
        return _small_cholesky_loop(A)
    rows = jnp.arange(m)
    cols: list[Array] = []  # the finished columns of L, each (..., m)
    for j in range(m):
        c = A[..., :, j]
        for k in range(j):
            c = c - cols[k] * cols[k][..., j, None]
        cols.append(jnp.where(rows >= j, c / jnp.sqrt(c[..., j, None]), 0.0))
    return jnp.stack(cols, axis=-1)


def small_cholesky_solve(L: Float[Array, "*batch m m"], b: Float[Array, "*batch m r"]) -> Array:
    """(L Lᵀ)⁻¹ b for a stack of `small_cholesky` factors L, by forward and back substitution
    in elementwise arithmetic (no LAPACK call; see `small_cholesky`), unrolled up to m =
    `_UNROLL`."""
    m = L.shape[-1]
    if m > _UNROLL:
        return _small_cholesky_solve_loop(L, b)
    z: list[Array] = []  # L z = b, row by row
    for i in range(m):
        s = b[..., i, :]
        for k in range(i):
            s = s - L[..., i, k, None] * z[k]
        z.append(s / L[..., i, i, None])
    x: dict[int, Array] = {}  # Lᵀ x = z, from the last row up
    for i in reversed(range(m)):
        s = z[i]
        for k in range(i + 1, m):
            s = s - L[..., k, i, None] * x[k]
        x[i] = s / L[..., i, i, None]
    return jnp.stack([x[i] for i in range(m)], axis=-2)


def _small_cholesky_loop(A: Array) -> Array:
    """`_small_cholesky` as a `fori_loop` over the columns, for m > `_UNROLL`."""
    m = A.shape[-1]
    rows = jnp.arange(m)

    def column(j, L):  # columns < j are done, the others still zero
        c = A[..., :, j] - jnp.sum(L * L[..., j, None, :], axis=-1)
        col = jnp.where(rows >= j, c / jnp.sqrt(c[..., j, None]), 0.0)
        return L.at[..., :, j].set(col)

    return jax.lax.fori_loop(0, m, column, jnp.zeros_like(A))


def _small_cholesky_solve_loop(L: Array, b: Array) -> Array:
    """`small_cholesky_solve` as `fori_loop`s over the rows, for m > `_UNROLL`."""
    m = L.shape[-1]

    def forward(i, z):  # L z = b: rows < i of z are done, the others still zero
        s = b[..., i, :] - jnp.sum(L[..., i, :, None] * z, axis=-2)
        return z.at[..., i, :].set(s / L[..., i, i, None])

    def back(k, x):  # Lᵀ x = z from the last row up: rows > i of x are done
        i = m - 1 - k
        s = z[..., i, :] - jnp.sum(L[..., :, i, None] * x, axis=-2)
        return x.at[..., i, :].set(s / L[..., i, i, None])

    z = jax.lax.fori_loop(0, m, forward, jnp.zeros_like(b))
    return jax.lax.fori_loop(0, m, back, jnp.zeros_like(b))


@jax.custom_jvp
def small_inverse_logdet(A: Float[Array, "*batch m m"]) -> tuple[Array, Array]:
    """(A⁻¹, log det A) per matrix of a stack of small symmetric positive-definite matrices,
    from `small_cholesky` (no LAPACK call). Its derivative is written by hand, as
    `spd_inverse_logdet`'s: d(A⁻¹) = −A⁻¹ dA A⁻¹ and d log det A = tr(A⁻¹ dA), batched
    matrix products, not derivatives of the column loops. Through those loops a Hessian of
    the m-output learning curve's action (m = 10, 1000 blocks) took 11.5 s, carrying m
    copies of every block per tangent. A matrix that is not positive definite gives NaN."""
    L = small_cholesky(A)
    eyes = jnp.broadcast_to(jnp.eye(A.shape[-1], dtype=A.dtype), A.shape)
    inverse = small_cholesky_solve(L, eyes)
    inverse = 0.5 * (inverse + jnp.swapaxes(inverse, -1, -2))
    logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
    return inverse, logdet


@small_inverse_logdet.defjvp
def _small_inverse_logdet_jvp(primals, tangents):
    (A,), (dA,) = primals, tangents
    inverse, logdet = small_inverse_logdet(A)
    return (inverse, logdet), (-inverse @ dA @ inverse, jnp.sum(inverse * dA, axis=(-2, -1)))


def scaled_inverses(
    lam: Float[Array, " n"], U: Float[Array, "m m"], s: Float[Array, ""], floor=None
) -> tuple[Array, Array, Array]:
    """(M_i⁻¹, log det M_i, ok) for the n blocks M_i = λ_i U + s I that share a symmetric
    m×m U: the kernel U ⊗ K of m outputs in K's eigenbasis. One eigendecomposition U = Q
    diag(u) Qᵀ serves every block, whose eigenvalues are d_ia = λ_i u_a + s: O(nm²), where a
    factorisation per block (`small_cholesky`) costs O(nm³) in column loops. Derivatives in
    λ, U and s are written by hand, d(M_i⁻¹) = −M_i⁻¹ dM_i M_i⁻¹ and d log det M_i =
    tr(M_i⁻¹ dM_i), matrix products that hold at U ∝ I, where Q's are undefined; of any order.

    Without `floor`, ok is all True and a block that is not positive definite has a NaN log
    det. With it (a scalar), a block with an eigenvalue below the floor or below its
    rounding, 4m·eps·max_a |d_ia|, or NaN, is flagged (ok False) and computed with those
    eigenvalues set to 1, so that it and its derivatives stay finite for a caller that
    drops it by ok. The decision and Q carry no derivatives. The eigendecomposition runs
    unbatched on CPU under vmap (`_eigh`), or in closed form for m ≤ 2 (`_small_eigh`)."""
    u, Q = _small_eigh(jax.lax.stop_gradient(U))
    d = lam[:, None] * u + s
    if floor is None:
        ok = jnp.ones(lam.shape, bool)
    else:
        e = jax.lax.stop_gradient(d)
        rounding = 4 * U.shape[-1] * jnp.finfo(e.dtype).eps * jnp.max(jnp.abs(e), axis=1)
        good = e >= jnp.maximum(jax.lax.stop_gradient(floor), rounding)[:, None]
        ok = jnp.all(good, axis=1)
        d = jnp.where(good, d, 1.0)
    inverse, logdet = _basis_inverses(lam, U, s, jax.lax.stop_gradient(Q), d)
    return inverse, logdet, ok


def _small_eigh(U: Array) -> tuple[Array, Array]:
    """`_eigh` of a symmetric m×m U, in closed form for m ≤ 2: with U = [[a, b], [b, c]],
    u = (a + c)/2 ∓ r, r = hypot((a − c)/2, b) (the one of smaller magnitude as det U over
    the other), and the eigenvectors at the angle
    θ = ½ atan2(2b, a − c) (θ = 0 at U ∝ I, where any basis is one). Under the mixture's
    vmap over draws LAPACK runs one sequential call per draw: 3.7 ms per 4096 2×2 draws
    against 0.7 ms in closed form (2-core CPU; stop 57). Values only: callers hold the
    result fixed."""
    m = U.shape[-1]
    if m == 1:
        return U[..., 0], jnp.ones_like(U)
    if m > 2:
        return _eigh(U)
    a, b, c = U[..., 0, 0], 0.5 * (U[..., 0, 1] + U[..., 1, 0]), U[..., 1, 1]
    mean, half = 0.5 * (a + c), 0.5 * (a - c)
    r = jnp.hypot(half, b)
    theta = 0.5 * jnp.arctan2(b, half)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    # The eigenvalue of larger magnitude is mean ± r; the other is det U over it, not
    # mean ∓ r, whose cancellation kept it only to eps·|U| (U = diag(0.9, 2·10⁻⁶), a
    # renormalised output without target power at σ² = 10⁻¹⁰: 10⁻¹⁰ relative, and the saddle
    # that divides by it 1.6·10⁻⁶ off; stop 59). det U = ac − b² keeps the digits that U's
    # entries hold; divided first (|a|, |b| ≤ |big|), it cannot overflow.
    big = mean + jnp.where(mean >= 0, r, -r)
    scale = jnp.where(big == 0, 1.0, big)
    other = (a / scale) * c - (b / scale) * b
    u = jnp.where((mean >= 0)[..., None], jnp.stack([other, big], -1), jnp.stack([big, other], -1))
    Q = jnp.stack([jnp.stack([-sin, cos], -1), jnp.stack([cos, sin], -1)], -2)
    return u, Q


@jax.custom_jvp
def _basis_inverses(lam, U, s, Q, d):
    """`scaled_inverses` from Q and the blocks' eigenvalues d (n×m); derivatives in λ, U, s
    only (the caller holds Q and d fixed)."""
    inverse = jnp.einsum("ab,ib,cb->iac", Q, 1 / d, Q)
    return inverse, jnp.sum(jnp.log(d), axis=1)


@_basis_inverses.defjvp
def _basis_inverses_jvp(primals, tangents):
    lam, U, s, Q, d = primals
    d_lam, d_U, d_s = tangents[:3]
    inverse, logdet = _basis_inverses(lam, U, s, Q, d)
    eye = jnp.eye(U.shape[-1], dtype=U.dtype)
    dM = d_lam[:, None, None] * U + lam[:, None, None] * d_U + d_s * eye
    return (inverse, logdet), (-inverse @ dM @ inverse, jnp.sum(inverse * dM, axis=(1, 2)))


# The prior's Cholesky factor in `shifted_covariance` is retried with this multiple of
# eps · tr(Q) on the diagonal where it fails (a singular Q). The most that rank-deficient
# kernels needed (linear of rank 2–32, with a constant mode, erf with duplicates, rank 1
# plus a constant; n = 64–2048, 3 seeds) was 1.8 eps · tr(Q): a margin of 56×
# (`benchmarks/singular_priors.py --part jitter`). Its effect is removed to first order
# (`_shifted_covariance`); uncorrected, it moved the F of a rank-32 deep linear FCN at n = 512
# by 7e-8 and K^(2) by 1.4e-9 of its largest entry.
_PRIOR_JITTER = 100.0


@_cpu_sequential
def _shifted_covariance(Q, delta):
    n = Q.shape[0]
    eye = jnp.eye(n, dtype=Q.dtype)
    V = jnp.linalg.cholesky(Q)
    singular = ~jnp.all(jnp.isfinite(V))
    eps = jnp.where(singular, _PRIOR_JITTER * jnp.finfo(Q.dtype).eps * jnp.trace(Q), 0.0)
    V = jax.lax.cond(singular, lambda: jnp.linalg.cholesky(Q + eps * eye), lambda: V)
    M = eye + V.T @ delta @ V
    L = jnp.linalg.cholesky(0.5 * (M + M.T))
    Z = jax.scipy.linalg.solve_triangular(L, V.T, lower=True).T  # V L⁻ᵀ
    K, logdet = Z @ Z.T, 2 * jnp.sum(jnp.log(jnp.diagonal(L)))

    def unjitter():
        # K and log det at Q, not Q + εI, to first order in ε (the derivative of
        # `shifted_covariance` with dQ = −εI): the error left is O(ε²).
        W = eye - delta @ K
        return K - eps * (W.T @ W), logdet + eps * jnp.trace(delta @ K @ delta - delta)

    return jax.lax.cond(singular, unjitter, lambda: (K, logdet))


@jax.custom_jvp
def shifted_covariance(
    Q: Float[Array, "n n"], delta: Float[Array, "n n"]
) -> tuple[Float[Array, "n n"], Float[Array, ""]]:
    """(K, log det(I + ΔQ)) for K = (Q⁻¹ + Δ)⁻¹ = Q (I + ΔQ)⁻¹, without Q⁻¹.

    A deeper layer's pre-kernel from its prior Q = Q^(l−1) and its precision shift Δ
    (SPEC §3). With V Vᵀ = Q (Cholesky) and M = I + VᵀΔV, K = V M⁻¹ Vᵀ and
    det M = det(I + ΔQ): Q may be singular (duplicate inputs, a linear layer seeing more
    points than dimensions), and K then lives on Q's range, where the KL of SPEC §3 is
    finite. Only where Q's Cholesky fails is ε = 100 eps · tr(Q) added to its diagonal, and
    K and the log det are then corrected back to Q to first order in ε. Q and Δ must be
    symmetric. Outside the domain (M not positive definite: Q⁻¹ + Δ is not) the
    result is NaN.

    Its derivative does not pass through V: with W = I − ΔK = (I + ΔQ)⁻¹ and
    B = ΔKΔ − Δ, dK = Wᵀ dQ W − K dΔ K and d log det(I + ΔQ) = ⟨K, dΔ⟩ − ⟨B, dQ⟩
    (matrix products only).
    """
    return _shifted_covariance(Q, delta)


@shifted_covariance.defjvp
def _shifted_covariance_jvp(primals, tangents):
    (Q, delta), (dQ, dd) = primals, tangents
    K, logdet = shifted_covariance(Q, delta)
    W = jnp.eye(Q.shape[0], dtype=Q.dtype) - delta @ K
    B = -W @ delta
    return (K, logdet), (W.T @ dQ @ W - K @ dd @ K, jnp.sum(K * dd) - jnp.sum(B * dQ))


def clip_spectrum(lam: Array) -> Array:
    """A PSD kernel's eigenvalues from `eigh`, with those within its rounding of zero
    (below 8·eps·λ_max, and negative ones) set to 0. Left at ~10⁻¹⁶ λ_max, a singular
    kernel's null directions acted as modes of the data once the targets were large or σ²
    small: a linear FCN's scale u came out 2·10⁷× too large (n = 64 > d = 4, targets ×10⁶)
    and its test error 10³× (σ² = 10⁻¹⁰), with `converged` True. Measured: the computed null
    eigenvalues of singular kernels are ≤ 2.1 eps·λ_max (linear with n = 1000, deep linear,
    ReLU on d = 1, duplicate inputs). A first level, n·eps·λ_max, also zeroed real ones
    (an erf kernel on d = 1), and the log evidence missed Σ log(1 + λ/σ²) over them:
    1.4·10⁻³ at σ² = 10⁻⁶ for n = 100, now 8.6·10⁻⁵ (stop 43)."""
    tol = 8 * jnp.finfo(lam.dtype).eps * jnp.max(lam, axis=-1, keepdims=True)
    return jnp.where(lam > tol, lam, 0.0)


@_cpu_sequential
def _eigh(A):
    w, V = jnp.linalg.eigh(A)
    return w, V


def principal_axes(Y: Float[Array, "n m"]) -> tuple[Array, Array]:
    """The targets in their principal axes: (YO, O), O orthogonal with YᵀY = O diag(↓) Oᵀ,
    held fixed (no derivatives; I where it is not finite). An m-output action is
    equivariant in the outputs (U*(YO) = Oᵀ U*(Y) O), so its m×m scale is solved for YO and
    rotated back. There an output without target power is an axis and U*'s eigenvalue along
    it (~σ or ~σ² at tiny σ²) a diagonal entry, kept to its own digits; in a rotated basis it
    is kept to eps·cond U* only (`fj.renormalise` at σ² = 10⁻¹⁰: 10⁻⁶ relative, flagged at
    10⁻¹²; stops 58–59). A column of YO within the rotation's rounding, 4m·eps‖Y‖, is set to
    zero in value (its derivatives stay): rounding-level targets along such an axis flagged
    three outputs' saddle at C = 3, σ² = 10⁻⁸ (stop 59)."""
    m = Y.shape[1]
    O = _eigh(jax.lax.stop_gradient(Y.T @ Y))[1][:, ::-1]
    O = jnp.where(jnp.all(jnp.isfinite(O)), O, jnp.eye(m, dtype=O.dtype))
    YO = Y @ O
    value = jax.lax.stop_gradient(YO)
    floor = 4 * m * jnp.finfo(YO.dtype).eps * jnp.sqrt(jnp.sum(value**2))
    rounding = jnp.sqrt(jnp.sum(value**2, axis=0)) <= floor
    return YO - jnp.where(rounding, value, 0.0), O


def from_principal_axes(A: Float[Array, "*batch q q"], O: Float[Array, "m m"]) -> Array:
    """A scale solved for targets YO (`principal_axes`) in the outputs' basis: (I ⊗ O) A
    (I ⊗ O)ᵀ, symmetrised, for a (stack of) q×q A over (block, output) pairs with index
    block·m + output (q = m: over the outputs; a PatchCNN's patch-major Pm×Pm scale)."""
    m = O.shape[0]
    R = jnp.kron(jnp.eye(A.shape[-1] // m, dtype=O.dtype), O)
    B = R @ A @ R.T
    return 0.5 * (B + jnp.swapaxes(B, -1, -2))


@jax.custom_jvp
def spd_sqrt(A: Float[Array, "*batch m m"]) -> Float[Array, "*batch m m"]:
    """The symmetric square root A^{1/2} of symmetric positive-definite matrices (a stack).

    From one eigendecomposition A = P diag(μ) Pᵀ per matrix, unbatched on CPU (`_eigh`),
    which sees A's symmetric part. Its derivative solves the Sylvester equation
    S dS + dS S = dA (dA symmetrised), as the m²×m² system (S ⊗ I + I ⊗ S) vec dS = vec dA
    by `small_cholesky`: finite where eigenvalues coincide (A ∝ I), where differentiating
    through `eigh` divides by μ_i − μ_j and gives NaN, free of LAPACK, and differentiable
    again (the rule calls `spd_sqrt` itself), so second derivatives go through it."""
    mu, P = _stacked_eigh(A)
    return (P * jnp.sqrt(mu)[..., None, :]) @ jnp.swapaxes(P, -1, -2)


def _stacked_eigh(A: Array) -> tuple[Array, Array]:
    flat = A.reshape((-1, *A.shape[-2:]))
    mu, P = jax.vmap(_eigh)(flat)
    return mu.reshape(A.shape[:-1]), P.reshape(A.shape)


@spd_sqrt.defjvp
def _spd_sqrt_jvp(primals, tangents):
    (A,), (dA,) = primals, tangents
    S = spd_sqrt(A)
    m = A.shape[-1]
    eye = jnp.eye(m, dtype=A.dtype)
    # (S ⊗ I + I ⊗ S)[(i, j), (k, l)] = S_ik δ_jl + δ_ik S_jl, for row-major vec.
    kron = (
        S[..., :, None, :, None] * eye[:, None, :]
        + eye[:, None, :, None] * S[..., None, :, None, :]
    )
    kron = kron.reshape((*A.shape[:-2], m * m, m * m))
    rhs = (0.5 * (dA + jnp.swapaxes(dA, -1, -2))).reshape((*A.shape[:-2], m * m, 1))
    dS = small_cholesky_solve(small_cholesky(kron), rhs)
    return S, dS.reshape(A.shape)


@jax.custom_jvp
def eigvalsh(A: Float[Array, "n n"]) -> Float[Array, " n"]:
    """Eigenvalues of a symmetric matrix, ascending; dλᵢ = vᵢᵀ dA vᵢ (distinct eigenvalues)."""
    return _eigh(A)[0]


@eigvalsh.defjvp
def _eigvalsh_jvp(primals, tangents):
    (A,), (dA,) = primals, tangents
    w, V = _eigh(A)
    return w, jnp.einsum("ji,jk,ki->i", V, dA, V)


# Functions of a PSD kernel K computed in its eigenbasis, (λ, V) = `kernel_spectrum(K)`.
# Their derivatives in K do not pass through the eigenvectors: a singular or nearly
# degenerate K (a linear FCN with n > d) has eigenvectors with derivatives of order
# 1/(λ_i − λ_j), which cancel only in exact arithmetic (the gradients of `renormalise`'s
# evidence and train error came out 3–900× off). Instead λ and V are held fixed, and each
# function adds its first-order change in K, written in the eigenbasis, where δK becomes
# A = VᵀδK V (`first_order_term`): for the resolvents R_g = (u_g K + sI)⁻¹,
# δR = −u R δK R, matrix products with no 1/(λ_i − λ_j). Derivatives in everything else (the
# scales, the targets, a matrix U, …) are plain automatic differentiation, mixed ones with K
# included; a second derivative in K raises (`_first_order_in`).


def kernel_spectrum(K: Float[Array, "n n"]) -> tuple[Float[Array, " n"], Float[Array, "n n"]]:
    """`clip_spectrum`'s eigenvalues λ and the eigenvectors V of a PSD kernel K, held fixed
    under differentiation: `first_order_term` carries K's derivatives."""
    lam, V = _eigh(jax.lax.stop_gradient(K))
    return clip_spectrum(lam), V


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def refuse_derivative(message: str, watched: Array, value: Array) -> Array:
    """`value`, unchanged, with a zero derivative; differentiating `watched` here raises
    `NotImplementedError(message)`. A guard for what is not differentiable: `value` should
    be something the protected computation uses, so that a linearised program does not prune
    the guard."""
    return value


def _refuse_derivative_jvp(message, primals, tangents):
    (_, value), (d_watched, _) = primals, tangents
    if not isinstance(d_watched, SymbolicZero):
        raise NotImplementedError(message)
    return value, jnp.zeros_like(value)


refuse_derivative.defjvp(_refuse_derivative_jvp, symbolic_zeros=True)

_SECOND_DERIVATIVE = (
    "second derivatives in a kernel computed in its eigenbasis (renormalise) are not "
    "implemented: differentiate once with respect to the kernel's hyper-parameters"
)


def _first_order_in(K: Array, V: Array, message: str = _SECOND_DERIVATIVE) -> Array:
    """V, through a guard: a second derivative in K would differentiate a first-order term's
    rule, where V is held fixed, and raises here (`message`). (The guard is on V, which the
    rule's tangent uses, so that it is not pruned from a linearised program.)"""
    return refuse_derivative(message, K, V)


def _zeros_of(form, K, V, args):
    shape = jax.eval_shape(form, K, *args)
    # Zeros with a data dependence on args, so that under vmap they are batched with them, as
    # the term's tangent is (unbatched zeros met a batched tangent inside a vmapped scan).
    zero = sum(jnp.where(False, jnp.sum(a), 0.0) for a in jax.tree.leaves(args))
    return jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype) + zero, shape)


@jax.custom_jvp
def _carrier(K: Array, V: Array) -> Array:
    """0 (n×n), with derivative VᵀdK V: a first-order change of K in its eigenbasis."""
    return jnp.zeros_like(K)


def _carrier_jvp(primals, tangents):
    (K, V), (dK, _) = primals, tangents
    if isinstance(dK, SymbolicZero):
        return jnp.zeros_like(K), jnp.zeros_like(K)
    V = _first_order_in(K, V)
    return jnp.zeros_like(K), V.T @ dK @ V


_carrier.defjvp(_carrier_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def first_order_term(form: Callable, K: Array, V: Array, *args: Any) -> Any:
    """The change of a function of K, computed on K's fixed `kernel_spectrum` (λ, V), to
    first order in K: 0 in value, with derivative form(VᵀdK V, *args). `form(A, *args)` must
    be linear in A. Added to a function evaluated on the fixed spectrum, it gives that
    function its derivative in K, and mixed derivatives in K and args (a Newton step's
    Jacobian in args differentiated in K, as an implicit adjoint needs) are right too.
    Nothing of `form` is evaluated unless K or args are differentiated. `form` is held as a
    static argument: it must close over no traced array (pass those in `args`)."""
    return _zeros_of(form, K, V, args)


def _first_order_term_jvp(form, primals, tangents):
    K, V, *args = primals
    dK, _, *dargs = tangents
    out = first_order_term(form, K, V, *args)
    terms = []
    if not isinstance(dK, SymbolicZero):
        V_fixed = _first_order_in(K, V)
        terms.append(form(V_fixed.T @ dK @ V_fixed, *args))
    if not all(isinstance(t, SymbolicZero) for t in dargs):
        # form(E, args) along dargs with E = 0 but E's own derivative VᵀdK V: written as
        # plain linear algebra in dargs, so that it transposes (reverse mode) and a later
        # derivative in K still finds E.
        dargs = [
            jnp.zeros_like(a) if isinstance(t, SymbolicZero) else t
            for a, t in zip(args, dargs, strict=True)
        ]
        E = _carrier(K, V)
        terms.append(jax.jvp(lambda *a: form(E, *a), tuple(args), tuple(dargs))[1])
    if not terms:
        return out, _zeros_of(form, K, V, args)
    return out, functools.reduce(lambda x, y: jax.tree.map(jnp.add, x, y), terms)


first_order_term.defjvp(_first_order_term_jvp, symbolic_zeros=True)


def _denominators(lam, u, s):
    return u[:, None] * lam + s  # (G, n): the eigenvalues of u_g K + sI


def resolvent_solve(K, y, u, s, lam, V) -> Float[Array, "G n"]:
    """Vᵀ R_g y, R_g = (u_g K + sI)⁻¹, for each scale u_g (u: (G,), y: (n,), s > 0): the
    solutions in the eigenbasis of K's `kernel_spectrum` (λ, V)."""
    den = _denominators(lam, u, s)
    x = V.T @ y / den

    def form(A, x, lam, u, den):  # δ(Vᵀ R y) = −u VᵀR δK R y
        return -u[:, None] * (_drop_null_block(A, lam) @ x.T).T / den

    return x + first_order_term(form, K, V, x, lam, u, den)


def resolvent_logdet(K, u, s, lam, V) -> Float[Array, " G"]:
    """log det(u_g K + sI) for each scale u_g, given K's `kernel_spectrum` (λ, V)."""
    den = _denominators(lam, u, s)

    def form(A, lam, u, den):  # δ log det = u tr(R δK)
        return u * (den**-1 @ jnp.diagonal(_drop_null_block(A, lam)))

    return jnp.sum(jnp.log(den), axis=1) + first_order_term(form, K, V, lam, u, den)


def _drop_null_block(A: Array, lam: Array) -> Array:
    """A tangent VᵀδK V without its block between modes that `clip_spectrum` set to 0: there
    it is rounding, and the resolvents divide it by s or s² (a depth-2 linear FCN's
    d log Z/dσ_w² at σ² = 10⁻⁸ came out −4.42 in reverse mode, −1.04 in forward mode, against
    −1.46 from differences: a bug hunt, stop 42)."""
    null = lam == 0
    return jnp.where(null[:, None] & null[None, :], 0.0, A)


def resolvent_pull(K, y, u, s, lam, V) -> Float[Array, "G 2"]:
    """For each scale u_g, with R = (u_g K + sI)⁻¹ and W = u_g K R: the data's pull
    g = ½(tr W − yᵀW R y) = u ∂_u[−log N(y; 0, uK + sI)] and its derivative in log u,
    ½(tr W(I − W) − yᵀW(I − 2W)R y), given K's `kernel_spectrum` (λ, V).

    Written as sums over the eigenvalues of positive or bounded terms: as n − s tr R and
    yᵀRy − s yᵀR²y, where targets outside K's span make both ~1/s, they lost digits at
    small s (u* of `renormalise` off by 2.5·10⁻⁴ at s = 10⁻¹², 1.6·10⁻² at 10⁻¹⁴). Their
    derivatives in K likewise: yᵀf(K)y changes by Σ y_ρ y_σ f^[1](λ_ρ, λ_σ) (VᵀδK V)_ρσ
    with the divided difference f^[1], written as rank-one forms whose terms stay bounded
    where λ_ρ = 0; the block between modes that `clip_spectrum` set to 0 is rounding
    divided by s² and is dropped."""
    den = _denominators(lam, u, s)
    w = u[:, None] * lam / den
    y2 = (V.T @ y) ** 2
    pull = 0.5 * (jnp.sum(w, axis=1) - y2 @ (w / den).T)
    curvature = 0.5 * (jnp.sum(w * (1 - w), axis=1) - y2 @ (w * (1 - 2 * w) / den).T)

    def form(A, yr, lam, u, s, den):
        A = _drop_null_block(A, lam)
        d = jnp.diagonal(A)

        def pair(a, b):
            return jnp.sum(a * (b @ A.T), axis=1)

        ul = u[:, None] * lam
        # f(x) = ux/A²: f^[1] = u(s² − u²xy)/(A_x² A_y²), with A = ux + s.
        c0, c1 = s * yr / den**2, ul * yr / den**2
        d_quad = u * (pair(c0, c0) - pair(c1, c1))
        # f(x) = ux(s − ux)/A³: f^[1] = u[(ux)²(uy)² − s ux uy (ux + uy) − 6s² ux uy
        # − s³(ux + uy) + s⁴]/(A_x³ A_y³).
        e0, e1, e2 = s**2 * yr / den**3, s * ul * yr / den**3, ul**2 * yr / den**3
        d_quad_c = u * (
            pair(e2, e2) - 2 * pair(e2, e1) - 6 * pair(e1, e1) - 2 * pair(e1, e0) + pair(e0, e0)
        )
        d_trace = u * s * ((1 / den**2) @ d)  # tr W: f′(x) = us/A²
        d_trace_c = u * s * (((s - ul) / den**3) @ d)  # tr W(I − W): f′(x) = us(s − ux)/A³
        return jnp.stack([0.5 * (d_trace - d_quad), 0.5 * (d_trace_c - d_quad_c)], axis=1)

    values = jnp.stack([pull, curvature], axis=1)
    return values + first_order_term(form, K, V, V.T @ y, lam, u, s, den)


def resolvent_likelihood_change(K, y, u, u_ref, s, lam, V) -> Float[Array, " G"]:
    """−2 log N(y; 0, u_g K + sI) + 2 log N(y; 0, u_ref K + sI) for each scale u_g:
    yᵀ(R(u_g) − R(u_ref))y + log det(R(u_ref)R(u_g)⁻¹), R(u) = (uK + sI)⁻¹, given K's
    `kernel_spectrum` (λ, V). As Σ_ρ y_ρ²λ_ρ(u_ref − u_g)/(A_ρ A′_ρ) + Σ_ρ log(A_ρ/A′_ρ)
    (A = u_g λ + s, A′ = u_ref λ + s), K's null modes drop out: in each likelihood apart they
    are ~1/s where the targets leave K's span, and the differences across u lost their digits.
    Derivatives in K: yᵀf(K)y with the divided difference
    f^[1] = (u − u_ref)(u u_ref xy − s²)/(A_x A_y A′_x A′_y) as two rank-one forms, and
    tr(δK (u/A − u_ref/A′)) = Σ_ρ δK_ρρ s(u − u_ref)/(A A′); the block between modes that
    `clip_spectrum` set to 0 (rounding, divided by s²) is dropped."""
    den = _denominators(lam, u, s)
    den_ref = u_ref * lam + s
    yr = V.T @ y
    du = u[:, None] - u_ref
    value = jnp.sum(-(yr**2) * lam * du / (den * den_ref) + jnp.log1p(lam * du / den_ref), axis=1)

    def form(A, yr, lam, u, u_ref, s, den, den_ref):
        A = _drop_null_block(A, lam)

        def pair(a, b):
            return jnp.sum(a * (b @ A.T), axis=1)

        p, q = yr * lam / (den * den_ref), yr / (den * den_ref)
        quad = (u - u_ref) * (u * u_ref * pair(p, p) - s**2 * pair(q, q))
        logdet = s * (u - u_ref) * ((1 / (den * den_ref)) @ jnp.diagonal(A))
        return quad + logdet

    return value + first_order_term(form, K, V, yr, lam, u, u_ref, s, den, den_ref)


def cross_components(B: Float[Array, "... n"], lam: Array, V: Array) -> Float[Array, "... n"]:
    """B V: the rows of B (a cross kernel K_*, or a stack of them) in K's eigenbasis
    (`kernel_spectrum`), with the components along K's null modes (λ = 0) that are within
    the product's rounding, |·| ≤ 8·eps·‖row‖, set to 0 in value; their derivatives are kept
    (along a change of the training inputs they are genuine). A cross kernel lies in K's
    span where K is rank-deficient (a linear FCN with n > d): those components are rounding,
    and divided by σ² they put 10⁻¹⁵/σ² into a GP's mean (10⁻³ at σ² = 10⁻¹²). Where a null
    mode is only clipped (its eigenvalue real but below `clip_spectrum`'s level), the cross
    kernel's component is real and stays. Measured: the rounding is ≤ 4.8 eps·‖row‖ on six
    rank-deficient kernels (linear with n = 60 … 1000 and anisotropic inputs, deep linear,
    ReLU on d = 1, duplicate inputs); an erf kernel on d = 1 has real components up to
    68 eps·‖row‖ on its clipped modes. A first floor, n·eps·‖row‖, dropped those and put
    6·10⁻¹³ into its GP mean at σ² = 0.01 (a bug hunt, stop 43)."""
    BV = B @ V
    floor = 8 * jnp.finfo(BV.dtype).eps * jnp.linalg.norm(BV, axis=-1, keepdims=True)
    rounding = (lam == 0) & (jnp.abs(BV) <= jax.lax.stop_gradient(floor))
    return BV - jax.lax.stop_gradient(jnp.where(rounding, BV, 0.0))


def resolvent_diagonal(K, BV, c, u, s, lam, V) -> Float[Array, " r"]:
    """diag(B F Bᵀ) for F = Σ_g c_g (u_g K + sI)⁻¹ (B: (r, n), c and u: (G,)), given K's
    `kernel_spectrum` (λ, V) and BV = B V (`cross_components`)."""
    den = _denominators(lam, u, s)

    def form(A, BV, c, u, den):
        # δF = −Σ_g c_g u_g R_g δK R_g: in the eigenbasis H ∘ A, H_ij = −Σ_g c_g u_g/(den_gi den_gj)
        H = -(den**-1).T @ ((c * u)[:, None] * den**-1)
        return jnp.sum((BV @ (H * A)) * BV, axis=1)

    return BV**2 @ (c @ den**-1) + first_order_term(form, K, V, BV, c, u, den)


@_cpu_sequential
def _dense_solve(A, b):
    return jnp.linalg.solve(A, b)


class DenseLU(lx.AbstractLinearSolver):
    """lineax solver: materialise the operator and solve by LU (LAPACK), vmap-safe on CPU.

    For the small dense systems of fls_jax (Newton steps and the implicit adjoint, of size
    S(S+1)/2). Operators must act on a single 1-d array. A matrix-free operator is
    materialised `columns` Jacobian-vector products at a time (`lax.map`), not all at once:
    each product of the one-layer EoS carries n×n kernel tangents, so building all
    S(S+1)/2 columns together multiplies them (an erf PatchCNN with S = 16 at n = 200: the
    compiled solve's temporaries are 592 MiB with all 136 columns at once, 44 MiB with 8).
    """

    columns: int = 8

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        if operator.in_size() != operator.out_size():
            raise ValueError("DenseLU needs a square operator")
        if isinstance(operator, lx.MatrixLinearOperator):
            return operator.as_matrix()
        struct = operator.in_structure()
        eye = jnp.eye(operator.in_size(), dtype=struct.dtype)
        # Linearised once, so that the batches share one evaluation of the primal.
        return jax.lax.map(lx.linearise(operator).mv, eye, batch_size=self.columns).T

    def compute(self, state, vector, options):
        del options
        return _dense_solve(state, vector), lx.RESULTS.successful, {}

    def transpose(self, state, options):
        del options
        return state.T, {}

    def conj(self, state, options):
        del options
        return state.conj(), {}

    def assume_full_rank(self):
        return True


class RelativeGMRES(lx.AbstractLinearSolver):
    """lineax's GMRES held to ‖A x − b‖₂ ≤ rtol ‖b‖₂, a tolerance on the norm.

    `lx.GMRES(rtol=…, atol=0)` scales the residual entry by entry, by rtol |b_i|, so a right
    side with an exact zero makes its convergence test 0/0 = NaN, which reads as converged:
    it then stops after one restart cycle, however far from the solution. The EoS' right
    sides have such zeros wherever an input coordinate is zero on every training point (the
    digits' blank corner pixels: the residual's rows for them are exactly zero); there a
    Newton direction came back with relative residual 0.23–0.98 and was reported solved.
    Here b is scaled to unit norm and GMRES given an absolute tolerance rtol instead: the
    same test on every entry, with no division. It also asks that the last restart cycle
    moved x by at most rtol (lineax's second test), on the scaled problem. Where b has no
    zero, lineax's entrywise test is the stricter one (each entry within rtol |b_i|), so a
    Newton step on this one may take fewer products than it did.

    **Arguments:** `rtol`, and lineax GMRES's `restart` and `max_steps` (restart cycles).
    """

    rtol: float
    restart: int = 20
    max_steps: int = 100

    def _gmres(self) -> lx.GMRES:
        return lx.GMRES(
            rtol=0.0,
            atol=self.rtol,
            norm=optx.two_norm,
            restart=self.restart,
            max_steps=self.max_steps,
        )

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        return self._gmres().init(operator, options)

    def compute(self, state, vector, options):
        scale = optx.two_norm(vector)
        # A right side with NaN or inf (an adjoint whose cotangent is NaN, e.g. through a
        # solve whose outputs overflowed) is solved as zero: lineax turns a NaN solution
        # into an error, which under vmap aborts every element of the batch for this one.
        # That element's derivative is NaN all the same, through its other terms (measured:
        # `tests/test_gradients.py`).
        finite = jnp.isfinite(scale)
        scale = jnp.where(finite & (scale > 0), scale, 1.0)
        unit = jax.tree.map(lambda v: jnp.where(finite, v / scale, 0.0), vector)
        x, result, stats = _sequential_gmres(self._gmres(), state, unit, options)
        return jax.tree.map(lambda v: jnp.where(finite, v * scale, 0.0), x), result, stats

    def transpose(self, state, options):
        return self._gmres().transpose(state, options)

    def conj(self, state, options):
        return self._gmres().conj(state, options)

    def assume_full_rank(self):
        return True


def _sequential_gmres(gmres: lx.GMRES, state, vector, options):
    """lineax GMRES's `compute`, run as a loop over the batch under `vmap` on CPU.

    Each restart cycle solves its small Hessenberg least-squares problem by a LAPACK QR
    (`lx.QR`), which `vmap` over widths turns into batched `geqrf`/`ormqr`/`trsm` calls:
    the kind that deadlocks jaxlib 0.10's CPU thread pool (module docstring). Looping keeps
    every call unbatched; the Krylov products are the same, one element at a time."""
    arrays, static = eqx.partition((state, vector, options), eqx.is_array)

    def run(arrays):
        s, v, o = eqx.combine(arrays, static)
        x, result, stats = gmres.compute(s, v, o)
        return x, result, stats

    return _cpu_sequential(run)(arrays)


class KrylovOrDense(lx.AbstractLinearSolver):
    """lineax solver: GMRES, and where it misses its tolerance, a dense LU (`DenseLU`).

    For the implicit adjoint of the one-hidden-layer EoS: GMRES needs a few tens of products
    with the transposed Jacobian where the dense path builds all S(S+1)/2 columns (measured
    on a linear PatchCNN at n = 512, S = 16: gradient / solve 1.5 instead of 2.7). Where GMRES
    fails (an ill-conditioned Jacobian) the operator is materialised and factorised, so the
    answer is never worse than `DenseLU`'s. The columns and their LU are computed in while
    loops whose trip count is zero where GMRES succeeded, so under `jax.vmap` (where a `cond`
    runs both branches) the fallback costs nothing unless some element of the batch needs it
    (`benchmarks/krylov_or_dense.py`).
    """

    krylov: lx.AbstractLinearSolver
    columns: int = 8

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        return self.krylov.init(operator, options)  # the linearised operator

    def compute(self, state, vector, options):
        x, result, stats = self.krylov.compute(state, vector, options)
        ok = result == lx.RESULTS.successful
        N, c = vector.size, self.columns
        blocks = -(-N // c)
        eye = jnp.eye(blocks * c, N, dtype=vector.dtype).reshape(blocks, c, N)

        def body(carry):
            i, cols = carry
            return i + 1, cols.at[i].set(jax.vmap(state.mv)(eye[i]))

        zero = jnp.zeros((blocks, c, N), vector.dtype)
        _, cols = jax.lax.while_loop(
            lambda carry: carry[0] < jnp.where(ok, 0, blocks), body, (jnp.array(0), zero)
        )

        def dense(carry):  # the LU too runs only where needed (a `cond` would not, under vmap)
            # t = 1 on the one trip; the dependence on the loop counter stops XLA from hoisting
            # the loop-invariant factorisation out of the loop, where it would always run.
            t = (carry[0] + 1).astype(vector.dtype)
            A = jnp.where(ok, jnp.eye(N, dtype=vector.dtype), cols.reshape(-1, N)[:N].T)
            return carry[0] + 1, _dense_solve(t * A, t * vector)

        _, x_dense = jax.lax.while_loop(
            lambda carry: carry[0] < jnp.where(ok, 0, 1), dense, (jnp.array(0), x)
        )
        return jnp.where(ok, x, x_dense), lx.RESULTS.successful, stats

    def transpose(self, state, options):
        return self.krylov.transpose(state, options)

    def conj(self, state, options):
        return self.krylov.conj(state, options)

    def assume_full_rank(self):
        return True


class _Lanczos(eqx.Module):
    V: Array  # the Krylov basis, one vector per row (rows past `k` are zero)
    alpha: Array  # the tridiagonal's diagonal
    beta: Array  # its off-diagonal: beta[i] couples vectors i and i + 1
    theta: Array  # the Ritz values after k steps (`_ritz_leading`)
    bound: Array  # their residual bounds
    k: Array  # steps taken
    done: Array


def _ritz(alpha: Array, beta: Array, k: Array) -> tuple[Array, Array]:
    """Ritz values (ascending) and their residual bounds |β_k s_k| after k steps, from the
    first k rows of the fixed-size tridiagonal: the rows past k are decoupled and put above
    the leading block's spectrum (Gershgorin), so the first k eigenvalues are its own."""
    m = alpha.shape[0]
    lead = jnp.arange(m) < k
    top = jnp.max(jnp.where(lead, jnp.abs(alpha), 0.0)) + 2 * jnp.max(beta) + 1.0
    a = jnp.where(lead, alpha, 2 * top)
    b = jnp.where(jnp.arange(m - 1) < k - 1, beta[:-1], 0.0)
    theta, S = _eigh(jnp.diag(a) + jnp.diag(b, 1) + jnp.diag(b, -1))
    last = jnp.take(S, jnp.maximum(k - 1, 0), axis=0)
    return theta, jnp.abs(beta[jnp.maximum(k - 1, 0)] * last)


# Leading blocks of the tridiagonal whose Ritz values an unbatched Lanczos step computes:
# the smallest that holds the k steps taken, else the whole `max_steps` (`_ritz_leading`).
_RITZ_BLOCKS = (64, 128)


def _ritz_leading(
    alpha: Array, beta: Array, k: Array, blocks: tuple[int, ...]
) -> tuple[Array, Array]:
    """`_ritz` from the smallest leading block of sizes `blocks` (or the whole) that holds
    the first k rows: the same Ritz values and bounds (the rows past k are decoupled either
    way), padded with +inf. The whole 200 × 200 one cost 1.3–1.4 ms a step on 2 CPU cores,
    against a Hessian-vector product's 0.2 ms at n = 20 and 2.8–2.9 ms at n = 128
    (`benchmarks/lanczos_step_cost.py`). Only the block chosen is decomposed, unless k is
    batched: under vmap `lax.switch` computes every block (1.56× the whole one's time with
    (64, 128)), so a vmapped Lanczos passes no blocks."""
    m = alpha.shape[0]
    sizes = sorted({min(b, m) for b in blocks} | {m})

    def block(b: int) -> Callable[[Array, Array, Array], tuple[Array, Array]]:
        def ritz(alpha: Array, beta: Array, k: Array) -> tuple[Array, Array]:
            theta, bound = _ritz(alpha[:b], beta[:b], k)
            pad = jnp.full(m - b, jnp.inf, alpha.dtype)
            return jnp.concatenate([theta, pad]), jnp.concatenate([bound, pad])

        return ritz

    if len(sizes) == 1:
        return _ritz(alpha, beta, k)
    which = jnp.searchsorted(jnp.asarray(sizes), k)  # the first block with b ≥ k
    return jax.lax.switch(which, [block(b) for b in sizes], alpha, beta, k)


def negative_ritz(theta: Array, bound: Array, k: Array, below: float, rtol: float):
    """(how many of the first k Ritz values lie below −`below` · max|θ|, whether the lowest
    one above +`below` · max|θ| has converged: its residual bound ≤ `rtol` · max|θ|, the
    index of that one, and max|θ| over the first k). Ritz values within ±`below` · max|θ|
    are flat directions (F flat to rounding): counted as non-negative, and not the ones that
    settle the count, since a cluster of them converges early while a negative eigenvalue
    further out may not have emerged yet."""
    lead = jnp.arange(theta.shape[0]) < k
    scale = jnp.max(jnp.where(lead, jnp.abs(theta), 0.0))
    count = jnp.sum(lead & (theta < -below * scale))
    first = jnp.sum(lead & (theta <= below * scale))
    next_bound = jnp.take(bound, jnp.minimum(first, theta.shape[0] - 1))
    return count, (first < k) & (next_bound <= rtol * scale), first, scale


def lanczos_lowest(
    matvec: Callable[[Array], Array],
    v0: Array,
    max_steps: int,
    rtol: float,
    below: float,
    blocks: tuple[int, ...] = _RITZ_BLOCKS,
) -> tuple[Array, Array, Array]:
    """Lanczos with full reorthogonalisation on a symmetric operator, from v0, until the
    lowest Ritz value above +`below` · max|θ| has a residual bound within `rtol` of the
    largest |Ritz value| (`negative_ritz`; or an invariant subspace is found, or
    `max_steps`): the count of negative Ritz values is then settled as far as Lanczos can
    tell. Returns the Ritz values (ascending; only the first k are meaningful, the rest may
    be +inf), their residual bounds and k, from the last step. Each Ritz value bounds the
    operator's eigenvalue of the same rank from above (θ_i ≥ λ_i, Cauchy interlacing), and
    an eigenvalue lies within its bound of each one. Each step's Ritz values come from the
    smallest leading block of the tridiagonal of sizes `blocks` that holds its steps
    (`_ritz_leading`; pass () under vmap). Stores max_steps + 1 vectors."""
    m, dtype = max_steps, v0.dtype
    V = jnp.zeros((m + 1, v0.shape[0]), dtype).at[0].set(v0 / jnp.linalg.norm(v0))

    def body(c: _Lanczos) -> _Lanczos:
        v = c.V[c.k]
        w = matvec(v)
        a = jnp.dot(v, w)
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            w = w - c.V.T @ (c.V @ w)
        b = jnp.linalg.norm(w)
        alpha, beta = c.alpha.at[c.k].set(a), c.beta.at[c.k].set(b)
        k = c.k + 1
        theta, bound = _ritz_leading(alpha, beta, k, blocks)
        _, settled, _, scale = negative_ritz(theta, bound, k, below, rtol)
        invariant = b <= jnp.finfo(dtype).eps * scale
        V = c.V.at[k].set(jnp.where(invariant, 0.0, w / jnp.where(invariant, 1.0, b)))
        return _Lanczos(V, alpha, beta, theta, bound, k, invariant | settled | (k >= m))

    zeros = jnp.zeros(m, dtype)
    init = _Lanczos(V, zeros, zeros, zeros, zeros, jnp.zeros((), int), jnp.zeros((), bool))
    out = jax.lax.while_loop(lambda c: ~c.done, body, init)
    return out.theta, out.bound, out.k


def _pack(M: Array) -> Array:
    """The upper triangle of a symmetric S×S matrix, row by row: S(S+1)/2 entries."""
    return M[np.triu_indices(M.shape[-1])]


def _unpack(v: Array, S: int) -> Array:
    """The symmetric S×S matrix whose upper triangle is `v` (`_pack`'s inverse), as one
    gather from `v` (a scatter, as `.at[].set`, and its derivatives compiled slower)."""
    return v[..., _unpack_index(S)]


@functools.cache
def _unpack_index(S: int) -> np.ndarray:
    """Entry (i, j) of an S×S matrix -> the index of (min(i, j), max(i, j)) in `_pack`'s order."""
    index = np.zeros((S, S), np.int32)
    rows, cols = np.triu_indices(S)
    index[rows, cols] = index[cols, rows] = np.arange(len(rows))
    return index
