"""Why `solve`'s continuation cannot pass a near-fold alone, and why `past_folds` is dense
(stop 66).

    python benchmarks/near_fold_linear_algebra.py [--part gmres|arclength|all]

The network of `deep_fold_branches.py` with target seed 1 and σ² = 10⁻³ (a depth-3 erf FCN,
n = 20, d = 5, 815 unknowns): no fold, but the Jacobian's smallest singular value dips to
8·10⁻⁵ near C = 1.92, and `solve`'s continuation in 1/C creeps to a halt at C ≈ 1.967.

`--part gmres`: at points of `fj.trace`'s curve from C = 2.2 to 1.9, the dense Jacobian J of
the solver's residual: the range of its eigenvalues' real parts, their largest imaginary part,
its condition number, and the GMRES iterations (restart 20, SciPy) to solve J x = b to 10⁻⁹
relative; then the same for J P, where P is the derivative of the map from the precision
coordinates (Λ₁, K^(2)⁻¹, K^(3)⁻¹) to the solver's unknowns (Λ₁, Δ₂, Δ₃): a right
preconditioner that makes the spectrum real (`benchmarks/RESULTS.md`, "why β = 0.1").

`--part arclength`: pseudo-arclength continuation as `fj.trace`'s, but matrix-free: each
corrector step and tangent solves the bordered system [J, ∂R/∂p; tᵀ] by GMRES on
Jacobian-vector products (`RelativeGMRES`, restart 20, no preconditioner), from C = `--start`
toward C = 1.5, `--rtol` the GMRES tolerance. Where GMRES cannot reach it, the steps shrink to
nothing and the curve stops.
"""

import argparse
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import scipy.sparse.linalg as spla
from deep_narrow_scan import inputs, targets
from jax.flatten_util import ravel_pytree


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402
from fls_jax._free_energy import _layer_map, _layers, _sym  # noqa: E402
from fls_jax._linalg import RelativeGMRES, _unpack  # noqa: E402
from fls_jax._solve import _state_scale, _to_state, _with_width  # noqa: E402
from fls_jax._trace import _curve_residual, _flat_state, _state_of  # noqa: E402


def network(C: float) -> fj.FCN:
    return fj.FCN(width=C, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=1e-3)


def data():
    X = jnp.asarray(inputs())
    return X, jnp.asarray(targets(np.asarray(X), 1))


def gmres_iterations(M: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    count = [0]

    def callback(_):
        count[0] += 1

    x, _ = spla.gmres(
        M, b, rtol=1e-9, atol=0, restart=20, maxiter=500, callback=callback, callback_type="pr_norm"
    )
    return count[0], float(np.linalg.norm(M @ x - b) / np.linalg.norm(b))


def gmres_part() -> None:
    X, Y = data()
    net = network(2.2)
    tr = fj.trace(net, X, Y, 1.9)
    n, S = X.shape[0], net.state_size(X.shape[1])
    scale = _state_scale(net, X)

    def to_unknowns(p):
        """(Λ₁, Λ₂, Λ₃) → (Λ₁, Δ₂, Δ₃), Δ_l = Λ_l − Q^(l−1)⁻¹, in the solver's scaling."""
        state = _state_of(p, net, X)
        lam1 = _unpack(state[0], S) / scale[0]
        lams = [lam / s for lam, s in zip(state[1:], scale[1:], strict=True)]
        cov, shifts = jnp.linalg.inv(_sym(lam1)), []
        for layer in range(1, net.depth):
            Q = _sym(_layer_map(net, layer, X)(cov))
            shifts.append(lams[layer - 1] - jnp.linalg.inv(Q))
            cov = jnp.linalg.inv(_sym(lams[layer - 1]))
        return ravel_pytree(_to_state(lam1, tuple(shifts), scale))[0]

    print(
        "\n| C | J: Re λ | J: max |Im λ| | J: cond | J: GMRES iterations (rel. residual) "
        "| J P: Re λ | J P: max |Im λ| | J P: cond | J P: GMRES iterations (rel. residual) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    widths = np.asarray(tr.widths)
    b = np.random.default_rng(0).normal(size=S * (S + 1) // 2 + 2 * n * n)
    for C in (2.2, 2.0, 1.97, 1.96, 1.95, 1.93, 1.92, 1.9):
        j = int(np.argmin(abs(widths - C)))
        Cj = float(widths[j])
        lam1, shifts = tr.unknowns[0][j], tuple(u[j] for u in tr.unknowns[1:])
        x = _flat_state(lam1, shifts, net, X)
        J = np.asarray(jax.jacfwd(_curve_residual)(jnp.append(x, 1 / Cj), 1.0, net, X, Y))[:, :-1]
        covs = _layers(_with_width(net, Cj), jnp.linalg.inv(_sym(lam1)), shifts, X)[0]
        precisions = tuple(jnp.linalg.inv(_sym(c)) for c in covs[1:])
        p0 = ravel_pytree(_to_state(lam1, precisions, scale))[0]
        assert float(jnp.linalg.norm(to_unknowns(p0) - x) / jnp.linalg.norm(x)) < 1e-9
        JP = J @ np.asarray(jax.jacfwd(to_unknowns)(p0))
        cells = []
        for M in (J, JP):
            ev, sv = np.linalg.eigvals(M), np.linalg.svd(M, compute_uv=False)
            k, rel = gmres_iterations(M, b)
            cells += [
                f"[{ev.real.min():.3g}, {ev.real.max():.3g}]",
                f"{abs(ev.imag).max():.2g}",
                f"{sv[0] / sv[-1]:.2g}",
                f"{k} ({rel:.1e})",
            ]
        print(f"| {Cj:.4f} | " + " | ".join(cells) + " |", flush=True)


def arclength_part(start: float, rtol: float) -> None:
    X, Y = data()
    net = network(start)
    solver = RelativeGMRES(rtol=rtol, restart=20, max_steps=200)

    def bordered(z, t, W, rhs):
        r, lin = jax.linearize(lambda v: _curve_residual(v, W, net, X, Y), z)
        op = lx.FunctionLinearOperator(
            lambda v: jnp.append(lin(v), t @ v), jax.ShapeDtypeStruct(z.shape, z.dtype)
        )
        sol = lx.linear_solve(op, rhs(r), solver, throw=False)
        return sol.value, sol.stats["num_steps"], r

    @eqx.filter_jit
    def newton(z, zp, t, W):
        dz, k, _ = bordered(z, t, W, lambda r: jnp.append(r, t @ (z - zp)))
        return z - dz, k

    @eqx.filter_jit
    def tangent(z, t, W):
        s, k, _ = bordered(z, t, W, lambda r: jnp.zeros_like(z).at[-1].set(1.0))
        return s / jnp.linalg.norm(s), k

    @eqx.filter_jit
    def relative_residual(z, W):
        return jnp.linalg.norm(_curve_residual(z, W, net, X, Y)) / jnp.linalg.norm(z[:-1])

    first = fj.solve(net, X, Y)
    x0 = _flat_state(first.precision, first.kernel_shifts, net, X)
    W = jnp.linalg.norm(x0)
    z = jnp.append(x0, W / start)
    t, gm = tangent(z, jnp.zeros_like(z).at[-1].set(1.0), W)
    gm, points, h, t0 = int(gm), 0, 0.02 * float(W), time.perf_counter()
    print(f"\nmatrix-free arclength from C = {start:g}, GMRES rtol {rtol:g}")
    print("| points | C | step / W | GMRES steps so far | s |")
    print("| --- | --- | --- | --- | --- |")
    while points < 2000:
        ok = False
        while h > 1e-10 * float(W):
            zp = zc = z + h * t
            for _ in range(10):
                if float(relative_residual(zc, W)) <= 1e-11:
                    ok = bool(zc[-1] > 0)
                    break
                zc, k = newton(zc, zp, t, W)
                gm += int(k)
                if not bool(jnp.all(jnp.isfinite(zc))):
                    break
            if ok:
                break
            h /= 2
        if not ok:
            break
        s, k = tangent(zc, t, W)
        gm += int(k)
        z, t, points, h = zc, s * jnp.sign(s @ t), points + 1, min(1.5 * h, 0.2 * float(W))
        C = float(W / z[-1])
        if points % 20 == 0:
            row = f"| {points} | {C:.5f} | {h / float(W):.2g} | {gm} |"
            print(row + f" {time.perf_counter() - t0:.0f} |", flush=True)
        if C <= 1.5:
            break
    print(
        f"stopped at C = {float(W / z[-1]):.5f} after {points} points, {gm} GMRES steps, "
        f"{time.perf_counter() - t0:.0f} s ({'reached 1.5' if ok else 'the corrector failed'})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("gmres", "arclength", "all"), default="all")
    p.add_argument("--start", type=float, default=8.0)
    p.add_argument("--rtol", type=float, default=1e-6)
    a = p.parse_args()
    print(f"# {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')}")
    if a.part in ("gmres", "all"):
        gmres_part()
    if a.part in ("arclength", "all"):
        arclength_part(a.start, a.rtol)


if __name__ == "__main__":
    main()
