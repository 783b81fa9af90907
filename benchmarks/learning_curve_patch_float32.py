"""The finite-width PatchCNN learning curve in float32 against float64 (a hand run).

Runs `fj.learning_curve` on `benchmarks/learning_curve_patch.py`'s task (a linear teacher on
d = 16 inputs in 4 patches of 4, targets ×3, a pool of M = 400, C = 4, σ² = 0.01), linear
and erf, once per precision in its own process (JAX's float64 switch is global), and prints
E_g, U's relative (Frobenius) difference and the convergence flags, with the float32 call's
time after compiling. With `--outputs`, the same for `benchmarks/learning_curve_outputs.py`'s
default task instead: FCNs with two outputs (U is 2×2), on the same pool without patches;
with `--patch-outputs`, two outputs of a PatchCNN. float32 runs twice: with JAX's float64
switch off, and with it on and float32 data and network (the last column: its largest
relative difference from the first in E_g and U, and its dtype). Before stop 61 the
m-output curves failed there with a TypeError (a float64 constant met a float32 loop carry).

    python benchmarks/learning_curve_patch_float32.py
    python benchmarks/learning_curve_patch_float32.py --outputs
"""

import json
import os
import subprocess
import sys
import time

import numpy as np


NS = [8.0, 16.0, 32.0, 64.0]
MODES = ("--outputs", "--patch-outputs")
RUNS = {"64": (True, False), "32": (False, True), "32x64": (True, True)}  # (x64, float32 data)


def _one(x64: bool, mode: str, data32: bool) -> dict:
    import equinox as eqx
    import jax

    jax.config.update("jax_enable_x64", x64)
    import fls_jax as fj

    size = 16 if mode == "--outputs" else 4
    task = fj.datasets.linear_patch_teacher(400, 1, patch_size=size, patches=16 // size, seed=3)
    dtype = np.float32 if data32 else np.float64
    X, Y = np.asarray(task.X, dtype), 3 * np.asarray(task.Y, dtype)
    if mode in MODES:  # learning_curve_outputs.py's default task
        Y = np.stack([Y[:, 0], 2 * np.tanh(X[:, 1]) + 0.5 * Y[:, 0]], axis=1)
    ns = NS
    if mode == "--patch-outputs":
        X, Y, ns = X[:120], Y[:120], NS[:3]
    out = {}
    for name, act in (("linear", fj.Linear()), ("erf", fj.Erf())):
        if mode == "--outputs":
            net = fj.FCN(4.0, 1.0, 1.0, 0.01, act)
        elif mode == "--patch-outputs":
            net = fj.PatchCNN(16.0, 1.0, 1.0, 0.01, act, patch_size=4)
        else:
            net = fj.PatchCNN(4.0, 1.0, 1.0, 0.01, act, patch_size=4)
        if data32 and x64:  # the network's leaves are float64 under x64: cast them too
            net = jax.tree.map(lambda a: a.astype(np.float32) if eqx.is_array(a) else a, net)
        curve = fj.learning_curve(net, X, Y, ns)
        jax.block_until_ready(curve.test_error)
        start = time.perf_counter()
        curve = fj.learning_curve(net, X, Y, ns)
        jax.block_until_ready(curve.test_error)
        out[name] = dict(
            error=np.asarray(curve.test_error, float).tolist(),
            U=np.asarray(curve.scale_matrix, float).tolist(),
            converged=np.asarray(curve.converged).tolist(),
            dtype=str(curve.test_error.dtype),
            seconds=time.perf_counter() - start,
        )
    return out


def main() -> None:
    mode = next((a for a in sys.argv[1:] if a in MODES), "")
    if len(sys.argv) > 1 and sys.argv[1] in RUNS:
        x64, data32 = RUNS[sys.argv[1]]
        print("RESULT " + json.dumps(_one(x64, mode, data32)))
        return
    runs = {}
    for bits in RUNS:
        env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
        done = subprocess.run(
            [sys.executable, __file__, bits, *([mode] if mode else [])],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        runs[bits] = json.loads(line[len("RESULT ") :])
    print(
        "activation  n   E_g float64   E_g float32   rel. diff   |ΔU|/|U|   converged (64/32)"
        "   float32 under x64: diff, converged"
    )
    for name in ("linear", "erf"):
        a, b, c = runs["64"][name], runs["32"][name], runs["32x64"][name]
        for i, n in enumerate(NS[: len(a["error"])]):
            e64, e32, e32x = a["error"][i], b["error"][i], c["error"][i]
            U64, U32, U32x = (np.asarray(r["U"][i]) for r in (a, b, c))
            du = np.linalg.norm(U32 - U64) / np.linalg.norm(U64)
            dx = max(abs(e32x / e32 - 1), np.linalg.norm(U32x - U32) / np.linalg.norm(U32))
            print(
                f"{name:10s} {n:3.0f}  {e64:.6e}  {e32:.6e}  {abs(e32 / e64 - 1):9.2e}  "
                f"{du:9.2e}   {a['converged'][i]}/{b['converged'][i]}"
                f"         {dx:9.2e}, {c['converged'][i]}"
            )
        print(
            f"  {name}: dtypes {a['dtype']}/{b['dtype']}/{c['dtype']} (float32 under x64); "
            f"after compiling {a['seconds']:.1f} s (float64), {b['seconds']:.1f} s (float32), "
            f"{c['seconds']:.1f} s (float32 under x64) for {len(a['error'])} sizes"
        )


if __name__ == "__main__":
    main()
