"""Sweeps sharded across devices (issue 6): same answers as on one device.

XLA's host device count is fixed when JAX starts, so the four-device run happens in a
subprocess with ``--xla_force_host_platform_device_count=4``; it compares, in that process,
the sharded sweeps against the same sweep on a single device.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import fls_jax as fj


_SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import fls_jax as fj

    assert len(jax.devices()) == 4, jax.devices()
    X, Y, Xt, Yt, _ = fj.datasets.single_index_teacher(n=12, n_test=7, d=4, seed=3)
    net = fj.FCN(width=1.0, sigma_w2=1.0, sigma_a2=1.0, noise=0.01, activation=fj.Erf())
    widths = np.array([2.0, 1000.0, 8.0, np.inf, 30.0])  # 5 widths: padded to 8 on 4 devices
    one = jax.devices()[:1]
    ref_s, ref_p = fj.sweep(net, X, Y, widths, Xt, Yt, schedule="parallel", devices=one)
    out = {}
    for schedule in ("parallel", "path"):
        s, p = fj.sweep(net, X, Y, widths, Xt, Yt, schedule=schedule)
        out[schedule] = dict(
            sigma=float(np.max(np.abs(np.asarray(s.sigma) - np.asarray(ref_s.sigma)))),
            mean=float(np.max(np.abs(np.asarray(p.mean) - np.asarray(ref_p.mean)))),
            test=float(np.max(np.abs(np.asarray(p.test_error) - np.asarray(ref_p.test_error)))),
            converged=np.asarray(s.converged).tolist(),
            residual=float(np.max(np.asarray(s.residual))),
            shape=list(s.sigma.shape),
        )
    # One device named, not the default: the sweep runs there (it ran on the default one).
    s, p = fj.sweep(net, X, Y, widths[:2], Xt, Yt, devices=jax.devices()[2:3])
    out["one"] = dict(
        devices=sorted(d.id for d in s.sigma.devices() | p.mean.devices()),
        sigma=float(np.max(np.abs(np.asarray(s.sigma) - np.asarray(ref_s.sigma)[:2]))),
    )
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def sharded():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    run = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    line = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def test_sharded_sweeps_equal_one_device(sharded):
    """One test for both schedules: the four-device subprocess (~50 s on 2 cores) then runs
    once, not once per pytest-xdist worker that a second test would land on."""
    r = sharded["parallel"]
    assert r["shape"] == [5, 4, 4]  # padding dropped, order of `widths` restored
    assert all(r["converged"])
    # The same per-width computation: equal up to rounding.
    assert r["sigma"] < 1e-12 and r["mean"] < 1e-12 and r["test"] < 1e-12
    r = sharded["path"]
    assert r["shape"] == [5, 4, 4]
    assert all(r["converged"]) and r["residual"] < 1e-10
    # Each device walks its own path (different warm starts): equal to the tolerance.
    assert r["sigma"] < 1e-8 and r["mean"] < 1e-8 and r["test"] < 1e-8
    assert sharded["one"]["devices"] == [2] and sharded["one"]["sigma"] < 1e-8


def test_sweep_needs_a_device(fcn_task):
    X, Y, Xt, Yt, _ = fcn_task
    net = fj.FCN(width=1.0, sigma_w2=1.0, sigma_a2=1.0, noise=0.01, activation=fj.Erf())
    with pytest.raises(ValueError, match="at least one device"):
        fj.sweep(net, X, Y, np.array([1.0]), Xt, Yt, devices=[])
    # They failed inside JAX ("'Device' object is not iterable", "'str' object has no
    # attribute 'process_index'", a bare AssertionError), or a string passed unnoticed.
    device = jax.devices()[0]
    for devices, exc, match in (
        (device, TypeError, "a sequence of jax.Device"),
        (["cpu"], TypeError, "jax.Device objects"),
        ([device, device], ValueError, "distinct"),
    ):
        with pytest.raises(exc, match=match):
            fj.sweep(net, X, Y, np.array([1.0, 2.0]), Xt, Yt, devices=devices)
