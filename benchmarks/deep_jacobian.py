"""Why deep networks need Anderson's β = 0.1: the spectrum of the depth-2 EoS Jacobian (issue 4).

    python benchmarks/deep_jacobian.py --n 64 --widths 1000 90

For a network of depth 2 the solver's unknowns are the d(d+1)/2 entries of Λ₁ = Σ⁻¹ and the
n×n precision shift Δ₂ = K^(2)⁻¹ − Q^(1)⁻¹ (`_shift_residuals`). At the default solve's
solution (three-layer erf FCN of `deep_sweep.py`: σ_w² = 2, σ_a² = 2/256, σ² = 1e-3, the
deep-erf teacher, d = 32) this script builds the dense Jacobian J of the residual (one
Jacobian-vector product per unknown, in batches) and prints, per width:

- the real range of −J's spectrum and κ = max/min (the plain step y + β R contracts only
  where β·eig(−J) lies in (0, 2); Anderson behaves like a Krylov method on it);
- where the stiff eigenvectors live: the share of each of the top eigenvectors' norm in the
  Λ₁ block, and in the learned subspaces {u vᵀ + v uᵀ} (u: Σ's top eigenvector) of Λ₁ and
  {p qᵀ + q pᵀ} (p: the top eigenvector of Q^(1)^{-1/2} K^(2) Q^(1)^{-1/2}, mapped back) of Δ₂;
- the spectrum of −M J for candidate preconditioners M: Newton on subspaces B
  (M = I − W (BᵀJB)⁻¹ Bᵀ, W = JB + B, one product per column of B) for B = both learned
  subspaces (d + n products), Λ₁'s alone (d), and Λ₁'s with eight directions of Δ₂'s
  (p qᵀ + q pᵀ, q the top whitened directions of K^(2)); `solve`'s one-layer preconditioner
  on the Λ₁ block; and the step of the precision coordinates (Λ₁, Λ₂), in which Δ₂ moves by
  R₂ − (∂Q^(1)⁻¹/∂Λ₁) R₁ (one product per iteration): there −J is a symmetric matrix times a
  block-diagonal definite one, so its spectrum is real.

A diagnosis, not a solver.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jacobian_spectrum import kappa  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._free_energy import _layer_map  # noqa: E402
from fls_jax._linalg import _pack, _unpack, spd_inverse_logdet  # noqa: E402
from fls_jax._solve import _LearnedSubspace, _state_residual, _state_scale, _to_state  # noqa: E402


SW2, SA2, NOISE = 2.0, 2.0 / 256, 1e-3


def report(task, C: float, batch: int) -> None:
    X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
    n, d = X.shape
    net = fj.FCN(width=C, sigma_w2=SW2, sigma_a2=SA2, noise=NOISE, activation=fj.Erf(), depth=2)
    t0 = time.perf_counter()
    sol = fj.solve(net, X, Y)
    print(
        f"\nC = {C:g}: solve {time.perf_counter() - t0:.1f} s (with compilation), "
        f"{int(sol.num_steps)} iterations, {int(sol.num_stages)} stages, "
        f"residual {float(sol.residual):.1e}"
    )
    state = _to_state(sol.precision, sol.kernel_shifts, _state_scale(net, X))
    y, unravel = ravel_pytree(state)
    N, n1 = y.size, d * (d + 1) // 2
    args = (net, X, Y)

    @jax.jit
    def jvps(V):
        _, lin = jax.linearize(lambda z: ravel_pytree(_state_residual(unravel(z), args))[0], y)
        return jax.vmap(lin)(V)

    t0 = time.perf_counter()
    J = np.concatenate([np.asarray(jvps(jnp.eye(N)[i : i + batch])) for i in range(0, N, batch)]).T
    print(f"  dense J ({N} unknowns: {n1} in Λ₁, {n * n} in Δ₂): {time.perf_counter() - t0:.1f} s")
    w, vecs = np.linalg.eig(-J)
    order = np.argsort(-w.real)
    print(f"  spectrum of −J: {kappa(-J)}")
    print(f"  largest: {np.round(w.real[order[:8]], 1)}")

    # the learned subspaces of each block, as orthonormal columns in the flat coordinates
    u = np.linalg.eigh(np.asarray(sol.sigma))[1][:, -1]
    Q_inv = np.linalg.inv(np.asarray(_layer_map(net, 1, X)(sol.sigma)))  # Q^(1)⁻¹
    ev, Ev = np.linalg.eigh(0.5 * (Q_inv + Q_inv.T))
    Qh_inv = Ev @ np.diag(np.sqrt(ev)) @ Ev.T  # Q^{-1/2}
    K = np.asarray(sol.kernels[0])
    P = np.linalg.eigh(Qh_inv @ K @ Qh_inv)[1][:, ::-1]
    P = np.linalg.solve(Qh_inv, P)  # back to input coordinates
    P /= np.linalg.norm(P, axis=0)
    p = P[:, 0]
    rows = []
    for v in np.eye(d):
        flat = np.zeros(N)
        flat[:n1] = np.asarray(_pack(jnp.asarray(np.outer(u, v) + np.outer(v, u))))
        rows.append(flat)
    for q in np.eye(n):
        flat = np.zeros(N)
        flat[n1:] = (np.outer(p, q) + np.outer(q, p)).ravel()
        rows.append(flat)
    V = np.linalg.qr(np.array(rows).T)[0]
    top = np.real(vecs[:, order[:8]])
    top /= np.linalg.norm(top, axis=0)
    share = np.round(np.linalg.norm(top[:n1], axis=0), 3)
    print(f"  top eigenvectors' share in Λ₁:          {share}")
    share = np.round(np.linalg.norm(V.T @ top, axis=0), 3)
    print(f"  top eigenvectors' share in V (learned): {share}")
    neg = int(np.sum(w.real < 0))
    im = np.argmax(np.abs(w.imag))
    print(
        f"  eigenvalues of −J with negative real part: {neg}; the largest |Im| ({w[im]:.2f}) "
        f"has share {np.linalg.norm(vecs[:n1, im]) / np.linalg.norm(vecs[:, im]):.3f} in Λ₁"
    )
    # V₁ and {p qᵀ + q pᵀ} for q among the top 8 whitened directions of K^(2) only
    few = []
    for q in P[:, :8].T:
        flat = np.zeros(N)
        flat[n1:] = (np.outer(p, q) + np.outer(q, p)).ravel()
        few.append(flat)
    V_few = np.linalg.qr(np.concatenate([V[:, :d], np.array(few).T], axis=1))[0]
    for name, B in (
        ("V (both layers)", V),
        ("V₁ (Λ₁'s part)", V[:, :d]),
        ("V₁ and 8 of Δ₂'s", V_few),
    ):
        JB = J @ B
        M = np.eye(N) - (JB + B) @ np.linalg.solve(B.T @ JB, B.T)
        print(f"  −MJ, Newton on {name} ({B.shape[1]} products): {kappa(-M @ J)}")

    # the one-hidden-layer preconditioner (`solve`'s, k = 3) on the Λ₁ block, Δ₂ held fixed
    def block_residual(z, _):
        full = jnp.concatenate([z, y[n1:]])
        return ravel_pytree(_state_residual(unravel(full), args))[0][:n1], None

    M1 = _LearnedSubspace(directions=3).build(block_residual, y[:n1], None, jnp.asarray(True))
    M = np.eye(N)
    M[:n1, :n1] = np.stack([np.asarray(M1(e)) for e in jnp.eye(n1)], axis=1)
    print(f"  −MJ, `_LearnedSubspace(3)` on Λ₁ (9 products): {kappa(-M @ J)}")

    # the step of the precision coordinates (Λ₁, Λ₂): Δ₂ moves by R₂ − (∂Q⁻¹/∂Λ₁) R₁
    def q_inv(l1):
        lam = _unpack(l1, d)
        sigma = spd_inverse_logdet(0.5 * (lam + lam.T))[0]
        return spd_inverse_logdet(_layer_map(net, 1, X)(sigma))[0].ravel()

    P_inv = np.eye(N)
    P_inv[n1:, :n1] = -np.asarray(jax.jacfwd(q_inv)(y[:n1]))
    print(f"  −MJ, M = the precision coordinates' step: {kappa(-P_inv @ J)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--widths", type=float, nargs="+", default=[1000.0, 90.0])
    p.add_argument("--batch", type=int, default=256)
    a = p.parse_args()
    print(f"# {platform.node()} {jax.devices()[0].device_kind} jax {jax.__version__}")
    print(f"# deep_jacobian.py --n {a.n} --widths {' '.join(f'{w:g}' for w in a.widths)}")
    task = fj.datasets.deep_erf_teacher(n=a.n, n_test=10, d=32, depth=2, seed=0)
    for C in a.widths:
        report(task, C, a.batch)


if __name__ == "__main__":
    main()
