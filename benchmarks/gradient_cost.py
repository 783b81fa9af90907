"""Cost of a gradient through the solved EoS, relative to the solve itself (issue 5).

    python benchmarks/gradient_cost.py --arch cnn --n 512 --widths 32

For one width: the time of solve + predict (the test error), and of value_and_grad of that
test error with respect to (σ², σ_w², σ_a², C) by implicit differentiation; their ratio is the
figure of merit (target ≤ 2). For many widths: the gradient of every width's test error, as a
vmap of the single-width gradient and through a path sweep (`schedule="path"`).
All timings after compilation (reported separately), best of `--repeat`.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


FIELDS = ("noise", "sigma_w2", "sigma_a2", "width")


def _time(f, *args, repeat=1):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t0)
    return first, best


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", choices=["cnn", "fcn"], default="cnn")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--width", type=float, default=16.0)
    p.add_argument("--widths", type=int, default=32, help="widths for the batched gradient")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--no-vmap", action="store_true", help="skip the vmapped gradient")
    a = p.parse_args()
    if a.arch == "cnn":
        S, P = 16, 8
        task = fj.datasets.linear_patch_teacher(a.n, 200, S, P, seed=0)
        net = fj.PatchCNN(
            patch_size=S,
            width=a.width,
            sigma_w2=1.0,
            sigma_a2=1.0,
            noise=0.01,
            activation=fj.Linear(),
        )
        what = f"linear PatchCNN n={a.n} S={S} P={P}"
    else:
        task = fj.datasets.single_index_teacher(a.n, 200, 32, seed=0)
        net = fj.FCN(width=a.width, sigma_w2=1.0, sigma_a2=1.0, noise=0.01, activation=fj.Erf())
        what = f"erf FCN n={a.n} d=32"
    X, Y, Xt, Yt = (jnp.asarray(v) for v in (task.X, task.Y, task.X_test, task.Y_test))
    print(
        f"# {what}, C={a.width}; {platform.node()} {jax.default_backend()} "
        f"{time.strftime('%Y-%m-%d')}"
    )

    def with_theta(theta):
        return eqx.tree_at(lambda m: [getattr(m, f) for f in FIELDS], net, list(theta))

    def test_error(theta):
        sol = fj.solve(with_theta(theta), X, Y)
        return fj.predict(sol, Xt, Yt).test_error

    theta = jnp.asarray([float(getattr(net, f)) for f in FIELDS])
    value = jax.jit(test_error)
    vgrad = jax.jit(jax.value_and_grad(test_error))
    c1, t_solve = _time(value, theta, repeat=a.repeat)
    c2, t_grad = _time(vgrad, theta, repeat=a.repeat)
    print(f"solve+predict        : {t_solve:8.3f} s   (first call {c1:.2f} s)")
    print(f"value_and_grad (4 θ) : {t_grad:8.3f} s   (first call {c2:.2f} s)")
    print(f"ratio grad/solve     : {t_grad / t_solve:8.2f}")

    widths = jnp.asarray(np.geomspace(4, 4096, a.widths))

    def error_at(theta, C):
        return test_error(theta.at[3].set(C))

    if not a.no_vmap:
        vm = jax.jit(jax.vmap(jax.value_and_grad(error_at), in_axes=(None, 0)))
        c3, t_vm = _time(vm, theta, widths, repeat=a.repeat)
        print(
            f"vmap of grad, {a.widths} widths: {t_vm:8.3f} s (first call {c3:.2f} s), "
            f"{t_vm / a.widths:.3f} s/width"
        )

    def path_errors(theta):
        _, pred = fj.sweep(with_theta(theta), X, Y, widths, Xt, Yt, schedule="path")
        return pred.test_error

    jac = jax.jit(jax.jacrev(path_errors))
    c4, t_path = _time(jac, theta, repeat=a.repeat)
    pv = jax.jit(path_errors)
    c5, t_pv = _time(pv, theta, repeat=a.repeat)
    print(
        f"path sweep, {a.widths} widths: values {t_pv:8.3f} s, Jacobian of all test errors "
        f"{t_path:8.3f} s (first calls {c5:.2f} / {c4:.2f} s); ratio {t_path / t_pv:.2f}"
    )


if __name__ == "__main__":
    main()
