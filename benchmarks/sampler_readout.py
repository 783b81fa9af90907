"""HMC with the readout integrated out or sampled: calibration against exact posteriors, and speed.

    python benchmarks/sampler_readout.py --seeds 10 --chains 16 --samples 200 --burn-in 300

`fls_jax.sampling.sample(readout="marginal")` runs its chains on the hidden weights only and
draws the readout exactly from its Gaussian conditional (Rao–Blackwellised estimates);
`readout="joint"` puts the readout in the chain. This script runs both, side by side, with HMC:

1. Calibration. For linear FCNs the exact posterior is known (`fls_jax.renormalise`, a scale
   mixture of the GP). Each case is sampled with `--seeds` independent seeds; per readout it
   prints the pooled estimate of the train and test error against the exact value (z of the
   pooled mean, from the spread over seeds), and the spread of the single-run z-scores (the
   stated error bar over chains against the exact answer: sd ≈ 1 when error bars are honest).
2. Efficiency, on the same cases and on two erf FCNs (no exact answer there): effective
   sample sizes of the first layer's Σ̂ (its worst entry) and of the test predictions (median),
   seconds per run after compilation, and ESS per second.

Tasks: the linear-teacher task of `renormalisation.py` (d = 32, n = 128, σ² = 0.01) at C = 4
standard, C = 4 and 16 mean-field; a single-index erf teacher (d = 8, n = 32) at C = 8,
standard (σ² = 1e-3) and mean-field (σ² = 1e-2).
"""

import argparse
import json
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax import sampling as fs  # noqa: E402


def cases():
    lin = fj.datasets.linear_patch_teacher(128, 100, patch_size=8, patches=4, seed=0)
    si = fj.datasets.single_index_teacher(n=32, n_test=50, d=8, scale=1.0, seed=5)
    mf = dict(scaling="mean_field")
    return [
        ("linear C=4", fj.FCN(4.0, 1.0, 1.0, 1e-2, fj.Linear()), lin),
        ("linear mf C=4", fj.FCN(4.0, 1.0, 1.0, 1e-2, fj.Linear(), **mf), lin),
        ("linear mf C=16", fj.FCN(16.0, 1.0, 1.0, 1e-2, fj.Linear(), **mf), lin),
        ("erf C=8", fj.FCN(8.0, 1.0, 1.0, 1e-3, fj.Erf()), si),
        ("erf mf C=8", fj.FCN(8.0, 1.0, 1.0, 1e-2, fj.Erf(), **mf), si),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=10, help="runs per case and readout")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--samples", type=int, default=200, help="kept draws per chain")
    p.add_argument("--burn-in", type=int, default=300)
    p.add_argument("--out", default="sampler_readout.json")
    a = p.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}; HMC, {a.chains} chains × {a.samples} draws, "
        f"burn-in {a.burn_in}, {a.seeds} seeds per row"
    )
    print(
        f"{'case':15} {'readout':8} | {'test: exact':>11} {'pooled':>17} {'z':>6} "
        f"{'sd z':>5} {'max|z|':>6} | {'train: exact':>12} {'pooled':>17} {'z':>6} "
        f"{'sd z':>5} | {'ESS Σ':>6} {'ESS f':>6} {'R̂':>5} {'s/run':>6} {'ESS Σ/s':>7}"
    )
    rows = []
    for name, net, t in cases():
        linear = isinstance(net.activation, fj.Linear)
        exact = fj.renormalise(net, t.X, t.Y, t.X_test, t.Y_test) if linear else None
        for readout in ("joint", "marginal"):

            def run(seed, net=net, t=t, readout=readout):
                smp = fs.sample(
                    net,
                    t.X,
                    t.Y,
                    t.X_test,
                    key=jax.random.key(seed),
                    num_chains=a.chains,
                    num_samples=a.samples,
                    burn_in=a.burn_in,
                    method="hmc",
                    readout=readout,
                )
                jax.block_until_ready(smp.f_test)
                return smp

            run(10_000)  # compile
            res = []
            for seed in range(a.seeds):
                t0 = time.perf_counter()
                smp = run(seed)
                sec = time.perf_counter() - t0
                est = fs.estimates(smp, t.Y, t.Y_test)
                res.append(
                    dict(
                        test=float(est.test_error.value),
                        test_se=float(est.test_error.stderr),
                        train=float(est.train_error.value),
                        train_se=float(est.train_error.stderr),
                        ess_sigma=float(np.min(smp.ess_sigma)),
                        ess_f=float(np.median(smp.ess_f_test)),
                        rhat=smp.max_rhat,
                        sec=sec,
                    )
                )

            def col(k, res=res):
                return np.array([r[k] for r in res])

            row = dict(case=name, readout=readout, runs=res)
            cells = []
            for obs in ("test", "train"):
                vals, ses = col(obs), col(obs + "_se")
                pooled, pooled_se = vals.mean(), vals.std(ddof=1) / np.sqrt(len(vals))
                if exact is None:
                    cells.append(f"{'':>11} {pooled:9.3e}±{pooled_se:7.1e} {'':>6} {'':>5}")
                    cells[-1] += f" {'':>6}" if obs == "test" else ""
                    continue
                ex = float(exact.test_error if obs == "test" else exact.train_error)
                z = (ex - vals) / ses
                row[obs] = dict(
                    exact=ex,
                    pooled=pooled,
                    pooled_se=pooled_se,
                    z_pooled=(ex - pooled) / pooled_se,
                    z_sd=float(z.std(ddof=1)),
                    z_max=float(np.abs(z).max()),
                )
                cells.append(
                    f"{ex:11.4e} {pooled:9.3e}±{pooled_se:7.1e} {(ex - pooled) / pooled_se:+6.2f} "
                    f"{z.std(ddof=1):5.2f}" + (f" {np.abs(z).max():6.2f}" if obs == "test" else "")
                )
            ess_s, sec = col("ess_sigma").mean(), col("sec").mean()
            row.update(ess_sigma=ess_s, ess_f=col("ess_f").mean(), rhat=col("rhat").max(), sec=sec)
            rows.append(row)
            print(
                f"{name:15} {readout:8} | {cells[0]} | {cells[1]} | {ess_s:6.0f} "
                f"{row['ess_f']:6.0f} {row['rhat']:5.3f} {sec:6.2f} {ess_s / sec:7.1f}",
                flush=True,
            )
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"# wrote {a.out}")


if __name__ == "__main__":
    main()
