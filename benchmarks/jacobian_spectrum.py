"""Why the erf FCN's fixed point slows down with n: the spectrum of the EoS Jacobian (issue 6).

    python benchmarks/jacobian_spectrum.py --ns 512 1024 --width 64

For one hidden layer the solver's unknowns are the d(d+1)/2 entries of Λ = Σ⁻¹ and the
residual is R(Λ) = G(Λ) − Λ (SPEC §3). At the default solve's solution this script builds
the dense Jacobian J = ∂R/∂Λ (one Jacobian-vector product per unknown, in batches) and prints:

- the spectrum of −J: the iteration y ← y + R(y) contracts only where it lies in (0, 2), and
  Anderson acceleration behaves like a Krylov method on it, so its iterations grow with
  the condition number κ = max/min;
- how much of the stiff part lies in the d-dimensional subspace V = {u vᵀ + v uᵀ : v ∈ R^d},
  u the top eigenvector of Σ (the learned direction; the teacher's w* on this task);
- κ of −M J for three preconditioners M: Newton on V (M = I − W (VᵀJV)⁻¹ Vᵀ, W = JV + V,
  d Jacobian-vector products), `solve`'s own (`_LearnedSubspace` on k = 1 and 2 of Σ's top
  eigenvectors: k(k+1)/2 + k products) and a Σ-weighting with no products (M scales the
  component along a bᵀ + b aᵀ, for eigenvectors a, b of Σ, by 1/(1 + h (s_a s_b)^½),
  s = eigenvalues of Σ over the prior's);
- the cost of a batch of Jacobian-vector products in residual evaluations.

`--arch cnn` takes the erf PatchCNN instead (S = 16: d reads S above), `--index k` a k-index
FCN teacher. This is a diagnosis, not a solver; `solve` uses its preconditioner from warm
starts (`_LearnedSubspace`, measured by `warm_preconditioner.py`; `benchmarks/RESULTS.md`).
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scaling_n import problem, timed  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._linalg import _pack, _unpack  # noqa: E402
from fls_jax._solve import _LearnedSubspace, _state_residual  # noqa: E402


def kappa(A) -> str:
    """The real range of A's spectrum, its ratio κ and the largest |imaginary part|."""
    e = np.linalg.eigvals(A)
    lo, hi = e.real.min(), e.real.max()
    return f"[{lo:.3f}, {hi:.3f}], κ = {hi / lo:.1f}, max |Im| {np.abs(e.imag).max():.2f}"


def sym_basis(u, d: int) -> np.ndarray:
    """Orthonormal basis (packed coordinates, as columns) of {u vᵀ + v uᵀ : v ∈ R^d}."""
    rows = [np.asarray(_pack(jnp.asarray(np.outer(u, v) + np.outer(v, u)))) for v in np.eye(d)]
    return np.linalg.qr(np.array(rows).T)[0]


def sigma_weighting(U, rel, h: float, d: int) -> np.ndarray:
    """The packed matrix of R ↦ U [(UᵀRU) ⊙ D] Uᵀ, D_ab = 1/(1 + h (s_a s_b)^½)."""
    D = 1.0 / (1.0 + h * np.sqrt(np.outer(rel, rel)))

    def apply(c):
        R = np.asarray(_unpack(jnp.asarray(c), d))
        return np.asarray(_pack(jnp.asarray(U @ ((U.T @ R @ U) * D) @ U.T)))

    return np.array([apply(c) for c in np.eye(d * (d + 1) // 2)]).T


def report(arch: str, n: int, width: float, batch: int, hs: list[float], index: int) -> None:
    task, net, _ = problem(arch, n, width, index)
    d = net.filter_size(task.X.shape[1])
    X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
    args = (net, X, Y)
    t0 = time.perf_counter()
    sol = fj.solve(net, X, Y)
    y = _pack(sol.precision)
    N = y.size
    print(
        f"\nn={n}: solve {time.perf_counter() - t0:.1f} s (with compilation), "
        f"{int(sol.num_steps)} iterations, residual {float(sol.residual):.1e}"
    )

    def residual(z):
        return _state_residual(z, args)

    @jax.jit
    def jvps(V):
        _, f_jvp = jax.linearize(residual, y)
        return jax.vmap(f_jvp)(V)

    J = np.concatenate([np.asarray(jvps(jnp.eye(N)[i : i + batch])) for i in range(0, N, batch)]).T
    e = np.sort(np.linalg.eigvals(-J).real)[::-1]
    print(f"  spectrum of −J: {kappa(-J)}")
    print(f"  largest: {np.round(e[:4], 2)}; the {d}-th {e[d - 1]:.2f}, the {d + 1}-th {e[d]:.2f}")
    # the stiff subspace V = sym(u vᵀ), u = Σ's top eigenvector
    s, U = np.linalg.eigh(np.asarray(sol.sigma))
    u = U[:, -1]
    V = sym_basis(u, d)
    w, vecs = np.linalg.eig(-J)
    top = np.real(vecs[:, np.argsort(-w.real)[:d]])
    overlap = np.linalg.norm(V.T @ (top / np.linalg.norm(top, axis=0)), axis=0)
    print(
        f"  the top {d} eigenvectors' overlap with sym(u vᵀ): min {overlap.min():.3f}, "
        f"median {np.median(overlap):.3f} "
        f"(‖W*ᵀu‖ = {np.linalg.norm(np.atleast_2d(task.teacher.T) @ u):.3f})"
    )
    JV = J @ V
    M = np.eye(N) - (JV + V) @ np.linalg.solve(V.T @ JV, V.T)
    print(f"  −MJ, Newton on V ({d} products): {kappa(-M @ J)}")
    for k in (1, 2):
        M = _LearnedSubspace(directions=k).build(
            lambda z, a: (residual(z), None), y, None, jnp.asarray(True)
        )
        Mm = np.stack([np.asarray(M(e)) for e in jnp.eye(N)], axis=1)
        print(f"  −MJ, `solve`'s preconditioner on {k} direction(s): {kappa(-Mm @ J)}")
    rel = s * float(net.prior_precision(task.X.shape[1])[0, 0])
    for h in hs:
        print(
            f"  −MJ, Σ-weighting h = {h:g} (no products): "
            f"{kappa(-sigma_weighting(U, rel, h, d) @ J)}"
        )
    res = jax.jit(residual)
    t_r = timed(res, y, repeat=3)[1]
    for k in (2, d):
        t_k = timed(jvps, jnp.eye(N)[:k], repeat=3)[1]
        print(
            f"  {k} products (with the linearisation): {t_k / t_r:.1f} residuals "
            f"of {t_r * 1e3:.1f} ms"
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["fcn", "cnn"], default="fcn")
    p.add_argument("--ns", type=int, nargs="+", default=[512])
    p.add_argument("--index", type=int, default=1, help="k of a k-index FCN teacher")
    p.add_argument("--width", type=float, default=64.0)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--h", type=float, nargs="+", default=[10.0, 100.0])
    a = p.parse_args()
    print(f"# {platform.node()} {jax.devices()[0].device_kind} jax {jax.__version__}")
    print(f"# {problem(a.arch, 8, a.width, a.index)[2]}, C={a.width:g}, σ²=0.01")
    for n in a.ns:
        report(a.arch, n, a.width, a.batch, a.h, a.index)


if __name__ == "__main__":
    main()
