"""The descent's starting curvature, and Newton's GMRES test: stop 32 against both changed.

    python benchmarks/descent_whitening.py

Two changes to the one-hidden-layer chain (`solver="descent"`, the default up to 2080
first-layer unknowns), measured side by side in one run:

- `FreeEnergyBFGS` starts from the identity as its inverse Hessian in the packed precision
  Λ; `FreeEnergyBFGS(whiten=True)` starts from g ↦ 2 Λ G Λ at the descent's first point
  (`_whitening`), which turns the Hessian of F/C into −J there, so BFGS no longer has to learn
  Σ ⊗ Σ's spread. Measured here, and left off by default (it changed the PatchCNN's branch).
- Newton's GMRES (more than 256 unknowns) used lineax's entrywise convergence test, which
  reads a zero in the right side as converged (`fj.RelativeGMRES`): its steps were cheap and
  inexact where an input coordinate is zero on every training point (the digits).

Variant `before` is the stop-32 chain (identity start, `lx.GMRES` in Newton); `after` is the
whitened start with `solve`'s Newton (`fj.RelativeGMRES`). The digits' `before` rows take ~8
minutes on 2 CPU cores and run with `--before` only (`digits_fcn.py` at the stop-32 commit
gives them too: `logs/digits_fcn_cpu.log`). Cases: an erf FCN on the digits' 64 pixels (n =
256, parity), the same network on a Gaussian single-index teacher with d = 64 (n = 256), and
the erf PatchCNN (S = 16, P = 8, n = 256) whose C = 4 has several minima of F
(`benchmarks/RESULTS.md`: F = −54.549, −54.342 and −54.299 were reached). Each solve from the
GP limit, compiled afresh per variant (the first row of each variant includes compilation).
Printed: iterations, stages, wall time, relative residual, F and the test error.

    python benchmarks/descent_whitening.py --start-scales 1 0.5 0.25 0.1

runs only the PatchCNN with the whitened start scaled by β (the first trial step β·R):
whether its branch comes from the size of the first steps or from their direction.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import optimistix as optx  # noqa: E402
from scaling_n import problem  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._descent import _whitening  # noqa: E402
from fls_jax._solve import _HANDOVER, _anderson_newton, _default_rtol  # noqa: E402


def chain(variant: str, filter_size: int):
    anderson, newton = _anderson_newton(jnp.float64, 1, filter_size)
    if variant == "after":  # the whitened start with Newton's default (RelativeGMRES)
        return (anderson, fj.FreeEnergyBFGS(handover=_HANDOVER, whiten=True), newton)
    if filter_size * (filter_size + 1) // 2 > 256:  # Newton on GMRES, with lineax's test
        gmres = lx.GMRES(rtol=1e-4, atol=0.0, norm=optx.two_norm, restart=20, max_steps=100)
        newton = fj.DampedNewton(rtol=_default_rtol(jnp.float64), atol=0.0, linear_solver=gmres)
    return (anderson, fj.FreeEnergyBFGS(handover=_HANDOVER), newton)  # identity start


class _ScaledStart(fj.FreeEnergyBFGS):
    """The whitened start times β."""

    beta: float = 1.0

    def init_hessian(self, y, f, grad):
        H0 = lx.MatrixLinearOperator(self.beta * _whitening(y), lx.positive_semidefinite_tag)
        return optx.FunctionInfo.EvalGradHessianInv(f, grad, H0), None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", action="store_true", help="also the digits before (~8 min)")
    p.add_argument("--start-scales", type=float, nargs="+", help="PatchCNN only, start × β")
    a = p.parse_args()
    print(f"# {platform.processor() or platform.machine()}, jax {jax.__version__}")
    cnn_task, cnn, _ = problem("cnn", 256, 4.0)
    cases = [("PatchCNN S=16", cnn_task, cnn, (4.0,))]
    if not a.start_scales:
        digits = fj.datasets.digits(256, 512, labels="parity")
        teacher = fj.datasets.single_index_teacher(256, 512, d=64, scale=1.5)
        cases = [
            ("digits FCN", digits, fj.FCN(4.0, 1.0, 1.0, 0.01, fj.Erf()), (4.0, 2.0)),
            ("teacher FCN d=64", teacher, fj.FCN(4.0, 1.0, 1.0, 0.01, fj.Erf()), (1.0,)),
            *cases,
        ]
    print(
        "| case | variant | C | iterations | stages | s | residual | F | test error |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for name, task, net0, widths in cases:
        S = net0.filter_size(task.X.shape[1])
        variants = ("before", "after") if a.before or name != "digits FCN" else ("after",)
        if a.start_scales:
            variants = tuple(f"start × {beta:g}" for beta in a.start_scales)
        for variant in variants:
            if a.start_scales:
                anderson, descent, newton = chain("after", S)
                beta = float(variant.split()[-1])
                solver = (anderson, _ScaledStart(handover=descent.handover, beta=beta), newton)
            else:
                solver = chain(variant, S)
            for C in widths:
                net = eqx.tree_at(lambda m: m.width, net0, jnp.asarray(C))
                t0 = time.perf_counter()
                sol = jax.block_until_ready(fj.solve(net, task.X, task.Y, solver=solver))
                sec = time.perf_counter() - t0
                p = fj.predict(sol, task.X_test, task.Y_test)
                print(
                    f"| {name} | {variant} | {C:g} | {int(sol.num_steps)} | "
                    f"{int(sol.num_stages)} | {sec:.1f} | {float(sol.residual):.1e} | "
                    f"{float(sol.free_energy):.4f} | {float(p.test_error):.4f} |"
                    + ("" if bool(sol.converged) else " NOT CONVERGED"),
                    flush=True,
                )


if __name__ == "__main__":
    main()
