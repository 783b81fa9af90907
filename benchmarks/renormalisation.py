"""Linear FCNs: the exact scale mixture and its saddle point against sampled networks and the EoS.

    python benchmarks/renormalisation.py --widths 4 16 64 --chains 8 --samples 200 --burn-in 300

A linear FCN is exactly a scale mixture of its GP (`fls_jax.renormalise`, SPEC §5), so its
posterior needs no sampling. This script checks that claim against HMC-sampled networks
(`fls_jax.sampling`) and sets the Equations of State (`fls_jax.solve`) and the proportional-limit
saddle point beside both, on four linear-teacher tasks:

- the linear FCN task of `theory_vs_sampling.py` (d = 64, n = 48);
- the linear PatchCNN's task (d = 32, n = 128) under an FCN, where the EoS' train error was
  0.13–0.5× the sampled one (`benchmarks/logs/linear_cnn_vs_fcn_train_error_cpu.log`);
- the same with targets ×3 (an atypically large teacher: there the scale u moves);
- a depth-2 linear FCN with n = 128 > d = 32 (a singular GP-limit prior Q^(1), which the
  EoS refused before 2026-12-02; the stored logs predate that).

Printed per width: train and test error of the mean predictor for GP, EoS, mixture, saddle
and the sampled networks (± standard error over chains), the posterior scale u, and seconds.

`--eos-only` prints instead one table without sampling: the EoS against the exact mixture for
linear FCNs of depth 1, 2 and 3, with n = 48 < d = 64 and with n = 128 > d = 32 (singular
GP-limit priors for depth > 1), widths 4–256, typical targets and targets ×3: ratios of train
error, test error and mean ensemble variance, and the mixture's E[u].

A second table (`--proportional`, no sampling) grows n and C together at α = n/C = 2 on a
linear teacher with targets ×3, where the saddle point (the proportional-limit theory) should
approach the exact mixture: it prints both scales, both test errors and the mixture's seconds.
"""

import argparse
import itertools
import json
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax import sampling as fs  # noqa: E402


def cases(noise: float):
    lin64 = fj.datasets.linear_patch_teacher(48, 100, patch_size=64, patches=1, seed=2)
    lin32 = fj.datasets.linear_patch_teacher(128, 100, patch_size=8, patches=4, seed=0)
    big = lin32._replace(Y=3 * lin32.Y, Y_test=3 * lin32.Y_test)
    return [
        ("L=1 d=64 n=48", 1, lin64),
        ("L=1 d=32 n=128", 1, lin32),
        ("L=1 d=32 n=128 Yx3", 1, big),
        ("L=2 d=32 n=128", 2, lin32),
    ]


def _timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--noise", type=float, default=0.01, help="σ²")
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--samples", type=int, default=200, help="kept draws per chain")
    p.add_argument("--burn-in", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="renormalisation.json")
    p.add_argument(
        "--proportional",
        type=int,
        nargs="*",
        default=[32, 128, 512, 2048],
        help="n of the proportional-limit table (C = n/2); none to skip",
    )
    p.add_argument("--eos-only", action="store_true", help="only the EoS-vs-exact depth table")
    a = p.parse_args()
    if a.eos_only:
        eos_against_exact(a.noise)
        return
    print(
        f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}; {a.chains} chains × {a.samples} draws, burn-in {a.burn_in}"
    )
    print(
        f"{'case':19} {'C':>4} | {'train GP':>9} {'EoS':>9} {'mixture':>9} {'saddle':>9} "
        f"{'sampled':>17} | {'test GP':>9} {'EoS':>9} {'mixture':>9} {'saddle':>9} "
        f"{'sampled':>17} | {'u mixture':>12} {'u saddle':>8} | {'Rhat':>4} "
        f"{'s EoS':>5} {'s mix':>5} {'s smp':>5}"
    )
    rows = []
    for name, depth, t in cases(a.noise):

        def net(C, depth=depth):
            return fj.FCN(C, 1.0, 1.0, a.noise, fj.Linear(), depth=depth)

        gp = fj.renormalise(net(np.inf), t.X, t.Y, t.X_test, t.Y_test)
        for C in a.widths:
            mix, s_mix = _timed(
                lambda C=C, t=t: fj.renormalise(net(C), t.X, t.Y, t.X_test, t.Y_test)
            )
            sad = fj.renormalise(net(C), t.X, t.Y, t.X_test, t.Y_test, method="saddle")
            eos, s_eos = _timed(
                lambda C=C, t=t: fj.predict(fj.solve(net(C), t.X, t.Y), t.X_test, t.Y_test)
            )
            eos_train, eos_test = float(eos.train_error), float(eos.test_error)
            smp, s_smp = _timed(
                lambda C=C, t=t: fs.sample(
                    net(C),
                    t.X,
                    t.Y,
                    t.X_test,
                    key=jax.random.key(a.seed),
                    num_chains=a.chains,
                    num_samples=a.samples,
                    burn_in=a.burn_in,
                    method="hmc",
                )
            )
            est = fs.estimates(smp, t.Y, t.Y_test)
            row = dict(
                case=name,
                width=C,
                gp=dict(train=float(gp.train_error), test=float(gp.test_error)),
                eos=dict(train=eos_train, test=eos_test, sec=s_eos),
                mixture=dict(
                    train=float(mix.train_error),
                    test=float(mix.test_error),
                    u=float(mix.scale),
                    u_sd=float(mix.scale_sd),
                    converged=bool(mix.converged),
                    sec=s_mix,
                ),
                saddle=dict(
                    train=float(sad.train_error),
                    test=float(sad.test_error),
                    u=float(sad.scale),
                    converged=bool(sad.converged),
                ),
                sampled=dict(
                    train=float(est.train_error.value),
                    train_se=float(est.train_error.stderr),
                    test=float(est.test_error.value),
                    test_se=float(est.test_error.stderr),
                    rhat=float(smp.max_rhat),
                    sec=s_smp,
                ),
            )
            rows.append(row)
            r, s = row, row["sampled"]
            print(
                f"{name:19} {C:4d} | {r['gp']['train']:9.3e} {eos_train:9.3e} "
                f"{r['mixture']['train']:9.3e} {r['saddle']['train']:9.3e} "
                f"{s['train']:9.3e}±{s['train_se']:7.1e} | {r['gp']['test']:9.3e} "
                f"{eos_test:9.3e} {r['mixture']['test']:9.3e} {r['saddle']['test']:9.3e} "
                f"{s['test']:9.3e}±{s['test_se']:7.1e} | "
                f"{r['mixture']['u']:6.3f}±{r['mixture']['u_sd']:5.3f} {r['saddle']['u']:8.4f} | "
                f"{s['rhat']:4.2f} {s_eos:5.2f} {s_mix:5.2f} {s_smp:5.1f}",
                flush=True,
            )
    proportional(a.proportional, a.noise)
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"# wrote {a.out}")


def eos_against_exact(noise):
    """Deep linear FCNs at n < d and n > d: the EoS' predictions as ratios to the exact
    posterior's."""
    tasks = [
        ("d=64 n=48", fj.datasets.linear_patch_teacher(48, 200, patch_size=64, patches=1, seed=2)),
        ("d=32 n=128", fj.datasets.linear_patch_teacher(128, 200, patch_size=8, patches=4, seed=0)),
    ]
    print(
        f"{'task':>10} {'targets':>7} {'L':>2} {'C':>5} | {'train EoS/exact':>15} {'test':>7} "
        f"{'variance':>8} | {'E[u]':>6} {'converged':>9} {'s EoS':>6}"
    )
    for (name, t), scale in itertools.product(tasks, (1.0, 3.0)):
        Y, Y_test = scale * t.Y, scale * t.Y_test
        for depth in (1, 2, 3):
            for C in (4.0, 16.0, 64.0, 256.0):
                net = fj.FCN(C, 1.0, 1.0, noise, fj.Linear(), depth=depth)
                mix = fj.renormalise(net, t.X, Y, t.X_test, Y_test)
                t0 = time.perf_counter()
                sol = fj.solve(net, t.X, Y)
                pred = jax.block_until_ready(fj.predict(sol, t.X_test, Y_test))
                sec, sol_ok = time.perf_counter() - t0, bool(sol.converged)
                var = float(np.mean(pred.variance)) / float(np.mean(mix.variance))
                print(
                    f"{name:>10} {'×' + format(scale, '.0f'):>7} {depth:2d} {C:5.0f} | "
                    f"{float(pred.train_error) / float(mix.train_error):15.3f} "
                    f"{float(pred.test_error) / float(mix.test_error):7.3f} {var:8.3f} | "
                    f"{float(mix.scale):6.3f} {sol_ok!s:>9} {sec:6.1f}",
                    flush=True,
                )


def proportional(ns, noise):
    """The saddle against the exact mixture as n, C → ∞ at n/C = 2 (d = 2n, targets ×3)."""
    if not ns:
        return
    print(
        f"\n{'n':>5} {'C':>5} | {'u mixture':>14} {'u saddle':>9} {'rel. gap':>9} | "
        f"{'test mixture':>12} {'test saddle':>12} {'rel. gap':>9} | {'s mix':>5}"
    )
    for n in ns:
        t = fj.datasets.linear_patch_teacher(n, 200, patch_size=2 * n, patches=1, seed=3)
        Y, Y_test = 3 * t.Y, 3 * t.Y_test
        net = fj.FCN(n / 2, 1.0, 1.0, noise, fj.Linear())
        mix, sec = _timed(
            lambda net=net, t=t, Y=Y, Yt=Y_test: fj.renormalise(net, t.X, Y, t.X_test, Yt)
        )
        sad = fj.renormalise(net, t.X, Y, t.X_test, Y_test, method="saddle")
        du = abs(float(mix.scale) / float(sad.scale) - 1)
        de = abs(float(sad.test_error) / float(mix.test_error) - 1)
        print(
            f"{n:5d} {n // 2:5d} | {float(mix.scale):7.4f}±{float(mix.scale_sd):6.4f} "
            f"{float(sad.scale):9.4f} {du:9.2e} | {float(mix.test_error):12.4e} "
            f"{float(sad.test_error):12.4e} {de:9.2e} | {sec:5.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
