"""Built-in tasks: teacher–student tasks (SPEC §4: the teacher direction gives Σ an alignment
to report), with standard Gaussian inputs x ~ N(0, I_d), and one real data set, scikit-learn's
handwritten digits (`digits`, the ``[data]`` extra). Arrays are NumPy float64; the solver casts
them.
"""

from typing import Literal, NamedTuple

import numpy as np
from scipy.special import erf

from ._solve import _check_int


class Task(NamedTuple):
    """A regression task.

    **Fields:** `X` (n×d), `Y` (n×m; m = 1 but for one-hot digits), `X_test` (n*×d), `Y_test`
    (n*×m), `teacher` (the unit teacher filter w*, of the patch size S, or d for a fully
    connected teacher; for a multi-index teacher the d×k matrix of its orthonormal directions;
    ``None`` for real data).
    """

    X: np.ndarray
    Y: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray
    teacher: np.ndarray | None


def _rng(seed) -> np.random.Generator:
    """NumPy's generator for `seed`, an integer ≥ 0 (named where it is not)."""
    return np.random.default_rng(_check_int("seed", seed, 0))


def _check_positive(name: str, value) -> float:
    """`value` as a float, or a ValueError unless it is a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _inputs(rng, n, n_test, d):
    for name, value in (("n", n), ("n_test", n_test), ("d", d)):
        _check_int(name, value, 0 if name == "n_test" else 1)
    return rng.standard_normal((n, d)), rng.standard_normal((n_test, d))


def linear_patch_teacher(
    n: int = 64, n_test: int = 1000, patch_size: int = 8, patches: int = 4, seed: int = 0
) -> Task:
    """y = (1/√P) Σ_i w*·x_i: a linear CNN teacher with one unit filter shared by P patches.

    The default task of the command line: a linear PatchCNN student of the same patch size
    can represent it exactly, and its learned Σ should align with w*.
    """
    _check_int("patch_size", patch_size, 1)
    _check_int("patches", patches, 1)
    rng = _rng(seed)
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
    scale = _check_positive("scale", scale)
    rng = _rng(seed)
    X, X_test = _inputs(rng, n, n_test, d)
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    return Task(X, erf(scale * X @ w)[:, None], X_test, erf(scale * X_test @ w)[:, None], w)


def multi_index_teacher(
    n: int = 64, n_test: int = 1000, d: int = 16, k: int = 2, scale: float = 2.0, seed: int = 0
) -> Task:
    """y = (1/√k) Σ_i erf(scale · w_i·x) with orthonormal w_1 … w_k ∈ R^d: a k-index teacher
    for FCN students, whose Σ learns k directions. `teacher` is the d×k matrix (w_1 … w_k)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise ValueError(f"k must be an integer, 1 ≤ k ≤ d, got {k!r}")
    scale = _check_positive("scale", scale)
    if not 1 <= k <= d:
        raise ValueError(f"need 1 ≤ k ≤ d, got k = {k}, d = {d}")
    rng = _rng(seed)
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
    _check_int("depth", depth, 1)
    sigma_w2 = _check_positive("sigma_w2", sigma_w2)
    rng = _rng(seed)
    X, X_test = _inputs(rng, n, n_test, d)
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)

    def f(x):
        h = np.sqrt(sigma_w2) * (x @ w)
        for _ in range(depth - 1):
            h = np.sqrt(sigma_w2) * erf(h)
        return erf(h)[:, None]

    return Task(X, f(X), X_test, f(X_test), w)


def digits(
    n: int = 256,
    n_test: int = 512,
    labels: Literal["parity", "onehot"] | tuple[int, int] = "parity",
    patch_side: int = 4,
    seed: int = 0,
) -> Task:
    """scikit-learn's handwritten digits (1797 images of 8×8 pixels, shipped with it; no
    download), for PatchCNN and FCN students. Needs the ``[data]`` extra.

    Inputs: each image cut into non-overlapping `patch_side`×`patch_side` patches, laid out
    patch after patch (row-major within each), so a `PatchCNN(patch_size=patch_side²)` sees
    (8/patch_side)² patches; an FCN sees the same 64 pixels. Pixels are centred by their mean
    over the training images and divided by one global scale so that ‖x‖²/d averages 1 over
    them, the scale of the Gaussian tasks (per-pixel scaling would blow up the border pixels,
    which are almost always 0).

    Targets (`labels`): ``"parity"``, +1 for an even digit and −1 for an odd one (one output);
    ``"onehot"``, ten outputs, 1 − 1/10 for the digit's own and −1/10 for the others; or a pair
    ``(a, b)`` of digits, +1 for a and −1 for b, keeping only those two (about 360 images).

    The n training and `n_test` test images are drawn without replacement by `seed`.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "fls_jax.datasets.digits needs scikit-learn: pip install 'fls_jax[data]'"
        ) from e
    if patch_side not in (1, 2, 4, 8):
        raise ValueError(f"patch_side must divide 8 (1, 2, 4 or 8), got {patch_side}")
    pixels, digit = load_digits(return_X_y=True)
    images = np.asarray(pixels, np.float64).reshape(-1, 8, 8)
    digit = np.asarray(digit)
    first = -1  # the digit that gets +1 when `labels` is a pair
    if isinstance(labels, str):
        if labels not in ("parity", "onehot"):
            raise ValueError(
                f"labels must be 'parity', 'onehot' or a pair of digits, got {labels!r}"
            )
        keep = np.ones(len(digit), bool)
    else:
        first, second = (int(v) for v in labels)
        if first == second or not {first, second} <= set(range(10)):
            raise ValueError(f"labels must be two different digits 0-9, got {labels!r}")
        keep = (digit == first) | (digit == second)
    images, digit = images[keep], digit[keep]
    # Pixels are centred over the training images: one image would be centred to zero.
    if n < 2 or n_test < 0 or n + n_test > len(digit):
        raise ValueError(
            f"need 2 <= n and n + n_test <= {len(digit)} images for labels={labels!r}, "
            f"got n = {n}, n_test = {n_test}"
        )
    order = _rng(seed).permutation(len(digit))[: n + n_test]
    images, digit = images[order], digit[order]
    q = 8 // patch_side  # patches per side
    X = images.reshape(-1, q, patch_side, q, patch_side).transpose(0, 1, 3, 2, 4).reshape(-1, 64)
    mean = X[:n].mean(0)
    X = X - mean
    X = X / np.sqrt(np.mean(np.sum(X[:n] ** 2, 1)) / 64)
    if labels == "parity":
        Y = np.where(digit % 2 == 0, 1.0, -1.0)[:, None]
    elif labels == "onehot":
        Y = np.eye(10)[digit] - 0.1
    else:
        Y = np.where(digit == first, 1.0, -1.0)[:, None]
    return Task(X[:n], Y[:n], X[n:], Y[n:], None)
