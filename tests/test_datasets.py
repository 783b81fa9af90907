"""The real-data task: scikit-learn's digits, laid out in patches, standardised and labelled."""

import numpy as np
import pytest
from sklearn.datasets import load_digits  # the [test] extra installs scikit-learn

import fls_jax as fj


def _reference():
    pixels, digit = load_digits(return_X_y=True)
    return np.asarray(pixels, float).reshape(-1, 8, 8), np.asarray(digit)


def _by_image(images, *columns):
    """Rows sorted by their pixels, so that two orderings of the same images compare."""
    flat = images.reshape(len(images), -1)
    order = np.lexsort(flat.T[::-1])
    return (flat[order], *(c[order] for c in columns))


def test_digits_are_the_images_in_patches_standardised_with_their_labels():
    """All 1797 images as training points: undoing the documented standardisation and patch
    layout (written out here block by block) gives back scikit-learn's images, each with its
    own parity; one-hot targets of the same draw agree with it."""
    images, digit = _reference()
    t = fj.datasets.digits(n=len(digit), n_test=0, labels="parity", patch_side=4)
    assert t.X.shape == (1797, 64) and t.Y.shape == (1797, 1) and t.teacher is None
    mu = images.mean(0)
    scale = np.sqrt(np.mean(np.sum((images - mu) ** 2, axis=(1, 2))) / 64)
    np.testing.assert_allclose(np.mean(np.sum(t.X**2, 1)) / 64, 1.0, rtol=1e-12)
    back = np.empty_like(images)
    for p, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        block = t.X[:, 16 * p : 16 * (p + 1)].reshape(-1, 4, 4)
        back[:, r : r + 4, c : c + 4] = block * scale + mu[r : r + 4, c : c + 4]
    back = np.round(back, 9)  # pixel values are integers 0–16
    got, got_y = _by_image(back, t.Y[:, 0])
    want, want_digit = _by_image(images, digit)
    np.testing.assert_allclose(got, want, atol=1e-8)
    np.testing.assert_array_equal(got_y, np.where(want_digit % 2 == 0, 1.0, -1.0))

    onehot = fj.datasets.digits(n=len(digit), n_test=0, labels="onehot", patch_side=4)
    np.testing.assert_array_equal(onehot.X, t.X)  # the same draw
    np.testing.assert_allclose(onehot.Y.sum(1), 0.0, atol=1e-12)
    assert set(np.round(onehot.Y.ravel(), 12)) == {0.9, -0.1}
    np.testing.assert_array_equal(np.where(onehot.Y.argmax(1) % 2 == 0, 1.0, -1.0), t.Y[:, 0])


def test_digits_pairs_splits_and_errors():
    _, digit = _reference()
    t = fj.datasets.digits(n=300, n_test=60, labels=(0, 1), patch_side=8, seed=3)
    y = np.concatenate([t.Y, t.Y_test])[:, 0]
    assert (np.sum(y == 1), np.sum(y == -1)) == (np.sum(digit == 0), np.sum(digit == 1))
    # training and test images are disjoint, and the seed fixes the draw
    a = fj.datasets.digits(n=100, n_test=50, seed=1)
    b = fj.datasets.digits(n=100, n_test=50, seed=1)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    assert not (set(map(bytes, a.X)) & set(map(bytes, a.X_test)))
    np.testing.assert_allclose(a.X.mean(0), 0.0, atol=1e-12)  # centred on the training images
    with pytest.raises(ValueError, match="patch_side"):
        fj.datasets.digits(patch_side=3)
    with pytest.raises(ValueError, match="n \\+ n_test"):
        fj.datasets.digits(n=300, n_test=61, labels=(0, 1))
    with pytest.raises(ValueError, match="labels"):
        fj.datasets.digits(labels="odd")
    with pytest.raises(ValueError, match="two different digits"):
        fj.datasets.digits(labels=(3, 3))
    with pytest.raises(ValueError, match="2 <= n"):
        fj.datasets.digits(n=1)  # one image is centred to zero: its scale would be 0/0


@pytest.mark.parametrize(
    "make,kwargs",
    [
        (fj.datasets.linear_patch_teacher, dict(patches=0)),
        (fj.datasets.linear_patch_teacher, dict(patch_size=0)),
        (fj.datasets.single_index_teacher, dict(d=0)),
        (fj.datasets.single_index_teacher, dict(n=0)),
        (fj.datasets.single_index_teacher, dict(n_test=-1)),
        (fj.datasets.deep_erf_teacher, dict(depth=0)),
        (fj.datasets.multi_index_teacher, dict(n=2.5)),
        (fj.datasets.multi_index_teacher, dict(k=2.5)),  # Python's "cannot be interpreted…"
        (fj.datasets.linear_patch_teacher, dict(seed=-1)),  # NumPy's "expected non-negative…"
        (fj.datasets.digits, dict(seed=-1)),
        (fj.datasets.single_index_teacher, dict(scale=np.nan)),  # all-NaN targets
        (fj.datasets.multi_index_teacher, dict(scale=-1.0)),
        (fj.datasets.deep_erf_teacher, dict(sigma_w2=-1.0)),  # NaN targets (√−1)
    ],
)
def test_teachers_refuse_sizes_they_cannot_have(make, kwargs):
    # These returned empty arrays or NaN targets (patches = 0: 0/√0), which surfaced later as
    # "Y contains NaN or inf", or failed in NumPy without naming the argument.
    name = next(iter(kwargs))
    kind = "a finite number > 0" if name in ("scale", "sigma_w2") else "an integer"
    with pytest.raises(ValueError, match=f"{name} must be {kind}"):
        make(**kwargs)
