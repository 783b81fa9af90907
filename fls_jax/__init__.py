"""fls_jax: the Equations of State of finite-width neural networks, in JAX (see SPEC §1–4)."""

from . import datasets as datasets, sampling as sampling
from ._activation import (
    AbstractActivation as AbstractActivation,
    Erf as Erf,
    Linear as Linear,
    Quadrature as Quadrature,
    ReLU as ReLU,
)
from ._anderson import AbstractPreconditioner as AbstractPreconditioner, Anderson as Anderson
from ._descent import FreeEnergyBFGS as FreeEnergyBFGS
from ._free_energy import (
    eos_residual as eos_residual,
    free_energy as free_energy,
    gp_negative_log_evidence as gp_negative_log_evidence,
)
from ._learning_curve import LearningCurve as LearningCurve, learning_curve as learning_curve
from ._linalg import (
    DenseLU as DenseLU,
    KrylovOrDense as KrylovOrDense,
    RelativeGMRES as RelativeGMRES,
)
from ._network import (
    FCN as FCN,
    AbstractNetwork as AbstractNetwork,
    PatchCNN as PatchCNN,
    inducing_points as inducing_points,
)
from ._predict import Prediction as Prediction, predict as predict, sweep as sweep
from ._renorm import Renormalised as Renormalised, renormalise as renormalise
from ._solve import DampedNewton as DampedNewton, Solution as Solution, solve as solve
from ._trace import Trace as Trace, hessian_index as hessian_index, trace as trace
from ._tune import TuneResult as TuneResult, tune as tune


__version__ = "0.1.0"
