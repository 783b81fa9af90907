"""Built-in teacher–student tasks (SPEC §4: the teacher direction gives Σ an alignment to report).

Inputs are standard Gaussian, x ~ N(0, I_d). Arrays are NumPy float64; the solver casts them.
"""

from typing import NamedTuple

import numpy as np
from scipy.special import erf


class Task(NamedTuple):
    """A regression task with a known teacher.

    **Fields:** `X` (n×d), `Y` (n×1), `X_test` (n*×d), `Y_test` (n*×1), `teacher` (the unit
    teacher filter w*, of the patch size S, or d for a fully connected teacher; for a
    multi-index teacher the d×k matrix of its orthonormal directions).
    """

    X: np.ndarray
    Y: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray
    teacher: np.ndarray


def _inputs(rng, n, n_test, d):
    return rng.standard_normal((n, d)), rng.standard_normal((n_test, d))


def linear_patch_teacher(
    n: int = 64, n_test: int = 1000, patch_size: int = 8, patches: int = 4, seed: int = 0
) -> Task:
    """y = (1/√P) Σ_i w*·x_i: a linear CNN teacher with one unit filter shared by P patches.

    The default task of the command line: a linear PatchCNN student of the same patch size
    can represent it exactly, and its learned Σ should align with w*.
    """
    rng = np.random.default_rng(seed)
    d = patch_size * patches
    X, X_test = _inputs(rng, n, n_test, d)
    w = rng.standard_normal(patch_size)
    w /= np.linalg.norm(w)

    def f(x):
        return (x.reshape(len(x), patches, patch_size) @ w).sum(1, keepdims=True) / np.sqrt(patches)

    return Task(X, f(X), X_test, f(X_test), w)


def single_index_teacher(
    n: int = 64, n_test: int = 1000, d: int = 16, scale: float = 2.0, seed: int = 0
) -> Task:
    """y = erf(scale · w*·x) with a unit w* ∈ R^d: a single-index teacher for FCN students."""
    rng = np.random.default_rng(seed)
    X, X_test = _inputs(rng, n, n_test, d)
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    return Task(X, erf(scale * X @ w)[:, None], X_test, erf(scale * X_test @ w)[:, None], w)


def multi_index_teacher(
    n: int = 64, n_test: int = 1000, d: int = 16, k: int = 2, scale: float = 2.0, seed: int = 0
) -> Task:
    """y = (1/√k) Σ_i erf(scale · w_i·x) with orthonormal w_1 … w_k ∈ R^d: a k-index teacher
    for FCN students, whose Σ learns k directions. `teacher` is the d×k matrix (w_1 … w_k)."""
    if not 1 <= k <= d:
        raise ValueError(f"need 1 ≤ k ≤ d, got k = {k}, d = {d}")
    rng = np.random.default_rng(seed)
    X, X_test = _inputs(rng, n, n_test, d)
    W = np.linalg.qr(rng.standard_normal((d, k)))[0]

    def f(x):
        return erf(scale * x @ W).sum(1, keepdims=True) / np.sqrt(k)

    return Task(X, f(X), X_test, f(X_test), W)


def deep_erf_teacher(
    n: int = 128, n_test: int = 1000, d: int = 32, depth: int = 2, sigma_w2: float = 2.0, seed=0
) -> Task:
    """A width-1 erf network of `depth` hidden layers as the teacher (the setting of the
    authors' deep-network experiment): h¹ = √σ_w² w*·x, h^(l) = √σ_w² erf(h^(l−1)),
    y = erf(h^(L)), with a unit w* ∈ R^d (so each hⁱ has the variance a prior draw of
    width-1 weights would give it)."""
    rng = np.random.default_rng(seed)
    X, X_test = _inputs(rng, n, n_test, d)
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)

    def f(x):
        h = np.sqrt(sigma_w2) * (x @ w)
        for _ in range(depth - 1):
            h = np.sqrt(sigma_w2) * erf(h)
        return erf(h)[:, None]

    return Task(X, f(X), X_test, f(X_test), w)
