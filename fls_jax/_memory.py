"""A guard against Linux's limit on a process's memory mappings.

Every program XLA compiles for the CPU is mapped into memory in about ten pieces. A process
that compiles thousands of them (a long session of solves at many shapes, a test suite) can
pass `vm.max_map_count` (65530 by default); the next mapping then fails and the process dies
with a segmentation fault, with no Python error (seen in CI at 5b08f9f: `benchmarks/RESULTS.md`,
stop 31). `guard_memory_maps`, called at the public entry points, drops JAX's compiled
programs once the process holds more than half the limit, with a warning: they are compiled
again (or read back from a persistent compilation cache) when next needed.
"""

import warnings

import jax
from jax.core import Tracer


# How many calls pass between two counts of the mappings (a count reads /proc/self/maps:
# ~1 ms per 10,000 mappings).
_EVERY = 16
_calls = 0


def _limit() -> int | None:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None  # not Linux: no such limit to guard


def memory_maps() -> int:
    """The number of this process's memory mappings (Linux)."""
    with open("/proc/self/maps", "rb") as f:
        return sum(1 for _ in f)


_LIMIT = _limit()


def guard_memory_maps(*args, every: int = _EVERY) -> bool:
    """Every `every`-th call (and never while JAX traces: any of `args` a tracer), clear JAX's
    caches if this process holds more than half of `vm.max_map_count` memory mappings.
    Returns whether it cleared them."""
    global _calls
    _calls += 1
    if _LIMIT is None or _calls % every:
        return False
    if any(isinstance(a, Tracer) for a in jax.tree.leaves(args)):
        return False
    count = memory_maps()
    if count <= _LIMIT // 2:
        return False
    warnings.warn(
        f"fls_jax: this process holds {count} memory mappings, over half of Linux's limit "
        f"vm.max_map_count = {_LIMIT} (mostly compiled programs); JAX's caches are cleared "
        "to keep it from crashing, and programs will be compiled again when needed",
        RuntimeWarning,
        stacklevel=3,
    )
    jax.clear_caches()
    return True
