"""The one-hidden-layer chain at narrow widths: what to do where Anderson fails (issue 6).

    python benchmarks/one_layer_chain.py --n 512 --widths 16 8 --variants descent 40/0

erf FCN (d = 32 unless `--d`, σ² = 0.01, single-index teacher, the task of `scaling_n.py
--arch fcn`), solved from the GP limit. Variant `descent` is `solve(..., solver="descent")`:
Anderson acceleration, and where it fails a BFGS descent on the free energy
(`fj.FreeEnergyBFGS`) that hands over to GMRES damped Newton, both allowed once a
continuation stage has failed (`_escalation`); `descent/A` allows them after A failed stages
(`descent/0`: from the first stage, i.e. straight from the GP limit). A variant `P/A` is the
chain without the descent, Anderson then Newton from the same point, with Anderson's
`patience` P and Newton only after A failed stages in a row (`_fallback_after`): `40/0` is
the default, `40/1` is what deeper networks do (a failed stage first retries Anderson on a
quarter step in 1/C). `lbfgs/H` is `descent` with the BFGS replaced by L-BFGS keeping the
last H steps (`FreeEnergyLBFGS` below; measured, not adopted). Prints iterations, stages,
the residual, w*ᵀΣw* and the wall time (compilation included, one call per width; each
variant is compiled afresh).
"""

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optimistix as optx  # noqa: E402
from scaling_n import problem  # noqa: E402

import fls_jax as fj  # noqa: E402
import fls_jax._solve as _solve  # noqa: E402
from fls_jax._descent import _handed_over  # noqa: E402


class FreeEnergyLBFGS(optx.AbstractLBFGS):
    """`fj.FreeEnergyBFGS` with optimistix's limited-memory curvature (the last
    `history_length` steps) instead of a dense S(S+1)/2 matrix: the descent one would use
    beyond S = 64. Same stopping rule. Measured, not adopted (`docs/performance.md`)."""

    rtol: float = 0.0
    atol: float = 0.0
    handover: float = 1e-2
    history_length: int = 30
    norm: Callable[..., Any] = optx.max_norm
    use_inverse: bool = True
    descent: optx.AbstractDescent = optx.NewtonDescent()
    search: optx.AbstractSearch = optx.BacktrackingArmijo()
    verbose: Callable[..., None] = lambda **kwargs: None

    def terminate(self, fn, y, args, options, state, tags):
        done, result = super().terminate(fn, y, args, options, state, tags)
        return done | _handed_over(self.handover, y, state), result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--widths", type=float, nargs="+", default=[16.0, 8.0])
    p.add_argument("--variants", nargs="+", default=["descent", "40/0"])
    a = p.parse_args()
    print(f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, n = {a.n}")
    task, _, _ = problem("fcn", a.n, a.widths[0])
    if a.d != 32:
        task = fj.datasets.single_index_teacher(a.n, 10, a.d, seed=0)
    S = task.X.shape[1]
    print(f"# erf FCN d = {S}")
    default_after, descent_after = _solve._fallback_after, _solve._DESCENT_AFTER
    print("| variant | C | iterations | stages | converged | residual | w*ᵀΣw* | time |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in a.variants:
        if variant.startswith("lbfgs"):  # `lbfgs/H`: the descent with L-BFGS, history H
            anderson, newton = _solve._anderson_newton(jnp.float64, 1, S)
            history = int(variant.split("/")[1])
            lbfgs = FreeEnergyLBFGS(handover=_solve._HANDOVER, history_length=history)
            chain = (anderson, lbfgs, newton)
        elif variant.startswith("descent"):  # `descent` or `descent/A`
            chain = _solve._descent_solver(jnp.float64, 1, S)
            after = int(variant.split("/")[1]) if "/" in variant else descent_after
            _solve._DESCENT_AFTER = after
        else:
            patience, after = (int(v) for v in variant.split("/"))
            anderson, newton = _solve._anderson_newton(jnp.float64, 1, S)
            chain = (eqx.tree_at(lambda s: s.patience, anderson, patience), newton)
            _solve._fallback_after = lambda depth, after=after: after
        jax.clear_caches()  # the policy is read at trace time: recompile per variant
        for C in a.widths:
            _, net, _ = problem("fcn", a.n, C)
            t0 = time.perf_counter()
            s = jax.block_until_ready(fj.solve(net, task.X, task.Y, solver=chain))
            dt = time.perf_counter() - t0
            w = task.teacher
            print(
                f"| {variant} | {C:g} | {int(s.num_steps)} | {int(s.num_stages)} | "
                f"{bool(s.converged)} | {float(s.residual):.1e} | {float(w @ s.sigma @ w):.4f} | "
                f"{dt:.1f} s |",
                flush=True,
            )
        _solve._fallback_after, _solve._DESCENT_AFTER = default_after, descent_after


if __name__ == "__main__":
    main()
