"""The command line of the README's main job (`python -m fls_jax sweep`), one and two layers."""

import os

import pytest

from fls_jax.__main__ import _xla_cache_dir, main


@pytest.mark.parametrize(
    "argv",
    [
        [],
        pytest.param(
            ["--arch", "fcn", "--activation", "erf", "--d", "20", "--depth", "2"],
            marks=pytest.mark.slow,
        ),
        pytest.param(["--task", "digits", "--solver", "whitened-descent"], marks=pytest.mark.slow),
        pytest.param(
            ["--arch", "fcn", "--activation", "erf", "--d", "5", "--depth", "3", "--past-folds"],
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["--arch", "fcn", "--activation", "erf", "--d", "5", "--depth", "3", "--minimise"],
            marks=pytest.mark.slow,
        ),
    ],
)
def test_sweep_prints_a_converged_table_and_writes_the_plot(argv, tmp_path, capsys):
    plot = tmp_path / "sweep.png"
    common = ["--n", "16", "--n-test", "20", "--widths", "4", "64", "--plot", str(plot)]
    assert main(["sweep", *common, *argv]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert all(rows[w][-1] == "yes" for w in ("4", "64", "GP"))
    assert plot.stat().st_size > 0
    if "--past-folds" in argv:  # no fold on this task, and minima of F: columns of zeros
        assert "folds index" in out
        assert all(rows[w][-4] == rows[w][-3] == "0" for w in ("4", "64", "GP"))
    elif "--minimise" in argv:  # minima of F: a column of zeros
        assert "K stretch steps index" in out
        assert all(rows[w][-3] == "0" for w in ("4", "64", "GP"))
    elif "--depth" in argv:
        assert "K stretch" in out and abs(float(rows["GP"][-4])) < 1e-10  # none in the GP limit
        assert float(rows["4"][-4]) > float(rows["64"][-4]) > 0  # more at narrower widths


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--n", "-5"], "argument --n: must be ≥ 2"),
        (["--n-test", "0"], "argument --n-test: must be ≥ 1"),
        (["--patches", "0"], "argument --patches: must be ≥ 1"),
        (["--noise", "nan"], "argument --noise: must be > 0 and finite"),
        (["--widths", "4", "0"], "argument --widths: must be > 0"),
        (["--plot", "no-such-folder/x.png"], "no folder 'no-such-folder'"),
        (["--plot", "."], "'.' is a folder"),  # savefig wrote ./.png
        (["--seed", "-1"], "argument --seed: must be ≥ 0"),
        (["--task", "digits", "--n", "1500"], "n + n_test <= 1797"),  # the package's own
        (["--past-folds", "--float32"], "--past-folds needs float64"),
        (["--minimise", "--float32"], "--minimise needs float64"),
        (["--past-folds", "--arch", "fcn", "--depth", "3", "--n", "40"], "3336 unknowns"),
    ],
)
def test_bad_options_are_usage_errors_not_tracebacks(argv, message, capsys):
    # argparse's exit: status 2, "error: …" on stderr, nothing run.
    with pytest.raises(SystemExit) as info:
        main(["sweep", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_gp_limit_alone_is_a_table_without_a_plot(tmp_path, capsys):
    # `--widths inf` left no finite width to plot on log axes: matplotlib's error, exit 2.
    plot = tmp_path / "sweep.png"
    argv = ["sweep", "--n", "16", "--n-test", "20", "--widths", "inf", "--plot", str(plot)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()]
    assert "no finite width: no plot" in out and [r[-1] for r in rows if r[0] == "GP"] == ["yes"]
    assert not plot.exists()


def test_digits_refuses_the_teacher_task_shapes():
    with pytest.raises(SystemExit, match="--patch-size, --d: not for --task digits"):
        main(["sweep", "--task", "digits", "--patch-size", "8", "--d", "3"])


def test_options_of_the_other_architecture_are_refused():
    with pytest.raises(SystemExit, match="--patch-size: not for --arch fcn"):
        main(["sweep", "--arch", "fcn", "--patch-size", "4"])
    with pytest.raises(SystemExit, match="--d: not for --arch patchcnn"):
        main(["sweep", "--d", "3"])


def test_xla_cache_folder_follows_the_flag_then_jax_then_xdg():
    """`--xla-cache` wins ('' turns the cache off), then a folder JAX already has (its
    JAX_COMPILATION_CACHE_DIR), then $XDG_CACHE_HOME, then ~/.cache."""
    env = {"XDG_CACHE_HOME": "/x"}
    assert _xla_cache_dir("/a", "/b", env) == "/a"
    assert _xla_cache_dir("", "/b", env) is None
    assert _xla_cache_dir(None, "/b", env) == "/b"
    assert _xla_cache_dir(None, None, env) == "/x/fls_jax/xla"
    assert _xla_cache_dir(None, None, {}) == os.path.expanduser("~/.cache/fls_jax/xla")
