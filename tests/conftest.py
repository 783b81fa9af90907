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

import tempfile
import warnings

import jax


jax.config.update("jax_enable_x64", True)
# XLA's compiled programs are shared between the pytest-xdist workers (and later runs) through
# JAX's persistent compilation cache: many tests compile the same `solve` and `predict`
# programs, and reading one back costs a fraction of compiling it on 2 cores. The folder
# (FLS_JAX_TEST_XLA_CACHE, else fls_jax-tests-xla-cache in the temporary folder) only grows;
# delete it at will.
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("FLS_JAX_TEST_XLA_CACHE")
    or os.path.join(tempfile.gettempdir(), "fls_jax-tests-xla-cache"),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax import _memory  # noqa: E402


# The longest files first (`--no-loadscope-reorder` in `pyproject.toml` keeps this order): each
# file runs whole on one pytest-xdist worker (`--dist loadfile`), and one started last leaves the
# other worker idle until it ends. Measured cold, in worker-seconds of the default run at stop 54
# (`benchmarks/RESULTS.md`); files not named follow in their collection order.
_LONGEST_FIRST = (
    "test_renorm_matrix.py",
    "test_solve.py",
    "test_renorm.py",
    "test_learning_curve.py",
    "test_deep.py",
    "test_gradients.py",
    "test_weight_mean.py",
    "test_sampling.py",
    "test_sharding.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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


@pytest.fixture(autouse=True)
def _bounded_compiled_programs():
    """Drop JAX's compiled programs when this process nears Linux's memory-map limit.

    Every program XLA compiles for the CPU is mapped into memory in about ten pieces, and a
    pytest-xdist worker compiles thousands of them over the suite. Past `vm.max_map_count`
    (65530 by default) the next mapping fails and the worker dies with a segmentation fault;
    CI saw that on its last test at 5b08f9f, with the maps growing by ~2500 a minute per worker.
    Clearing the caches past half the limit frees those maps, at the price of recompiling the
    programs the tests share, once or twice per worker (`fls_jax._memory`, which the entry
    points also call every 16 calls)."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # expected here, once or twice
        _memory.guard_memory_maps(every=1)
