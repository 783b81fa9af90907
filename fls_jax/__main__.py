"""Command line: ``python -m fls_jax sweep`` runs a width sweep on a built-in task (a teacher
task, or with ``--task digits`` the parity of scikit-learn's handwritten digits)."""

import argparse
import os
import sys
import time
from typing import Any

import jax


def _at_least(least: int):
    """An argparse type: an integer ≥ `least`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be ≥ {least}, got {value}")
        return value

    return parse


def _positive(allow_inf: bool = False):
    """An argparse type: a float > 0, finite unless `allow_inf`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0 or (value == float("inf") and not allow_inf):
            rule = "> 0" if allow_inf else "> 0 and finite"
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fls_jax", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "sweep",
        help="solve the EoS across widths on a built-in task; print a table, write a plot",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--arch", choices=["patchcnn", "fcn"], default="patchcnn")
    s.add_argument(
        "--task",
        choices=["teacher", "digits"],
        default="teacher",
        help="teacher: a linear patch teacher (patchcnn) or a single-index erf teacher (fcn); "
        "digits: even vs odd handwritten digits (8×8 pixels; patchcnn: 4×4 patches, S = 16, "
        "P = 4; needs scikit-learn, the [data] extra)",
    )
    s.add_argument("--activation", choices=["linear", "erf", "relu"], default="linear")
    s.add_argument("--n", type=_at_least(2), default=64, help="training points")
    s.add_argument("--n-test", type=_at_least(1), default=1000, help="test points")
    s.add_argument("--patch-size", type=_at_least(1), help="S (patchcnn teacher task; default 8)")
    s.add_argument("--patches", type=_at_least(1), help="P (patchcnn teacher task; default 4)")
    s.add_argument("--d", type=_at_least(1), help="input dimension (fcn teacher task; default 16)")
    s.add_argument("--noise", type=_positive(), default=0.01, help="σ²")
    s.add_argument("--sigma-w2", type=_positive(), default=1.0)
    s.add_argument("--sigma-a2", type=_positive(), default=1.0)
    s.add_argument("--scaling", choices=["standard", "mean_field"], default="standard")
    s.add_argument(
        "--depth",
        type=_at_least(1),
        default=1,
        help="hidden layers L (deep networks: docs/deep.md)",
    )
    s.add_argument(
        "--widths",
        type=_positive(allow_inf=True),
        nargs="+",
        default=[2.0**k for k in range(2, 11)],
        help="C (each once; the GP limit, C = inf, is always added)",
    )
    s.add_argument("--seed", type=_at_least(0), default=0)
    s.add_argument("--plot", default="fls_sweep.png", help="PNG to write ('' for none)")
    s.add_argument(
        "--solver",
        choices=["default", "descent", "whitened-descent", "anderson-newton"],
        default="default",
        help="solve's solver chain (default: descent for one hidden layer with S ≤ 64, else "
        "anderson-newton); whitened-descent was 2–8× faster on the digits' FCN but may "
        "follow another branch where F has several minima (benchmarks/RESULTS.md)",
    )
    s.add_argument(
        "--past-folds",
        action="store_true",
        help="where the continuation in 1/C stops short of a width (a fold of its branch of "
        "solutions), go on through the fold by dense pseudo-arclength continuation (float64, "
        "at most 3000 unknowns; docs/deep.md); adds columns of the folds passed and of F's "
        "Hessian index (0: a minimum of F, 1: a saddle; fls_jax.hessian_index)",
    )
    s.add_argument(
        "--minimise",
        action="store_true",
        help="after the continuation, minimise the free energy at each width from where it "
        "got to (matrix-free trust-region Newton-CG; float64; docs/deep.md): a solution where "
        "the continuation stopped short (a fold, a stall) or ended at a saddle of F; adds a "
        "column of F's Hessian index (0: a minimum of F; fls_jax.hessian_index)",
    )
    s.add_argument("--float32", action="store_true", help="run in float32 (less accurate)")
    s.add_argument(
        "--xla-cache",
        default=None,
        metavar="DIR",
        help="where compiled programs are kept between runs ('' for nowhere); default: "
        "JAX_COMPILATION_CACHE_DIR if set, else $XDG_CACHE_HOME/fls_jax/xla (~/.cache/…)",
    )
    return p


def _xla_cache_dir(arg: str | None, configured: str | None, env: dict[str, str]) -> str | None:
    """The persistent compilation cache the command line uses: `--xla-cache` if given ('' for
    none), else one already configured (JAX reads JAX_COMPILATION_CACHE_DIR), else the user's
    cache folder. A second run of the same sweep then skips XLA's compilation (README)."""
    if arg is not None:
        return arg or None
    if configured:
        return configured
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fls_jax", "xla")


def _refuse(a: argparse.Namespace, fields: tuple[str, ...], case: str) -> None:
    """Exit with a message naming the given options among `fields` that `case` has no use for."""
    given = [f for f in fields if getattr(a, f) is not None]
    if given:
        flags = ", ".join("--" + f.replace("_", "-") for f in given)
        raise SystemExit(f"{flags}: not for {case}")


def _sweep(a: argparse.Namespace) -> int:
    import numpy as np

    import fls_jax as fj

    activation = {"linear": fj.Linear, "erf": fj.Erf, "relu": fj.ReLU}[a.activation]()
    common: dict[str, Any] = dict(
        width=1.0,
        sigma_w2=a.sigma_w2,
        sigma_a2=a.sigma_a2,
        noise=a.noise,
        activation=activation,
        scaling=a.scaling,
        depth=a.depth,
    )
    if a.task == "digits":
        _refuse(a, ("patch_size", "patches", "d"), "--task digits (8×8 images, 4×4 patches)")
        task = fj.datasets.digits(a.n, a.n_test, "parity", patch_side=4, seed=a.seed)
        if a.arch == "patchcnn":
            net = fj.PatchCNN(patch_size=16, **common)
            what = "PatchCNN S=16 P=4, digits (even vs odd)"
        else:
            net = fj.FCN(**common)
            what = "FCN d=64, digits (even vs odd)"
    elif a.arch == "patchcnn":
        _refuse(a, ("d",), "--arch patchcnn (d = patch size × patches)")
        S = 8 if a.patch_size is None else a.patch_size
        P = 4 if a.patches is None else a.patches
        task = fj.datasets.linear_patch_teacher(a.n, a.n_test, S, P, a.seed)
        net = fj.PatchCNN(patch_size=S, **common)
        what = f"PatchCNN S={S} P={P}, linear patch teacher"
    else:
        _refuse(a, ("patch_size", "patches"), "--arch fcn (use --d)")
        d = 16 if a.d is None else a.d
        task = fj.datasets.single_index_teacher(a.n, a.n_test, d, seed=a.seed)
        net = fj.FCN(**common)
        what = f"FCN d={d}, single-index erf teacher"
    widths = [*sorted({C for C in a.widths if C != float("inf")}), float("inf")]
    print(
        f"fls_jax width sweep: {what}, {a.activation}, depth {a.depth}, n={a.n}, σ²={a.noise}, "
        f"{a.scaling}"
    )
    t0 = time.perf_counter()
    solver = None if a.solver == "default" else a.solver
    sol, pred = fj.sweep(
        net,
        task.X,
        task.Y,
        np.asarray(widths),
        task.X_test,
        task.Y_test,
        solver=solver,
        past_folds=a.past_folds,
        minimise=a.minimise,
    )
    jax.block_until_ready(pred)
    elapsed = time.perf_counter() - t0
    sig = np.asarray(sol.sigma)
    if task.teacher is None:  # real data: no teacher direction to align with
        alignment = ["-"] * len(widths)
    else:
        w = np.asarray(task.teacher)
        align = np.einsum("i,kij,j->k", w, sig, w) / np.trace(sig, axis1=1, axis2=2)
        alignment = [f"{v:.3f}" for v in align]
    # Deep networks: the last hidden layer's stretch λ_max(Q⁻¹K^(L)) − 1 (docs/deep.md).
    deep = a.depth > 1
    stretch_head = " K stretch" if deep else ""
    folds_head = " folds" if a.past_folds else ""
    folds_head += " index" if a.past_folds or a.minimise else ""
    index = np.asarray(fj.hessian_index(sol)) if a.past_folds or a.minimise else None
    head = (
        f"{'width':>8} {'chi':>9} {'train err':>10} {'test err':>10} {'draw err':>10} "
        f"{'lam_max(Σ)':>10} {'w*ΣW*/trΣ':>9}{stretch_head} {'steps':>5}{folds_head} "
        f"{'resid':>8} conv"
    )
    print(head)
    print("-" * len(head))
    for k, C in enumerate(widths):
        label = "GP" if np.isinf(C) else f"{C:g}"
        stretch = f" {float(pred.layer_stretch[k, -1]):9.3g}" if deep else ""
        folds = f" {int(sol.num_folds[k]):5d}" if a.past_folds else ""
        folds += f" {int(index[k]):5d}" if index is not None else ""
        print(
            f"{label:>8} {float(pred.chi[k]):9.3g} {float(pred.train_error[k]):10.4g} "
            f"{float(pred.test_error[k]):10.4g} {float(pred.test_error_draw[k]):10.4g} "
            f"{float(pred.sigma_eigenvalues[k, -1]):10.4g} {alignment[k]:>9}{stretch} "
            f"{int(sol.num_steps[k]):5d}{folds} {float(sol.residual[k]):8.1e} "
            f"{'yes' if bool(pred.converged[k]) else 'NO'}"
        )
    print(
        f"{len(widths)} widths in {elapsed:.2f} s (compile included), "
        f"backend {jax.default_backend()}"
    )
    if a.plot and len(widths) == 1:
        print("no finite width: no plot (the GP limit alone)")
    elif a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        finite = ~np.isinf(widths)
        Cs = np.asarray(widths)[finite]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(Cs, np.asarray(pred.test_error)[finite], "o-", label="mean predictor (EoS)")
        ax.plot(Cs, np.asarray(pred.test_error_draw)[finite], "s--", label="one network draw (EoS)")
        ax.axhline(float(pred.test_error[-1]), color="k", ls=":", label="GP limit (C = ∞)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("width C")
        ax.set_ylabel("test MSE")
        ax.set_title(what, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
        print(f"plot written to {a.plot}")
    # `pred.converged`: the solve converged and its predictions are finite.
    return 0 if bool(np.all(np.asarray(pred.converged))) else 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    a = parser.parse_args(argv)
    folder = os.path.dirname(a.plot) if a.plot else ""
    if folder and not os.path.isdir(folder):
        parser.error(f"--plot: no folder {folder!r} to write {a.plot!r} in")
    if a.plot and os.path.isdir(a.plot):
        parser.error(
            f"--plot: {a.plot!r} is a folder; give a file name, e.g. {a.plot}/fls_sweep.png"
        )
    configured = jax.config.values.get("jax_compilation_cache_dir")
    cache = _xla_cache_dir(a.xla_cache, configured, dict(os.environ))
    if cache is None:
        jax.config.update("jax_enable_compilation_cache", False)
    else:
        jax.config.update("jax_compilation_cache_dir", cache)
    for flag, on in (("--past-folds", a.past_folds), ("--minimise", a.minimise)):
        if on and a.float32:
            parser.error(f"{flag} needs float64: drop --float32")
    if not a.float32:
        jax.config.update("jax_enable_x64", True)
    else:
        print("float32 mode: EoS residuals are met to ~1e-5 only; use float64 at small σ².")
    try:
        return _sweep(a)
    except ValueError as e:  # a combination of options the package refuses: say which
        parser.error(str(e))


if __name__ == "__main__":
    sys.exit(main())
