"""A two-parameter preconditioner of the one-layer fixed point: the first measurement (issue 6).

    python benchmarks/two_scalar_preconditioner.py --ns 512 1024 2048

`benchmarks/jacobian_spectrum.py` finds the erf FCN's stiff eigenvalues in the d-dimensional
subspace V = {u vᵀ + v uᵀ} of the learned direction u. Here Anderson (memory 30, the fix of
2026-12-01) runs on M R(Λ) instead of R(Λ), where M multiplies the component of R along u uᵀ
by −1/s₁ and the rest of its component in V by −1/s₂ (each at most 1), with s₁ = ⟨u uᵀ, J u uᵀ⟩
and s₂ = ⟨z, J z⟩ for one random unit z in V ⊥ u uᵀ: two Jacobian-vector products at the
start. u is Σ's top eigenvector for a warm start, and the eigenvector of the first residual's
largest |eigenvalue| from the GP limit (where Σ is isotropic). M is positive definite, so the
roots are those of R; the iteration stops on the true residual. For each n, both from the
C = 128 solution and from the GP limit, to C = 64: plain Anderson, then preconditioned.
Erf FCN d = 32, single-index teacher, σ² = 0.01.

`solve` now uses its successor from warm starts (`_LearnedSubspace` in `fls_jax/_solve.py`:
Frobenius-orthogonal projections instead of the packed basis here, on Σ's top three directions);
`warm_preconditioner.py` measures it inside the solver. This script keeps the first
measurement, including the from-GP rows that kept it off the first stage of a solve.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jacobian_spectrum import sym_basis  # noqa: E402
from scaling_n import problem  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._linalg import _pack, _unpack  # noqa: E402
from fls_jax._solve import _gp_state, _state_residual  # noqa: E402


D = 32


def preconditioner(residual, y0, u):
    """(uu, V, a1, a2): M r = r + a1 uu (uu·r) + a2 (V Vᵀ r − uu (uu·r))."""
    V = sym_basis(u, D)
    uu = np.array(_pack(jnp.asarray(np.outer(u, u))))
    uu /= np.linalg.norm(uu)
    z = V @ np.random.default_rng(0).standard_normal(D)
    z -= uu * (uu @ z)
    z /= np.linalg.norm(z)

    def rayleigh(v):
        return float(v @ np.asarray(jax.jvp(residual, (y0,), (jnp.asarray(v),))[1]))

    s1, s2 = rayleigh(uu), rayleigh(z)
    a1, a2 = (1.0 / max(-s, 1.0) - 1.0 for s in (s1, s2))
    return jnp.asarray(uu), jnp.asarray(V), a1, a2, s1, s2


def run(residual, y0, parts, max_steps):
    """Anderson on M R (M = I without `parts`) from y0; stops on the true residual."""

    def fn(y, _):
        r = residual(y)
        if parts is None:
            return r, None
        uu, V, a1, a2 = parts
        ru = uu @ r
        return r + a1 * uu * ru + a2 * (V @ (V.T @ r) - uu * ru), None

    solver = fj.Anderson(rtol=1e-11, atol=0.0, memory=30)
    state = solver.init(fn, y0, None, {}, None, None, frozenset())
    step = jax.jit(lambda y, s: solver.step(fn, y, None, {}, s, frozenset()))
    true = jax.jit(lambda y: jnp.linalg.norm(residual(y)) / jnp.linalg.norm(y))
    y = y0
    for k in range(max_steps + 1):
        rel = float(true(y))
        if rel <= 1e-11 or not np.isfinite(rel):
            return k, rel
        if k < max_steps:
            y, state, _ = step(y, state)
    return max_steps, rel


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ns", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--starts", nargs="+", default=["warm", "gp"], choices=["warm", "gp"])
    a = p.parse_args()
    print(f"# {platform.node()} {jax.devices()[0].device_kind} jax {jax.__version__}")
    print("# erf FCN d=32, single-index teacher, σ²=0.01, to C = 64; iterations (true residual)")
    for n in a.ns:
        task, net, _ = problem("fcn", n, 64.0)
        X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
        args = (net, X, Y)

        def residual(y, args=args):
            return _state_residual(y, args)

        for start in a.starts:
            if start == "warm":
                wide = eqx.tree_at(lambda m: m.width, net, jnp.asarray(128.0))
                sigma = np.asarray(fj.solve(wide, X, Y).sigma)
                y0 = _pack(jnp.asarray(np.linalg.inv(sigma)))
                u = np.linalg.eigh(sigma)[1][:, -1]
            else:
                y0 = _gp_state(net, X)
                e, U = np.linalg.eigh(np.asarray(_unpack(residual(y0), D)))
                u = U[:, np.argmax(np.abs(e))]
            t0 = time.perf_counter()
            k, rel = run(residual, y0, None, a.max_steps)
            t_plain = time.perf_counter() - t0
            t0 = time.perf_counter()
            uu, V, a1, a2, s1, s2 = preconditioner(residual, y0, u)
            kp, relp = run(residual, y0, (uu, V, a1, a2), a.max_steps)
            t_pre = time.perf_counter() - t0
            print(
                f"n={n:5d} from {start:4s}: plain {k:4d} ({rel:.1e}, {t_plain:6.1f} s) | "
                f"two scalars {kp:4d} + 2 products ({relp:.1e}, {t_pre:6.1f} s) | "
                f"s1 {s1:7.2f} s2 {s2:6.2f} |u·w*| {abs(float(u @ task.teacher)):.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
