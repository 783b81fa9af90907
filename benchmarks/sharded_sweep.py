"""Sweep throughput on one device vs sharded across D devices, in one run.

    python benchmarks/sharded_sweep.py --devices 4 --n 128 --d 16 --widths 16

On a CPU the D devices are XLA host devices (``--xla_force_host_platform_device_count``)
sharing the machine's cores, so the speed-up is bounded by the core count; on a multi-GPU
host they are the GPUs. Each configuration is compiled once (timed separately) and then
run twice; the table reports the faster run and the agreement with the one-device sweep.
"""

import argparse
import os
import platform
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=4, help="host devices to force on CPU")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--widths", type=int, default=16)
    p.add_argument("--schedules", default="parallel,path")
    args = p.parse_args()
    if "jax" in sys.modules:
        raise RuntimeError("run as a script: the device count is fixed when JAX starts")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import fls_jax as fj

    devices = jax.devices()
    X, Y, Xt, Yt, _ = fj.datasets.single_index_teacher(n=args.n, n_test=500, d=args.d, seed=0)
    net = fj.FCN(width=1.0, sigma_w2=1.0, sigma_a2=1.0, noise=0.01, activation=fj.Erf())
    widths = np.geomspace(4.0, 4096.0, args.widths)
    print(
        f"# {platform.node()} {platform.processor()} cores={os.cpu_count()} "
        f"devices={devices} jax {jax.__version__} {time.strftime('%Y-%m-%d')}"
    )
    print(f"# erf FCN n={args.n} d={args.d}, {args.widths} widths geometric in 4..4096")
    print(
        "| schedule | devices | first call (compile + run) | run | converged | "
        "max |Δ mean| vs 1 device |"
    )
    print("|---|---|---|---|---|---|")
    for schedule in args.schedules.split(","):
        ref = None
        for devs in (devices[:1], devices):
            t0 = time.perf_counter()
            out = fj.sweep(net, X, Y, widths, Xt, Yt, schedule=schedule, devices=devs)
            jax.block_until_ready(out)
            first = time.perf_counter() - t0
            runs = []
            for _ in range(2):
                t0 = time.perf_counter()
                out = fj.sweep(net, X, Y, widths, Xt, Yt, schedule=schedule, devices=devs)
                jax.block_until_ready(out)
                runs.append(time.perf_counter() - t0)
            sols, preds = out
            ref = preds.mean if ref is None else ref
            diff = float(np.max(np.abs(np.asarray(preds.mean) - np.asarray(ref))))
            print(
                f"| {schedule} | {len(devs)} | {first:.2f} s | {min(runs):.2f} s | "
                f"{int(np.sum(sols.converged))}/{args.widths} | {diff:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
