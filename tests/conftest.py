"""Test configuration: float64 everywhere (SPEC: the EoS need it at small σ²), shared data.

The tests' problems are small, so XLA's compilation, not their arithmetic, is most of their
time: LLVM optimisation level 0 compiles a default `solve` (n = 32) in 5.2 s instead of 7.8 s
on the 2-core development machine, with the same run time (0.05 s). It changes code generation
only, not the operations; a user's own runs keep XLA's defaults. For the same reason the tests
call `fj.solve` and `fj.predict` directly, whose compiled programs are shared by every module,
and run in two pytest-xdist workers (`pyproject.toml`)."""

import os


os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
).strip()

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fls_jax as fj  # noqa: E402


@pytest.fixture(scope="session")
def patch_task():
    """A small linear-teacher task for PatchCNN (n = 32, S = 4, P = 3)."""
    return fj.datasets.linear_patch_teacher(n=32, n_test=50, patch_size=4, patches=3, seed=1)


@pytest.fixture(scope="session")
def fcn_task():
    """A small single-index erf task for FCN (n = 32, d = 6)."""
    return fj.datasets.single_index_teacher(n=32, n_test=50, d=6, seed=2)


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(1234)
