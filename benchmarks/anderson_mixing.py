"""Anderson's mixing on the three-layer erf FCN sweep: the default chain with its Anderson
settings varied (issues 4 and 6).

    python benchmarks/anderson_mixing.py --n 128 --settings 1 0.1/100 a1/100/10

Each setting is `[p][a]β[/patience[/growth]]`: β the mixing, `a` for `adaptive_mixing=True`,
the patience (default 40) and `max_growth` (default ∞); `p` adds the prototype preconditioner
`PrecisionStep` below (the step of the precision coordinates, `deep_jacobian.py`), which like
the one-layer one is built at warm starts only. The chain is that Anderson, then
the deep default's damped Newton. Data: `deep_erf_teacher(n, n_test=100, d=32, depth=2,
seed=0)`; network of `deep_sweep.py`; widths geometric from 30000 to 90, path schedule.
Prints, per setting, the time (compilation included), the iterations and the stages per
width.
"""

import argparse
import time
from typing import Any

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from deep_sweep import NOISE, SA2, SW2  # noqa: E402
from jaxtyping import Array  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._anderson import AbstractPreconditioner  # noqa: E402
from fls_jax._free_energy import _layer_map  # noqa: E402
from fls_jax._linalg import _unpack, spd_inverse_logdet  # noqa: E402
from fls_jax._solve import (  # noqa: E402
    _ANDERSON_MEMORY,
    _ANDERSON_PATIENCE,
    _default_rtol,
    _newton,
)


class _Step(eqx.Module):
    net: Any
    X: Array
    sigma: Array
    Q_inv: Array
    active: Array

    def __call__(self, f):
        R1 = _unpack(f[0], self.sigma.shape[0])
        dsigma = -self.sigma @ R1 @ self.sigma
        _, dQ = jax.jvp(_layer_map(self.net, 1, self.X), (self.sigma,), (dsigma,))
        dQ_inv = -self.Q_inv @ dQ @ self.Q_inv
        return (f[0], f[1] - jnp.where(self.active, dQ_inv, 0.0))


class PrecisionStep(AbstractPreconditioner):
    """Depth 2 only, a prototype: M R = (R₁, R₂ − (∂Q^(1)⁻¹/∂Λ₁) R₁), the step that
    Λ₂ ← Λ₂ + R₂ would take in the solver's unknowns (Λ₁, Δ₂), linearised at the root
    find's start. In the precision coordinates the EoS Jacobian has a real spectrum
    (`deep_jacobian.py`); in the shifts it has a complex, at narrow widths unstable, pair."""

    def build(self, fn, y, args, active):
        net, X, _ = args
        lam1 = _unpack(y[0], X.shape[1])
        sigma = spd_inverse_logdet(0.5 * (lam1 + lam1.T))[0]
        Q_inv = spd_inverse_logdet(_layer_map(net, 1, X)(sigma))[0]
        return _Step(net=net, X=X, sigma=sigma, Q_inv=Q_inv, active=active)


def anderson(setting: str) -> fj.Anderson:
    precondition = setting.startswith("p")
    setting = setting.removeprefix("p")
    adaptive = setting.startswith("a")
    parts = setting.removeprefix("a").split("/")
    beta = float(parts[0])
    patience = int(parts[1]) if len(parts) > 1 else _ANDERSON_PATIENCE
    growth = float(parts[2]) if len(parts) > 2 else float("inf")
    return fj.Anderson(
        rtol=_default_rtol(jnp.float64),
        atol=0.0,
        memory=_ANDERSON_MEMORY,
        mixing=beta,
        patience=patience,
        adaptive_mixing=adaptive,
        max_growth=growth,
        preconditioner=PrecisionStep() if precondition else None,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--widths", type=int, default=13)
    p.add_argument("--settings", nargs="+", default=["1", "0.1/100"])
    a = p.parse_args()
    task = fj.datasets.deep_erf_teacher(n=a.n, n_test=100, d=32, depth=2, seed=0)
    net = fj.FCN(width=1.0, sigma_w2=SW2, sigma_a2=SA2, noise=NOISE, activation=fj.Erf(), depth=2)
    widths = np.geomspace(30000, 90, a.widths)
    print(f"# three-layer erf FCN, n = {a.n}, {a.widths} widths 30000 … 90; jax {jax.__version__}")
    for setting in a.settings:
        chain = (anderson(setting), _newton(jnp.float64, 2))
        t0 = time.perf_counter()
        sols, preds = fj.sweep(net, task.X, task.Y, widths, task.X_test, task.Y_test, solver=chain)
        jax.block_until_ready(preds.mean)
        t = time.perf_counter() - t0
        steps, stages = np.asarray(sols.num_steps), np.asarray(sols.num_stages)
        print(
            f"{setting:>10}: {t:6.1f} s, converged {int(sols.converged.sum())}/{len(widths)}, "
            f"max residual {float(sols.residual.max()):.1e}, iterations {int(steps.sum())}"
        )
        print(f"{'':>12}iterations per width {steps.tolist()}")
        print(f"{'':>12}stages per width     {stages.tolist()}")


if __name__ == "__main__":
    main()
