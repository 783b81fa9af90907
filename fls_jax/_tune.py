"""Gradient-based hyper-parameter tuning through the solved Equations of State (SPEC §3–4).

The predicted validation error and the free energy F (a variational negative log-evidence)
are differentiable functions of the hyper-parameters through the EoS fixed point: `solve`
differentiates its final root find implicitly, so one gradient costs about one extra Newton
system, not a backward pass through the iterations. `tune` runs an optax optimiser on them.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._network import AbstractNetwork
from ._predict import _validate_test, predict
from ._solve import Solution, _state_precision, _validate, solve


TUNABLE = ("sigma_w2", "sigma_a2", "noise", "width")


class TuneResult(NamedTuple):
    """What [`fls_jax.tune`][] found.

    **Fields:**

    - `network`: the network at the best objective value seen (with a converged solve).
    - `solution`: the solve at that network.
    - `history`: a dict of NumPy arrays, one entry per optimiser step: ``"step"``,
      ``"objective"``, ``"grad_norm"`` (of the unconstrained parameters), ``"converged"``, and
      one array per tuned hyper-parameter (its value at each step: shape (steps,), or
      (steps, L) for a per-layer σ_w²).
    - `converged`: whether every step's solve converged, with a finite objective and
      gradient (the run stops at the first step where not).
    """

    network: AbstractNetwork
    solution: Solution
    history: dict[str, np.ndarray]
    converged: bool

    def plot(self, path: str | None = None):
        """Objective and hyper-parameters against the step (matplotlib); saved if `path`."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [k for k in self.history if k in TUNABLE]
        fig, axes = plt.subplots(1, 1 + len(names), figsize=(3.6 * (1 + len(names)), 3.2))
        axes = np.atleast_1d(axes)
        axes[0].plot(self.history["step"], self.history["objective"])
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("objective")
        for ax, name in zip(axes[1:], names, strict=True):
            ax.plot(self.history["step"], self.history[name])
            ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_ylabel(name)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def _to_unconstrained(value: np.ndarray, bound: tuple[float, float] | None) -> np.ndarray:
    if bound is None:
        return np.log(value)
    lo, hi = np.log(bound[0]), np.log(bound[1])
    t = (np.log(value) - lo) / (hi - lo)
    return np.log(t / (1 - t))


def _to_constrained(z: Array, bound: tuple[float, float] | None) -> Array:
    """Positive by construction: exp(z), or exp of a sigmoid-squashed log inside (lo, hi)."""
    if bound is None:
        return jnp.exp(z)
    lo, hi = np.log(bound[0]), np.log(bound[1])
    return jnp.exp(lo + (hi - lo) * jax.nn.sigmoid(z))


def _with_params(network, names, shapes, bounds, z):
    """The network at unconstrained parameters z: each name's values, flattened, in turn
    (one for a scalar, L for a per-layer σ_w² of shape (L,))."""
    values, start = [], 0
    for k, shape in zip(names, shapes, strict=True):
        size = int(np.prod(shape))
        values.append(_to_constrained(z[start : start + size], bounds.get(k)).reshape(shape))
        start += size
    return eqx.tree_at(lambda m: [getattr(m, k) for k in names], network, values)


def _free_energy_objective(sol: Solution, val) -> Array:
    del val
    return sol.free_energy


def _validation_objective(sol: Solution, val) -> Array:
    return predict(sol, *val).test_error


class _UserObjective(eqx.Module):
    fn: Callable = eqx.field(static=True)

    def __call__(self, sol: Solution, val) -> Array:
        del val
        out = self.fn(sol)
        if jnp.shape(out) != ():
            raise ValueError(f"objective must return a scalar, got shape {jnp.shape(out)}")
        return out


def _objective_fn(objective) -> Callable[[Solution, Any], Array]:
    if callable(objective):
        return _UserObjective(objective)
    if objective == "free_energy":
        return _free_energy_objective
    if objective == "validation_error":
        return _validation_objective
    raise ValueError(
        "objective must be 'validation_error', 'free_energy' or a callable(solution) -> scalar, "
        f"got {objective!r}"
    )


@eqx.filter_jit
def _value_and_grad(
    z, network, names, shapes, bounds, X, Y, objective, val, precision0, solve_kwargs
):
    def f(z):
        net = _with_params(network, names, shapes, bounds, z)
        sol = solve(net, X, Y, precision0=precision0, **solve_kwargs)
        return objective(sol, val), sol

    (value, sol), grad = jax.value_and_grad(f, has_aux=True)(z)
    return value, grad, sol


def tune(
    network: AbstractNetwork,
    X: Float[ArrayLike, "n d"],
    Y: Float[ArrayLike, "n m"] | Float[ArrayLike, " n"],
    *,
    params: str | Sequence[str] = ("sigma_w2", "noise"),
    objective: str | Callable[[Solution], Array] = "validation_error",
    X_val: Float[ArrayLike, "n_val d"] | None = None,
    Y_val: Float[ArrayLike, "n_val m"] | Float[ArrayLike, " n_val"] | None = None,
    bounds: dict[str, tuple[float, float]] | None = None,
    optimizer: Any = None,
    steps: int = 100,
    progress: bool = True,
    **solve_kwargs,
) -> TuneResult:
    """Tune hyper-parameters by gradient descent on a differentiable prediction of the EoS.

    Each step solves the EoS at the current hyper-parameters (warm-started from the previous
    solution), differentiates the objective implicitly through the fixed point, and applies
    an optax update to the *unconstrained* parameters: z = log θ, or, for a bounded θ,
    log θ = log lo + (log hi − log lo)·sigmoid(z), so every iterate is admissible.

    **Arguments:**

    - `network`: the starting point (an [`fls_jax.FCN`][] or [`fls_jax.PatchCNN`][]).
    - `X`, `Y`: training data.
    - `params`: which hyper-parameters to tune, from ``"sigma_w2"``, ``"sigma_a2"``,
      ``"noise"`` (σ²) and ``"width"`` (C, as a continuous variable; must be finite). A
      per-layer σ_w² (shape (L,), deep networks) is tuned per layer.
    - `objective`: ``"validation_error"`` (predicted test error of the mean predictor on
      `X_val`, `Y_val`), ``"free_energy"`` (F, the variational negative log-evidence, for
      model selection without validation data) or a callable ``solution -> scalar``.
    - `bounds`: optional ``{name: (lo, hi)}`` box constraints (0 < lo < hi; for a per-layer
      σ_w², the same box for every layer).
    - `optimizer`: an optax `GradientTransformation` (default ``optax.adam(0.05)``; the
      step acts on log-parameters, so 0.05 is a ≈5 % relative change).
    - `steps`: optimiser steps.
    - `progress`: show a progress bar (needs `rich`).
    - `solve_kwargs`: passed to [`fls_jax.solve`][].

    **Returns:** a [`fls_jax.TuneResult`][]. A step whose solve does not converge (even from
    the GP-limit start) ends the run, with `converged=False`: the gradient of a failed solve
    is never applied.
    """
    try:
        import optax
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("fls_jax.tune needs optax: pip install 'fls_jax[tune]'") from e
    names = (params,) if isinstance(params, str) else tuple(params)  # one name, or several
    bounds = dict(bounds or {})
    if not names:
        raise ValueError("params must name at least one hyper-parameter")
    for k in names:
        if k not in TUNABLE:
            raise ValueError(f"cannot tune {k!r}: choose from {TUNABLE}")
    if len(set(names)) != len(names):
        raise ValueError(f"params has duplicates: {names}")
    for k, pair in bounds.items():
        if k not in names:
            raise ValueError(f"bounds given for {k!r}, which is not tuned")
        if not (
            isinstance(pair, tuple | list)
            and len(pair) == 2
            and all(isinstance(b, int | float | np.integer | np.floating) for b in pair)
        ):
            raise ValueError(f"bounds for {k!r} must be a pair of numbers (lo, hi), got {pair!r}")
        lo, hi = pair
        if not 0 < lo < hi < np.inf:
            raise ValueError(f"bounds for {k!r} must satisfy 0 < lo < hi < inf, got {(lo, hi)}")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer must be an optax GradientTransformation (e.g. optax.adam(0.05)), "
            f"got {optimizer!r}"
        )
    network, X, Y = _validate(network, X, Y)
    if objective == "validation_error":
        if X_val is None or Y_val is None:
            raise ValueError("objective 'validation_error' needs X_val and Y_val")
        X_val, Y_val = _validate_test(X, Y, X_val, Y_val)
    start, shapes = [], []
    for k in names:
        v = np.asarray(getattr(network, k), dtype=float)
        if not np.all(np.isfinite(v)) or not np.all(v > 0):
            raise ValueError(f"{k} must start finite and > 0 to be tuned, got {v}")
        lo, hi = bounds.get(k, (0.0, np.inf))
        if not np.all((lo < v) & (v < hi)):
            raise ValueError(f"{k} = {v} starts outside its bounds {(lo, hi)}")
        start.append(np.ravel(_to_unconstrained(v, bounds.get(k))))
        shapes.append(v.shape)
    shapes = tuple(shapes)
    fn = _objective_fn(objective)
    val = (X_val, Y_val) if objective == "validation_error" else None
    optimizer = optax.adam(0.05) if optimizer is None else optimizer
    z = jnp.asarray(np.concatenate(start), dtype=X.dtype)
    opt_state = optimizer.init(z)
    static_bounds = _Static(bounds)

    def evaluate(z, precision0):
        return _value_and_grad(
            z, network, names, shapes, static_bounds, X, Y, fn, val, precision0, solve_kwargs
        )

    history: dict[str, list] = {"step": [], "objective": [], "grad_norm": [], "converged": []}
    history |= {k: [] for k in names}
    best = (np.inf, None, None)
    precision = None
    all_ok, failure = True, ""
    bar = _progress(progress, steps)
    for step in range(steps):
        value, grad, sol = evaluate(z, precision)
        if not bool(sol.converged) and precision is not None:
            value, grad, sol = evaluate(z, None)  # fall back to the GP-limit start
        finite_value, finite_grad = bool(jnp.isfinite(value)), bool(jnp.all(jnp.isfinite(grad)))
        ok = bool(sol.converged) and finite_value and finite_grad
        if not bool(sol.converged):
            failure = "the solve did not converge; raise max_steps/max_stages or start from other "
            failure += "hyper-parameters"
        elif not (finite_value and finite_grad):
            failure = f"the objective is {float(value)} and its gradient's norm "
            failure += f"{float(jnp.linalg.norm(grad))} at a converged solve: not finite"
        history["step"].append(step)
        history["objective"].append(float(value))
        history["grad_norm"].append(float(jnp.linalg.norm(grad)))
        history["converged"].append(ok)
        for k in names:
            history[k].append(np.asarray(getattr(sol.network, k), dtype=float))
        if bar is not None:
            bar.update(step, value, {k: history[k][-1] for k in names})
        if not ok:
            all_ok = False
            break
        if float(value) < best[0]:
            best = (float(value), sol.network, sol)
        updates, opt_state = optimizer.update(grad, opt_state, z)
        z = optax.apply_updates(z, updates)
        precision = (_state_precision(sol), *sol.kernel_shifts)
    if bar is not None:
        bar.close()
    if best[1] is None:
        raise RuntimeError(f"tune: at the first step, {failure}")
    return TuneResult(
        network=best[1],
        solution=best[2],
        history={k: np.asarray(v) for k, v in history.items()},
        converged=all_ok,
    )


class _Static(eqx.Module):
    """Hashable holder, so the bounds dict is part of the compiled function's static key."""

    items: tuple = eqx.field(static=True)

    def __init__(self, d: dict):
        self.items = tuple(sorted(d.items()))

    def get(self, k):
        return dict(self.items).get(k)


class _Progress:
    def __init__(self, steps: int):
        from rich.progress import Progress

        self._p = Progress()
        self._p.start()
        self._task = self._p.add_task("tune", total=steps)

    def update(self, step, value, params):
        text = " ".join(f"{k}={np.array2string(v, precision=3)}" for k, v in params.items())
        self._p.update(self._task, completed=step + 1, description=f"F/err={value:.4g} {text}")

    def close(self):
        self._p.stop()


def _progress(enabled: bool, steps: int) -> _Progress | None:
    if not enabled:
        return None
    try:
        return _Progress(steps)
    except ImportError:
        return None
