"""Bad input gives a clear Python error before anything is compiled (SPEC §1–4 inputs).

`raises_before_compiling` calls the function twice. The first call may compile a few tiny
eager ops (``Y[:, None]``, ``widths > 0``) that JAX then caches; the second call must raise the
same error quickly while JAX traces and compiles nothing at all (counted through
`jax.monitoring`), so the error cannot come from inside a traced solve. (No timing: the
suite asserts what is compiled, never how long anything takes.)
"""

import contextlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fls_jax as fj


_COMPILE_EVENTS = "/jax/core/compile/"


@contextlib.contextmanager
def _record_jax_compiles():
    events = []

    def listener(event, duration_secs, **kwargs):
        if event.startswith(_COMPILE_EVENTS):
            events.append(f"{event} {kwargs.get('fun_name', '')}")

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def raises_before_compiling(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)
    with _record_jax_compiles() as events:
        with pytest.raises(exc, match=match) as info:
            fn(*args, **kwargs)
    assert not events, f"JAX traced or compiled before raising: {events}"
    return info


def _patch_net(**kw):
    args = dict(
        patch_size=4, width=16.0, sigma_w2=1.0, sigma_a2=1.0, noise=0.01, activation=fj.Linear()
    )
    return fj.PatchCNN(**(args | kw))


def _fcn(**kw):
    args = dict(width=16.0, sigma_w2=1.0, sigma_a2=1.0, noise=0.01, activation=fj.Erf())
    return fj.FCN(**(args | kw))


WIDTHS = [4.0, 16.0]


def _solve(net, X, Y, **kw):
    return fj.solve(net, X, Y, **kw)


def _sweep(net, X, Y, X_test=None, Y_test=None, **kw):
    return fj.sweep(net, X, Y, WIDTHS, X if X_test is None else X_test, Y_test, **kw)


ENTRY_POINTS = [_solve, _sweep]


# One compiled solve (`fj.solve`'s own jit, shared with the other test modules) serves every
# valid-input test below: the networks differ only in array leaves (width, sigma_w2).


@pytest.fixture(scope="module")
def patch_solution(patch_task):
    # A 1-d Y is valid input (one output): the solution carries it as n×1.
    sol = fj.solve(_patch_net(), patch_task.X, patch_task.Y[:, 0])
    assert bool(sol.converged)
    assert sol.Y.shape == (32, 1)
    return sol


# ---------------------------------------------------------------------- shapes of X and Y


def test_multi_index_teacher_needs_k_between_1_and_d():
    for k in (0, 4):
        with pytest.raises(ValueError, match="1 ≤ k ≤ d"):
            fj.datasets.multi_index_teacher(n=4, n_test=2, d=3, k=k)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_X_must_be_2d(patch_task, entry):
    X, Y = patch_task.X, patch_task.Y
    for bad in (X[:, 0], X[None]):
        raises_before_compiling(
            ValueError, r"X must be a 2-d array \(n, d\), got shape", entry, _patch_net(), bad, Y
        )


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_Y_rows_must_match_X(patch_task, entry):
    X, Y = patch_task.X, patch_task.Y
    for bad in (Y[:-1], Y[:-1, 0], Y[None]):
        raises_before_compiling(
            ValueError,
            r"Y must have shape \(n,\) or \(n, m\) with n = 32",
            entry,
            _patch_net(),
            X,
            bad,
        )


def test_Y_as_vector_is_accepted(patch_solution, patch_task):
    # The valid counterpart (solved in the fixture): a 1-d Y is one output.
    np.testing.assert_array_equal(np.asarray(patch_solution.Y), patch_task.Y)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["X", "Y"])
def test_nonfinite_data(patch_task, entry, value, which):
    X, Y = patch_task.X.copy(), patch_task.Y.copy()
    (X if which == "X" else Y)[3, 0] = value
    raises_before_compiling(ValueError, f"{which} contains NaN or inf", entry, _patch_net(), X, Y)


# -------------------------------------------------------------------- hyper-parameters


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("noise", [0.0, -0.01, np.nan, np.inf])
def test_noise_must_be_positive_and_finite(patch_task, entry, noise):
    raises_before_compiling(
        ValueError,
        r"noise \(σ²\) must be > 0 and finite",
        entry,
        _patch_net(noise=noise),
        patch_task.X,
        patch_task.Y,
    )


@pytest.mark.parametrize("width", [0.0, -1.0, -np.inf, np.nan])
def test_width_must_be_positive(patch_task, width):
    raises_before_compiling(
        ValueError,
        r"width must be > 0 \(inf for the GP limit\), got",
        fj.solve,
        _patch_net(width=width),
        patch_task.X,
        patch_task.Y,
    )


@pytest.mark.parametrize("name", ["sigma_w2", "sigma_a2"])
@pytest.mark.parametrize("value", [0.0, -1.0, np.nan, np.inf])
def test_prior_variances_must_be_positive(fcn_task, name, value):
    raises_before_compiling(
        ValueError,
        f"{name} must be > 0 and finite",
        fj.solve,
        _fcn(**{name: value}),
        fcn_task.X,
        fcn_task.Y,
    )


def test_network_must_be_a_network(patch_task):
    raises_before_compiling(
        TypeError, "network must be an fls_jax network", fj.solve, "fcn", patch_task.X, patch_task.Y
    )


@pytest.mark.parametrize(
    "solver,exc,match",
    [
        (42, TypeError, "optimistix root finder"),
        ((fj.DampedNewton(rtol=1e-9, atol=0.0), fj.FreeEnergyBFGS()), ValueError, "followed by"),
        ((fj.FreeEnergyBFGS(), fj.FreeEnergyBFGS()), ValueError, "followed by"),
        ("bfgs", ValueError, 'must be None, "descent", "whitened-descent", "anderson-newton"'),
    ],
)
def test_solver_chain_must_end_each_minimiser_with_a_root_finder(fcn_task, solver, exc, match):
    # A minimiser (the free-energy descent) only brings the start near a root (10⁻²) and
    # hands over to the root finder after it, which must finish the solve.
    raises_before_compiling(exc, match, fj.solve, _fcn(), fcn_task.X, fcn_task.Y, solver=solver)


@pytest.mark.parametrize("depth,d", [(2, 6), (1, 65)])
def test_descent_is_for_one_hidden_layer_with_few_unknowns(depth, d):
    # The descent reads the residual off its gradient for one hidden layer only, and keeps a
    # dense BFGS matrix: S(S+1)/2 = 2145 > 2080 unknowns at d = 65.
    task = fj.datasets.single_index_teacher(n=8, n_test=2, d=d, seed=0)
    net = fj.FCN(width=4.0, depth=depth, sigma_w2=1.0, sigma_a2=1.0, noise=0.01)
    raises_before_compiling(
        ValueError, "one hidden layer with at most", fj.solve, net, task.X, task.Y, solver="descent"
    )
    if depth > 1:
        chain = (fj.FreeEnergyBFGS(), fj.DampedNewton(rtol=1e-9, atol=0.0))
        raises_before_compiling(
            ValueError, "for one hidden layer", fj.solve, net, task.X, task.Y, solver=chain
        )


@pytest.mark.parametrize("depth,S,descent", [(1, 64, True), (1, 65, False), (2, 4, False)])
def test_default_chain_has_the_descent_where_it_applies(depth, S, descent):
    # One hidden layer with S(S+1)/2 ≤ 2080 unknowns gets the free-energy descent between
    # Anderson and Newton; deeper networks and larger S get Anderson then Newton.
    from fls_jax._solve import _resolve_solver

    chain = _resolve_solver(None, jnp.float64, depth, S)
    assert [type(s) for s in chain] == [
        fj.Anderson,
        *([fj.FreeEnergyBFGS] if descent else []),
        fj.DampedNewton,
    ]
    assert [type(s) for s in _resolve_solver("anderson-newton", jnp.float64, depth, S)] == [
        fj.Anderson,
        fj.DampedNewton,
    ]
    if descent:  # "whitened-descent": the default chain, its descent whitened
        white = _resolve_solver("whitened-descent", jnp.float64, depth, S)
        assert white[1] == fj.FreeEnergyBFGS(handover=chain[1].handover, whiten=True)
        assert white[0] == chain[0] and white[2] == chain[2] and not chain[1].whiten
    else:
        with pytest.raises(ValueError, match='solver="whitened-descent" is for one hidden'):
            _resolve_solver("whitened-descent", jnp.float64, depth, S)


# -------------------------------------------------------------------------- constructors


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("patch_size", [5, 8, 24])
def test_patch_size_must_divide_input(patch_task, entry, patch_size):
    # d = 12: a patch of 5 or 8 does not tile it, and 24 > d.
    raises_before_compiling(
        ValueError,
        f"patch_size {patch_size} does not divide the input dimension 12",
        entry,
        _patch_net(patch_size=patch_size),
        patch_task.X,
        patch_task.Y,
    )


@pytest.mark.parametrize("name", ["width", "noise", "sigma_a2"])
def test_hyper_parameters_must_be_scalars(patch_task, name):
    raises_before_compiling(
        ValueError,
        f"{name} must be a scalar",
        fj.solve,
        _patch_net(**{name: [1.0, 2.0]}),
        patch_task.X,
        patch_task.Y,
    )


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("max_stages", [0, -5, 1.5, True])
def test_max_stages_must_be_a_positive_integer(patch_task, entry, max_stages):
    raises_before_compiling(
        ValueError,
        "max_stages must be a positive integer",
        entry,
        _patch_net(),
        patch_task.X,
        patch_task.Y,
        max_stages=max_stages,
    )


def test_predict_refuses_a_batched_solution(patch_solution, patch_task):
    batched = jax.tree.map(lambda x: jnp.stack([x, x]), patch_solution)
    raises_before_compiling(ValueError, "batched", fj.predict, batched, patch_task.X_test)
    raises_before_compiling(TypeError, "Solution", fj.predict, patch_task.X, patch_task.X_test)


def test_width_ratios_take_numpy_numbers_not_booleans():
    kw = dict(width=4.0, sigma_w2=1.0, sigma_a2=1.0, noise=0.1, activation=fj.Erf(), depth=2)
    net = fj.FCN(**kw, width_ratios=(np.float32(2.0), np.int64(3)))
    assert net.width_ratios == (2.0, 3.0) and isinstance(net.width_ratios[0], float)
    with pytest.raises(ValueError, match="width_ratios"):
        fj.FCN(**kw, width_ratios=(True, 1.0))


@pytest.mark.parametrize("patch_size", [0, -4, True])
def test_patch_size_must_be_positive(patch_size):
    raises_before_compiling(
        ValueError, "patch_size must be a positive integer", _patch_net, patch_size=patch_size
    )


@pytest.mark.parametrize("make", [_patch_net, _fcn], ids=["PatchCNN", "FCN"])
@pytest.mark.parametrize("scaling", ["meanfield", "Standard", ""])
def test_scaling_must_be_known(make, scaling):
    raises_before_compiling(
        ValueError,
        r"scaling must be 'standard' or 'mean_field', got",
        make,
        scaling=scaling,
    )


@pytest.mark.parametrize("make", [_patch_net, _fcn], ids=["PatchCNN", "FCN"])
@pytest.mark.parametrize(
    "activation", [jnp.tanh, fj.Erf, "relu"], ids=["function", "class", "string"]
)
def test_activation_must_be_an_activation(make, activation):
    raises_before_compiling(
        TypeError,
        "activation must be an fls_jax.AbstractActivation instance",
        make,
        activation=activation,
    )


@pytest.mark.parametrize("order", [0, -1, 2.5, True])
def test_quadrature_order_must_be_a_positive_integer(order):
    # It failed at the first solve, in NumPy's Gauss–Hermite nodes ("deg must be …").
    with pytest.raises(ValueError, match="Quadrature's order must be an integer ≥ 1"):
        fj.Quadrature(jnp.tanh, order=order)
    with pytest.raises(TypeError, match="fn must be a callable"):
        fj.Quadrature("tanh")


# -------------------------------------------------------------------------------- sweep


@pytest.mark.parametrize("widths", [[4.0, 0.0], [-1.0], [16.0, np.nan], [-np.inf, 4.0]])
def test_sweep_widths_must_be_positive(patch_task, widths):
    raises_before_compiling(
        ValueError,
        r"widths must be > 0 \(inf for the GP limit\)",
        fj.sweep,
        _patch_net(),
        patch_task.X,
        patch_task.Y,
        widths,
        patch_task.X_test,
        patch_task.Y_test,
    )


@pytest.mark.parametrize("widths", [[], [[4.0, 16.0]]], ids=["empty", "2-d"])
def test_sweep_widths_must_be_1d(patch_task, widths):
    raises_before_compiling(
        ValueError,
        "widths must be a non-empty 1-d array",
        fj.sweep,
        _patch_net(),
        patch_task.X,
        patch_task.Y,
        widths,
        patch_task.X_test,
    )


def test_sweep_traces_inside_jit(patch_task):
    """Concrete widths are checked in NumPy, so a sweep can sit inside a traced function (a
    Jacobian of every width's test error with respect to σ², as in benchmarks/gradient_cost);
    `jnp.all(widths > 0)` there was a tracer and `bool` of it failed."""

    def errors(noise):
        net = eqx.tree_at(lambda m: m.noise, _patch_net(), noise)
        _, pred = fj.sweep(
            net, patch_task.X, patch_task.Y, [4.0, 16.0], patch_task.X_test, patch_task.Y_test
        )
        return pred.test_error

    assert jax.eval_shape(errors, jnp.asarray(0.1)).shape == (2,)


def test_sweep_checks_test_inputs_before_tracing(patch_task):
    raises_before_compiling(
        ValueError,
        r"X_test must have shape \(n_test, 12\)",
        _sweep,
        _patch_net(),
        patch_task.X,
        patch_task.Y,
        X_test=patch_task.X_test[:, :8],
    )


# ------------------------------------------------------------------------------ predict


@pytest.mark.parametrize("shape", [(50, 8), (50, 13), (12,), (1, 50, 12)])
def test_predict_X_test_dimension(patch_solution, shape):
    raises_before_compiling(
        ValueError,
        r"X_test must have shape \(n_test, 12\), got",
        fj.predict,
        patch_solution,
        np.ones(shape),
    )


def test_empty_test_sets_are_refused(patch_solution, patch_task):
    """Errors averaged over no test points are NaN, which passed as results (predict,
    renormalise)."""
    empty = np.ones((0, 12))
    raises_before_compiling(
        ValueError, "at least one test input", fj.predict, patch_solution, empty
    )
    net = fj.FCN(4.0, 1.0, 1.0, 0.05, fj.Linear())
    with pytest.raises(ValueError, match="at least one test input"):
        fj.renormalise(net, patch_task.X, patch_task.Y, empty)


@pytest.mark.parametrize("shape", [(49, 1), (49,), (50, 2), (1, 50, 1)])
def test_predict_Y_test_shape(patch_solution, patch_task, shape):
    raises_before_compiling(
        ValueError,
        r"Y_test must have shape \(50, 1\), got",
        fj.predict,
        patch_solution,
        patch_task.X_test,
        np.ones(shape),
    )


def test_predict_accepts_vector_Y_test(patch_solution, patch_task):
    pred = fj.predict(patch_solution, patch_task.X_test, patch_task.Y_test[:, 0])
    ref = fj.predict(patch_solution, patch_task.X_test, patch_task.Y_test)
    assert float(pred.test_error) == float(ref.test_error)


def test_missing_data_and_unknown_keywords_are_named(patch_solution, patch_task):
    # They failed in JAX ("None is not a valid value for jnp.array") or in a private
    # function ("_path_options() got an unexpected keyword argument").
    t, net = patch_task, _patch_net()
    raises_before_compiling(ValueError, r"Y \(the training targets", fj.solve, net, t.X, None)
    raises_before_compiling(ValueError, r"X \(the training inputs", fj.solve, net, None, t.Y)
    raises_before_compiling(
        ValueError, r"X_test \(the test inputs", fj.predict, patch_solution, None
    )
    for schedule in ("path", "parallel"):
        raises_before_compiling(
            TypeError,
            r"sweep got unexpected keyword arguments \['max_stepz'\]; .* 'max_stages'",
            fj.sweep,
            net,
            t.X,
            t.Y,
            WIDTHS,
            t.X_test,
            schedule=schedule,
            max_stepz=3,
        )


def test_sweep_checks_precision0_as_solve_does(patch_solution, patch_task):
    # The parallel schedule's vmapped solves see a traced precision0: a NaN or indefinite one
    # came back as unconverged widths with residual NaN instead of solve's error.
    t, start = patch_task, patch_solution.precision
    for bad in (start.at[0, 0].set(jnp.nan), -start):
        raises_before_compiling(
            ValueError,
            r"precision0\[0\] must be a finite, symmetric positive-definite",
            fj.sweep,
            _patch_net(),
            t.X,
            t.Y,
            WIDTHS,
            t.X_test,
            schedule="parallel",
            precision0=bad,
        )


def test_predictions_that_are_not_finite_are_flagged(patch_solution, patch_task):
    """Test inputs are checked for NaN only when concrete. Under jax.jit (or vmap) a NaN
    in X_test, or inputs so large that the kernels overflow, made NaN predictions that
    said converged=True; and σ⁴‖T‖² overflowed to NaN at a large valid σ² (σ⁴ = inf, T² =
    0). Now such predictions are flagged and the train error is ‖σ²T‖²."""
    X_test, Y_test = jnp.asarray(patch_task.X_test), jnp.asarray(patch_task.Y_test)
    predict = jax.jit(fj.predict)
    assert bool(predict(patch_solution, X_test, Y_test).converged)
    for bad in (X_test.at[0, 0].set(jnp.nan), 1e200 * X_test):
        pred = predict(patch_solution, bad, Y_test)
        assert not bool(pred.converged) and not np.isfinite(float(pred.test_error))
    ok = jax.vmap(lambda x: predict(patch_solution, x, Y_test).converged)
    assert ok(jnp.stack([X_test, X_test * jnp.nan])).tolist() == [True, False]
    # σ² = 10¹⁶⁰ (valid; the GP limit's weights T ≈ Y/σ²): σ⁴ overflows, (σ²T)² does not.
    loud = eqx.tree_at(lambda n: n.noise, patch_solution.network, 1e160)
    pred = fj.predict(fj.solve(loud, patch_task.X, patch_task.Y[:, 0]), X_test, Y_test)
    assert bool(pred.converged)
    expected = np.mean(np.asarray(patch_task.Y[:, 0]) ** 2)  # the mean predictor is ~0
    np.testing.assert_allclose(float(pred.train_error), expected, rtol=1e-6)


# ---------------------------------------------------------------------- the GP limit


@pytest.mark.parametrize("sigma_w2", [1.0, 1.7])
def test_infinite_width_is_the_gp_limit(patch_task, sigma_w2):
    # width = inf is valid input: Σ = Σ₀ = (σ_w²/S) I, with S = 4 here.
    net = _patch_net(width=float("inf"), sigma_w2=sigma_w2)
    sol = fj.solve(net, patch_task.X, patch_task.Y[:, 0])
    assert bool(sol.converged)
    expected = sigma_w2 / 4 * np.eye(4)
    np.testing.assert_allclose(np.asarray(sol.sigma), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(sol.precision), np.linalg.inv(expected), rtol=1e-12)


@pytest.mark.parametrize(
    "field,value",
    [("width", 8.0), ("width", jnp.asarray(jnp.inf)), ("noise", 0.02), ("sigma_w2", 2)],
)
def test_hyper_parameters_set_by_tree_at_reuse_the_compiled_solve(
    patch_solution, patch_task, field, value
):
    """`eqx.tree_at` bypasses the network's converters: `eqx.filter_jit` holds a Python number
    left in a leaf static (one program per value) and `jnp.asarray(jnp.inf)` is weakly typed
    (one more program). `solve` first makes them strongly typed arrays, so these reuse the
    compiled solve of `patch_solution` (converting the weak array may compile a tiny eager op),
    and give what the constructor's network gives."""
    X, Y = patch_task.X, patch_task.Y[:, 0]
    net = eqx.tree_at(lambda m: getattr(m, field), _patch_net(), value)
    with _record_jax_compiles() as events:
        sol = fj.solve(net, X, Y)
    assert not [e for e in events if "_solve" in e], f"solve was compiled again: {events}"
    assert bool(sol.converged)
    direct = fj.solve(_patch_net(**{field: value}), X, Y)
    np.testing.assert_array_equal(np.asarray(sol.sigma), np.asarray(direct.sigma))


def test_free_energy_and_residual_run_as_one_compiled_program(patch_task):
    """`fj.free_energy` and `fj.eos_residual` run compiled, not op by op: a call at another
    Σ and width (set with `eqx.tree_at`) compiles nothing, and a call on fewer training points
    (a new shape) compiles one program per function, where the op-by-op version compiled
    about 300 small ones."""
    X, Y = patch_task.X, patch_task.Y
    sigma = 0.3 * np.eye(4)

    def both(k, n=len(X)):
        net = eqx.tree_at(lambda m: m.width, _patch_net(), 16.0 + k)
        F = fj.free_energy(net, (1 + k) * sigma, X[:n], Y[:n])
        R = fj.eos_residual(np.linalg.inv((1 + k) * sigma), net, X[:n], Y[:n])
        return jax.block_until_ready((F, R))

    F, R = both(0)
    assert np.isfinite(float(F)) and np.all(np.isfinite(np.asarray(R)))
    with _record_jax_compiles() as events:
        for k in (1, 2, 3):
            both(k)
    assert not events, f"compiled again: {events}"
    with _record_jax_compiles() as events:
        both(1, n=len(X) - 1)
    programs = {e.split(" ", 1)[1] for e in events if "backend_compile" in e}
    assert 1 <= len(programs) <= 4, f"{len(programs)} programs compiled: {sorted(programs)}"


def test_float32_refused_when_ill_conditioned(fcn_task):
    # All-float32 input (data and hyper-parameters): refused below σ²/k̄ = 5e-3, where the
    # float32 solves of benchmarks/float32.py failed; accepted above.
    from fls_jax._solve import _validate

    X, Y = fcn_task.X.astype(np.float32), fcn_task.Y.astype(np.float32)

    def net32(noise, width=4.0, scaling="standard"):
        net = fj.FCN(width, 1.0, 1.0, noise, fj.Erf(), scaling=scaling)
        return jax.tree.map(lambda x: x.astype(jnp.float32) if eqx.is_array(x) else x, net)

    with pytest.raises(ValueError, match="float32 is refused"):
        fj.solve(net32(1e-4), X, Y)
    assert _validate(net32(0.1), X, Y)[1].dtype == jnp.float32
    # A traced width (vmap over widths) does not skip the check under standard scaling.
    with pytest.raises(ValueError, match="float32 is refused"):
        jax.vmap(lambda w: _validate(eqx.tree_at(lambda n: n.width, net32(1e-4), w), X, Y)[1])(
            jnp.array([4.0, 8.0], jnp.float32)
        )
    # sweep checks each of its widths: under mean-field scaling the kernel is σ_a²/C smaller,
    # and the network's own (replaced) width of 10⁶ passed where the swept C = 1 is refused.
    wide = net32(1e-4, width=1e6, scaling="mean_field")
    with pytest.raises(ValueError, match="float32 is refused"):
        fj.sweep(wide, X, Y, np.array([1.0, 4.0], np.float32), X[:2])
    # float32 data with float64 hyper-parameters (JAX's float64 on): promoted, not refused.
    net64 = fj.FCN(width=4.0, sigma_w2=1.0, sigma_a2=1.0, noise=1e-4, activation=fj.Erf())
    assert _validate(net64, X, Y)[1].dtype == jnp.float64
    # Deep networks: refused in float32 whatever the noise (their deeper layers did not
    # converge in float32), by solve and by sweep.
    deep = fj.FCN(4.0, 1.0, 1.0, 0.1, fj.Erf(), depth=2)
    deep = jax.tree.map(lambda x: x.astype(jnp.float32) if eqx.is_array(x) else x, deep)
    with pytest.raises(ValueError, match="float32 is refused for networks of depth > 1"):
        fj.solve(deep, X, Y)
    with pytest.raises(ValueError, match="float32 is refused for networks of depth > 1"):
        fj.sweep(deep, X, Y, [4.0], X[:2])


def test_renormalise_bad_input():
    rng = np.random.default_rng(0)
    X, Y, X_test = rng.standard_normal((3, 2)), rng.standard_normal(3), rng.standard_normal((4, 2))
    lin = fj.FCN(2.0, 1.0, 1.0, 0.25, fj.Linear())
    cnn = fj.PatchCNN(2.0, 1.0, 1.0, 0.25, fj.Linear(), patch_size=1)
    raises_before_compiling(ValueError, "draws", fj.renormalise, cnn, X, Y, X_test, draws=1)
    raises_before_compiling(ValueError, "draws", fj.renormalise, lin, X, Y, X_test, draws=2.5)
    raises_before_compiling(ValueError, "PRNG key", fj.renormalise, lin, X, Y, X_test, key=0)
    narrow_cnn = fj.PatchCNN(1.0, 1.0, 1.0, 0.25, fj.Linear(), patch_size=1)
    raises_before_compiling(
        ValueError, "Wishart", fj.renormalise, narrow_cnn, X, Y, X_test, method="saddle"
    )
    # Two outputs of a PatchCNN with P = 2 patches: a 4×4 scale over (patch, output) pairs,
    # whose Wishart prior needs C > 3 (C = 2 suffices for one output).
    raises_before_compiling(
        ValueError,
        r"4×4 \(patch, output\) scale",
        fj.renormalise,
        cnn,
        X,
        np.stack([Y, Y], axis=1),
        X_test,
        method="saddle",
    )
    deep_cnn = fj.PatchCNN(2.0, 1.0, 1.0, 0.25, fj.Linear(), patch_size=1, depth=2)
    raises_before_compiling(
        ValueError, "one hidden layer", fj.renormalise, deep_cnn, X, Y, X_test, method="saddle"
    )
    deep_erf = fj.FCN(2.0, 1.0, 1.0, 0.25, fj.Erf(), depth=2)
    raises_before_compiling(ValueError, "linear", fj.renormalise, deep_erf, X, Y, X_test)
    two = np.stack([Y, Y], axis=1)
    # Every layer needs C_l > m − 1: here the second has C_2 = 1 for m = 2.
    deep_lin = fj.FCN(2.0, 1.0, 1.0, 0.25, fj.Linear(), depth=2, width_ratios=(1.0, 0.5))
    raises_before_compiling(
        ValueError, "Wishart", fj.renormalise, deep_lin, X, two, X_test, method="saddle"
    )
    three = np.stack([Y, Y, Y], axis=1)
    raises_before_compiling(
        ValueError, "Wishart", fj.renormalise, lin, X, three, X_test, method="saddle"
    )
    raises_before_compiling(ValueError, "method", fj.renormalise, lin, X, Y, X_test, method="x")
    induced = fj.FCN(2.0, 1.0, 1.0, 0.25, fj.Linear(), inducing=X[:2])
    raises_before_compiling(ValueError, "inducing", fj.renormalise, induced, X, Y, X_test)
    # A first-layer mean has no place in a rescaled zero-mean GP; it was silently dropped.
    relu_mean = fj.FCN(2.0, 1.0, 1.0, 0.25, fj.ReLU(), weight_mean=True)
    raises_before_compiling(ValueError, "first-layer mean", fj.renormalise, relu_mean, X, Y, X_test)
    cnn_mean = fj.PatchCNN(2.0, 1.0, 1.0, 0.25, fj.ReLU(), patch_size=1, weight_mean=True)
    raises_before_compiling(
        ValueError, "first-layer mean", fj.renormalise, cnn_mean, X, Y, X_test, method="saddle"
    )
    negative = fj.FCN(2.0, 1.0, 1.0, -1.0, fj.Linear())
    raises_before_compiling(ValueError, "noise", fj.renormalise, negative, X, Y, X_test)
    raises_before_compiling(ValueError, "X_test", fj.renormalise, lin, X, Y, X_test[:, :1])


def test_learning_curve_bad_input():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((5, 2)), rng.standard_normal(5)
    gp = fj.FCN(np.inf, 1.0, 1.0, 0.1, fj.Erf())
    lc = fj.learning_curve
    # A PatchCNN at finite width: one hidden layer, no first-layer mean, and with m outputs
    # wider than Pm − 1 (here P = 2, m = 3: the Wishart prior of a 6×6 scale).
    deep_cnn = fj.PatchCNN(8.0, 1.0, 1.0, 0.1, patch_size=1, depth=2)
    raises_before_compiling(ValueError, "one hidden layer only", lc, deep_cnn, X, Y, [2.0])
    cnn = fj.PatchCNN(8.0, 1.0, 1.0, 0.1, patch_size=1)
    narrow_cnn = fj.PatchCNN(5.0, 1.0, 1.0, 0.1, patch_size=1)
    raises_before_compiling(ValueError, "> 5", lc, narrow_cnn, X, np.stack([Y, Y, Y], 1), [2.0])
    relu_cnn = fj.PatchCNN(8.0, 1.0, 1.0, 0.1, fj.ReLU(), patch_size=1, weight_mean=True)
    raises_before_compiling(ValueError, "no first-layer mean", lc, relu_cnn, X, Y, [2.0])
    raises_before_compiling(
        ValueError, "self_consistent", lc, cnn, X, Y, [2.0], method="equivalent_kernel"
    )
    fcn = fj.FCN(8.0, 1.0, 1.0, 0.1)
    # An FCN's m outputs take an m×m scale, whose Wishart prior needs C > m − 1.
    narrow = fj.FCN(2.0, 1.0, 1.0, 0.1)
    three = np.stack([Y, Y, Y], 1)
    raises_before_compiling(ValueError, "must be > 2", lc, narrow, X, three, [2.0])
    ek = dict(method="equivalent_kernel")
    raises_before_compiling(ValueError, "self_consistent", lc, fcn, X, Y, [2.0], **ek)
    deep = fj.FCN(8.0, 1.0, 1.0, 0.1, depth=2)
    raises_before_compiling(ValueError, "linear activations", lc, deep, X, Y, [2.0])
    mf = fj.FCN(np.inf, 1.0, 1.0, 0.1, scaling="mean_field")
    raises_before_compiling(ValueError, "standard readout scaling", lc, mf, X, Y, [2.0])
    raises_before_compiling(ValueError, "positive", lc, gp, X, Y, [0.0, 2.0])
    raises_before_compiling(ValueError, "positive", lc, gp, X, Y, [[2.0]])
    with pytest.warns(UserWarning, match="exceeds the pool's M = 5"):
        lc(gp, X, Y, [2.0, 6.0])
    raises_before_compiling(ValueError, "target_noise", lc, gp, X, Y, [2.0], target_noise=-1.0)
    raises_before_compiling(ValueError, "method", lc, gp, X, Y, [2.0], method="replica")
    induced = fj.FCN(np.inf, 1.0, 1.0, 0.1, inducing=X[:2])
    raises_before_compiling(ValueError, "inducing", lc, induced, X, Y, [2.0])
    relu_mean = fj.FCN(8.0, 1.0, 1.0, 0.1, fj.ReLU(), weight_mean=True)
    raises_before_compiling(ValueError, "first-layer mean", lc, relu_mean, X, Y, [2.0])
    raises_before_compiling(ValueError, "Y must have shape", lc, gp, X, Y[:3], [2.0])
    raises_before_compiling(ValueError, "noise", lc, fj.FCN(np.inf, 1.0, 1.0, 0.0), X, Y, [2.0])


def test_free_energy_and_residual_check_their_inputs():
    """The public F and EoS residual take Y as solve does (n or n×m) and name a wrong shape
    (they failed inside JAX: "not enough values to unpack", an einsum shape error)."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 4)), rng.standard_normal(6)
    net = fj.FCN(8.0, 1.0, 1.0, 0.1, fj.Erf())
    sigma = np.eye(4) / 4
    assert float(fj.free_energy(net, sigma, X, y)) == float(
        fj.free_energy(net, sigma, X, y[:, None])
    )
    np.testing.assert_array_equal(
        fj.eos_residual(4 * np.eye(4), net, X, y),
        fj.eos_residual(4 * np.eye(4), net, X, y[:, None]),
    )
    with pytest.raises(ValueError, match=r"sigma must have shape \(4, 4\)"):
        fj.free_energy(net, np.eye(5), X, y)
    with pytest.raises(ValueError, match=r"precision must have shape \(4, 4\)"):
        fj.eos_residual(np.eye(5), net, X, y)
    with pytest.raises(ValueError, match="Y must have shape"):
        fj.free_energy(net, sigma, X, y[:5])
    # A concrete precision off the domain is refused, as F refuses its Σ (it was an all-NaN
    # residual; traced, it still is: the solvers' guard, tests/test_activation.py).
    for bad in (-np.eye(4), np.full((4, 4), np.nan)):
        with pytest.raises(ValueError, match="precision must be a finite, symmetric positive"):
            fj.eos_residual(bad, net, X, y)
    deep = fj.FCN(8.0, 1.0, 1.0, 0.1, fj.Erf(), depth=2)
    with pytest.raises(ValueError, match=r"precision\[1\] contains NaN or inf"):
        fj.eos_residual((np.eye(4), np.full((6, 6), np.nan)), deep, X, y)
    with pytest.raises(ValueError, match="Y contains NaN or inf"):
        fj.gp_negative_log_evidence(np.eye(6), np.where(y > 0, np.nan, y))


def test_positive_definite_real_inputs_are_checked():
    """Matrices that must be positive definite (F's Σ and K^(l), D's K, `precision0`'s Σ⁻¹
    and the K^(l) its shifts give), complex data, and a PatchCNN without features get clear
    errors (they gave NaN, a NaN solve flagged only by `converged`, a TypeError from inside
    `jax.grad`, a silently dropped imaginary part, and a "converged" NaN prediction)."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 4)), rng.standard_normal(6)
    net = fj.FCN(8.0, 1.0, 1.0, 0.1, fj.Erf())
    for bad in (-np.eye(4), np.zeros((4, 4)), np.full((4, 4), np.nan)):
        with pytest.raises(ValueError, match="sigma must be a finite, symmetric positive-def"):
            fj.free_energy(net, bad, X, y)
        with pytest.raises(ValueError, match=r"precision0\[0\] must be a finite, symmetric"):
            fj.solve(net, X, y, precision0=bad)
    deep = fj.FCN(8.0, 1.0, 1.0, 0.1, fj.Erf(), depth=2)
    with pytest.raises(ValueError, match=r"kernels\[0\] must be a finite, symmetric"):
        fj.free_energy(deep, np.eye(4) / 4, X, y, kernels=(-np.eye(6),))
    with pytest.raises(ValueError, match=r"precision0\[1\] contains NaN"):
        fj.solve(deep, X, y, precision0=(4 * np.eye(4), np.full((6, 6), np.nan)))
    # Finite shifts outside the domain: K^(2) = Q(I + ΔQ)⁻¹ indefinite (a NaN solve before).
    with pytest.raises(ValueError, match="precision0 is outside the domain of the EoS"):
        fj.solve(deep, X, y, precision0=(4 * np.eye(4), -1e4 * np.eye(6)))
    with pytest.raises(ValueError, match="K must be a finite, symmetric positive-definite"):
        fj.gp_negative_log_evidence(-np.eye(6), y)
    with pytest.raises(ValueError, match="Y must have shape"):
        fj.gp_negative_log_evidence(np.eye(6), y[:5])
    with pytest.raises(ValueError, match="K must be a square matrix"):
        fj.gp_negative_log_evidence(np.eye(6)[:5], y)
    K = np.eye(6) + 0.5
    np.testing.assert_allclose(  # a vector Y is one output, as in solve
        fj.gp_negative_log_evidence(K, y), fj.gp_negative_log_evidence(K, y[:, None])
    )
    with pytest.raises(TypeError, match="X must be real"):
        fj.solve(net, X + 1j, y)
    with pytest.raises(TypeError, match="X_test must be real"):
        fj.sweep(net, X, y, [8.0], X[:2] + 1j)
    with pytest.raises(ValueError, match="at least one feature"):
        fj.solve(fj.PatchCNN(8.0, 1.0, 1.0, 0.1, fj.Erf(), patch_size=2), X[:, :0], y)


def test_traced_invalid_hyper_parameters_are_flagged():
    """Under jax.vmap the hyper-parameters are not known when the input checks run. A
    negative or NaN width was then read as "already at the target" (1/C < 0) or as the GP
    limit, and solve and renormalise reported converged=True (a residual of 3.4 in one case);
    learning_curve returned finite curves. Now they fail the element (learning_curve raised
    when the program ran until stop 72, which failed a whole vmapped batch)."""
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((6, 4)), rng.standard_normal(6)
    widths = jnp.array([8.0, -1.0, jnp.nan])

    def net(w):
        return fj.FCN(w, 1.0, 1.0, 0.1, fj.Linear())

    assert jax.vmap(lambda w: fj.solve(net(w), X, y).converged)(widths).tolist() == [
        True,
        False,
        False,
    ]
    ok = jax.vmap(lambda w: fj.renormalise(net(w), X, y, X[:2], method="saddle").converged)
    assert ok(widths).tolist() == [True, False, False]

    def curve(w, n, noise=0.1):
        lc = fj.learning_curve(fj.FCN(w, 1.0, 1.0, noise, fj.Linear()), X, y, n)
        return lc.test_error, lc.converged

    curves = jax.jit(jax.vmap(curve))
    ws = jnp.array([8.0, -1.0, jnp.nan, 8.0, 8.0, 8.0, jnp.inf, jnp.inf])
    ns = jnp.array([[2.0, 4.0]] * 3 + [[-2.0, 4.0]] + [[2.0, 4.0]] * 4)
    noises = jnp.array([0.1] * 4 + [0.0, jnp.nan, -1.0, 0.1])
    error, ok = curves(ws, ns, noises)
    valid = np.zeros((8, 2), bool)
    valid[[0, 7]] = True
    valid[3, 1] = True  # an invalid n fails its own size only
    assert np.all(ok[valid]) and np.all(np.isfinite(error[valid]))
    assert not np.any(ok[~valid]) and np.all(np.isnan(error[~valid]))
    # valid elements as they would be alone
    alone = curve(8.0, jnp.array([2.0, 4.0]))[0]
    np.testing.assert_allclose(error[0], alone, rtol=1e-12)
    np.testing.assert_allclose(error[3, 1], alone[1], rtol=1e-12)


def test_memory_map_guard(monkeypatch):
    """`fls_jax._memory`: past half of Linux's map limit, an entry point clears JAX's caches
    (with a warning) on every 16th call, never while JAX traces; the count is the process's
    /proc/self/maps."""
    from fls_jax import _memory

    if _memory._LIMIT is None:
        pytest.skip("no vm.max_map_count (not Linux)")
    with open("/proc/self/maps") as f:
        assert _memory.memory_maps() == len(f.readlines())
    cleared = []
    monkeypatch.setattr(jax, "clear_caches", lambda: cleared.append(1))
    monkeypatch.setattr(_memory, "_LIMIT", 2 * _memory.memory_maps() + 10**6)
    assert not any(_memory.guard_memory_maps(every=1) for _ in range(3))  # under half
    monkeypatch.setattr(_memory, "_LIMIT", 2)  # every process is over half of 2
    monkeypatch.setattr(_memory, "_calls", 0)
    X = jnp.ones((3, 2))
    net = fj.FCN(2.0, 1.0, 1.0, 0.1, fj.Linear())
    with pytest.warns(RuntimeWarning, match="memory mappings"):
        for _ in range(16):
            fj.free_energy(net, jnp.eye(2), X, X[:, :1])  # an entry point (`_validate`)
    assert len(cleared) == 1
    jax.jit(lambda x: _memory.guard_memory_maps(x, every=1) and x)(X)  # traced: no clearing
    assert len(cleared) == 1


def _float64_operations(jaxpr) -> list[str]:
    """The operations of a jaxpr (and of the jaxprs inside it: loops, conds, custom rules)
    with a float64 result that is not a weakly typed Python scalar."""
    found = []
    for eqn in jaxpr.eqns:
        for out in eqn.outvars:
            aval = out.aval
            if getattr(aval, "dtype", None) == jnp.float64 and not aval.weak_type:
                frames = str(eqn.source_info.traceback).split("\n")
                ours = [f.strip() for f in frames if "fls_jax" in f]
                found.append(f"{eqn.primitive} at {ours[0] if ours else '?'}")
                break
        for param in eqn.params.values():
            for inner in param if isinstance(param, tuple | list) else (param,):
                if isinstance(inner, jax.extend.core.ClosedJaxpr):
                    found += _float64_operations(inner.jaxpr)
                elif isinstance(inner, jax.extend.core.Jaxpr):
                    found += _float64_operations(inner)
    return found


def test_float32_requests_compute_in_float32(fcn_task):
    """float32 data and network with JAX's float64 on: no operation of the traced program has
    a float64 result. Python floats are weakly typed and keep float32, but a NumPy scalar
    (`np.sqrt(M)`), an index built by `jnp.triu_indices` or a `jnp.eye`/`linspace` without a
    dtype are float64 under x64 and promoted the rest (stop 61: the m-output learning curves
    failed with a TypeError there, float64 meeting a float32 loop carry; the scalar mixture's
    grid, the EoS solve's packing and the kernels with a weight mean ran in float64). Traced
    only, nothing is compiled."""
    f32 = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: x.astype(jnp.float32) if eqx.is_array(x) else x, tree
    )
    X, X_test = (np.asarray(a[:24], np.float32) for a in (fcn_task.X, fcn_task.X_test))
    y, y_test = (np.asarray(a[:24, 0], np.float32) for a in (fcn_task.Y, fcn_task.Y_test))
    Y2 = np.stack([y, np.sin(X[:, 2])], axis=1)
    erf, linear = (f32(fj.FCN(8.0, 1.0, 1.0, 0.1, act)) for act in (fj.Erf(), fj.Linear()))
    deep = f32(fj.FCN(8.0, 1.0, 1.0, 0.1, fj.Linear(), depth=2))
    cnn = f32(fj.PatchCNN(8.0, 1.0, 1.0, 0.1, fj.Erf(), patch_size=3))
    relu_mean = f32(fj.FCN(8.0, 1.0, 1.0, 0.1, fj.ReLU(), weight_mean=True))
    ns = np.array([8.0, 16.0], np.float32)

    def test_error(s2):
        net = eqx.tree_at(lambda n: n.sigma_w2, erf, s2)
        return fj.predict(fj.solve(net, X, y), X_test, y_test).test_error_draw

    requests = {
        "solve and predict": lambda: fj.predict(fj.solve(erf, X, y), X_test, y_test),
        "their gradient": lambda: jax.grad(test_error)(jnp.float32(1.0)),
        "a weight mean (ReLU)": lambda: fj.predict(fj.solve(relu_mean, X, y), X_test, y_test),
        "renormalise, mixture": lambda: fj.renormalise(erf, X, y, X_test),
        "renormalise, depth 2": lambda: fj.renormalise(deep, X, y, X_test),
        "renormalise, 2 outputs": lambda: fj.renormalise(linear, X, Y2, X_test, method="saddle"),
        "renormalise, PatchCNN": lambda: fj.renormalise(cnn, X, y, X_test, method="saddle"),
        "learning curve, PatchCNN": lambda: fj.learning_curve(cnn, X, y, ns),
        "learning curve, 2 outputs": lambda: fj.learning_curve(linear, X, Y2, ns),
        "learning curve, PatchCNN, 2 outputs": lambda: fj.learning_curve(cnn, X, Y2, ns),
    }
    # Inducing points are rows of X: float32 ones (they were float64, and promoted the solve).
    assert fj.inducing_points(erf, X, 4).dtype == jnp.float32
    for name, request in requests.items():
        closed = jax.make_jaxpr(request)()
        assert all(a.dtype != jnp.float64 for a in closed.out_avals), name
        found = _float64_operations(closed.jaxpr)
        assert not found, f"{name}: {len(found)} float64 operations, e.g. {found[:3]}"
