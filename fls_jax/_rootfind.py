"""What fls_jax's own optimistix root finders share: the stopping rule on the EoS residual."""

from typing import Any

import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array


def _fro(x) -> Array:
    """Frobenius norm of an array or a pytree of arrays."""
    return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(x)))


def _where(cond, a, b):
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


class _AbstractResidualRootFinder(optx.AbstractRootFinder):
    """A root finder whose state carries `f_norm` (‖R‖_F at the iterate) and `result`: it
    stops when ‖R(y)‖_F ≤ atol + rtol ‖y‖_F, or as soon as a step has failed."""

    rtol: float
    atol: float
    norm: Any = optx.two_norm

    def terminate(self, fn, y, args, options, state, tags):
        del fn, args, options, tags
        small = state.f_norm <= self.atol + self.rtol * _fro(y)
        failed = state.result != optx.RESULTS.successful
        return small | failed, state.result

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return y, aux, {}
