"""fls_jax: the Equations of State of finite-width neural networks, in JAX (see SPEC §1–4)."""

import os as _os


# XLA:CPU's concurrency-optimised scheduler deadlocks (hangs idle) on the vmapped solve for
# some shapes (seen with jax 0.10.2: PatchCNN S = 16, P = 8). XLA reads XLA_FLAGS when the
# backend starts, so this takes effect if fls_jax is imported before the first computation.
# A user's own setting of the flag wins.
_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
if _FLAG not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = f"{_os.environ.get('XLA_FLAGS', '')} {_FLAG}=false".strip()

from . import datasets as datasets  # noqa: E402
from ._activation import (  # noqa: E402
    AbstractActivation as AbstractActivation,
    Erf as Erf,
    Linear as Linear,
    Quadrature as Quadrature,
    ReLU as ReLU,
)
from ._free_energy import eos_residual as eos_residual, free_energy as free_energy  # noqa: E402
from ._network import FCN as FCN, AbstractNetwork as AbstractNetwork, PatchCNN as PatchCNN  # noqa: E402
from ._predict import Prediction as Prediction, predict as predict, sweep as sweep  # noqa: E402
from ._solve import DampedNewton as DampedNewton, Solution as Solution, solve as solve  # noqa: E402


__version__ = "0.1.0"
