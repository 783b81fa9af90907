"""Predictions from a solved EoS state: test kernels, mean, variance, errors, χ (SPEC §4)."""

import functools
import inspect
from collections.abc import Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float

from ._free_energy import _inverse_width, _low_rank, _LowRank, _nystrom
from ._linalg import _eigh, eigvalsh, spd_inverse_logdet
from ._rootfind import _where
from ._solve import (
    _MAX_STAGES,
    Solution,
    _chain,
    _check_deep_float32,
    _check_finite,
    _check_float32,
    _check_max_stages,
    _check_rescue,
    _default_adjoint,
    _gp_state,
    _resolve_solver,
    _solve_from,
    _validate,
    _validate_precision0,
    _with_width,
    solve,
)


class Prediction(eqx.Module):
    """What a solved network predicts (SPEC §4). Errors are averaged over outputs.

    **Fields:**

    - `mean`: f̄(x*) = Q_f(x*, X) T, the mean predictor on the test inputs (n*×m).
    - `variance`: v(x*) = Q_f(x*, x*) − Q_f(x*, X) K_f⁻¹ Q_f(X, x*), the ensemble variance
      of the network output at each test input (n*), the same for every output.
    - `train_error`: σ⁴ ‖T‖²/(n m), the mean squared train residual of the mean predictor.
    - `test_error`: mean squared error of the mean predictor on the test targets (NaN-free
      only when `Y_test` was given; otherwise `inf` as a marker).
    - `test_error_draw`: expected test error of one network drawn from the posterior,
      `test_error` + mean `variance`.
    - `chi`: the feature-learning scale λ_max(P^{1/2} (1/C_L) ∂ tr[TTᵀ Q_f] P^{1/2}) of the
      last hidden layer (SPEC §4): the derivative with respect to Σ and P = Σ₀ for one
      hidden layer, with respect to K^(L) and P = Q^(L−1) for deeper networks.
    - `chi_proxy`: tr(Tᵀ Q_f T)/C_L, the scalar proxy used by the authors.
    - `sigma_eigenvalues`: spectrum of the learned Σ, ascending.
    - `kernel_eigenvalues`: spectra of the learned K^(2), …, K^(L) (ascending; empty for
      one hidden layer).
    - `layer_stretch`: per hidden layer, λ_max(P⁻¹ cov) − 1 with P the layer's prior
      covariance (Σ₀ or Q^(l−1)): how far its learned covariance has grown along its most
      adapted direction (0 in the GP limit).
    - `free_energy`: F at the solution (SPEC §3), copied from the solution.
    - `converged`: whether the solve converged and its predictions here are finite
      (predictions from a failed solve are flagged, and so are NaN or infinite ones, e.g.
      from test inputs with NaN under `jax.jit`, where they are not checked).
    """

    mean: Float[Array, "n_test m"]
    variance: Float[Array, " n_test"]
    train_error: Float[Array, ""]
    test_error: Float[Array, ""]
    test_error_draw: Float[Array, ""]
    chi: Float[Array, ""]
    chi_proxy: Float[Array, ""]
    sigma_eigenvalues: Float[Array, " S"]
    kernel_eigenvalues: tuple[Float[Array, " n"], ...]
    layer_stretch: Float[Array, " L"]
    free_energy: Float[Array, ""]
    converged: Array


def _validate_test(X, Y, X_test, Y_test):
    """Shape and finiteness checks of test data, before anything is traced."""
    if X_test is None:
        raise ValueError("X_test (the test inputs, n_test×d) is required, got None")
    for name, arr in (("X_test", X_test), ("Y_test", Y_test)):
        if arr is not None and jnp.iscomplexobj(arr):
            raise TypeError(f"{name} must be real, got dtype {jnp.asarray(arr).dtype}")
    X_test = jnp.asarray(X_test, X.dtype)
    if X_test.ndim != 2 or X_test.shape[1] != X.shape[1]:
        raise ValueError(f"X_test must have shape (n_test, {X.shape[1]}), got {X_test.shape}")
    if X_test.shape[0] < 1:
        # Means over no test points are NaN, which would pass as results.
        raise ValueError("X_test must hold at least one test input")
    arrays = [("X_test", X_test)]
    if Y_test is not None:
        Y_test = jnp.asarray(Y_test, X.dtype)
        Y_test = Y_test[:, None] if Y_test.ndim == 1 else Y_test
        want = (X_test.shape[0], Y.shape[1])
        if Y_test.shape != want:
            raise ValueError(f"Y_test must have shape {want}, got {Y_test.shape}")
        arrays.append(("Y_test", Y_test))
    for name, arr in arrays:
        _check_finite(name, arr)
    return X_test, Y_test


def _whitened_top(prior: Array, shift: Array) -> Array:
    """λ_max(P^{1/2} M P^{1/2}) for SPD P and symmetric M, through P's eigenvectors.
    A diagnostic: not differentiated (stop_gradient)."""
    prior, shift = jax.lax.stop_gradient((prior, shift))
    w, V = _eigh(prior)
    R = V * jnp.sqrt(jnp.clip(w, 0.0))[None, :]
    M = R.T @ shift @ R
    return eigvalsh(0.5 * (M + M.T))[-1]


def _test_kernels(solution: Solution, X_test: Array):
    """Q_f on train × train, test × train and the test diagonal (SPEC §4).

    The first layer is exact in weight space; each deeper layer's test pre-kernel is the
    prior conditional of its learned train block: with Q = Q^(l−1), K_{*X} = Q_{*X}Q⁻¹K and
    K_{**} = Q_{**} − Q_{*X}(Q⁻¹ − Q⁻¹KQ⁻¹)Q_{X*} (only the diagonal is needed). In the
    layer's precision shift Δ (Q⁻¹K = I − ΔK) these are K_{*X} = Q_{*X}(I − ΔK) and
    K_{**} = Q_{**} + Q_{*X} B Q_{X*}, B = ΔKΔ − Δ: no Q⁻¹, so Q may be singular (Q_{*X}
    then lies in Q's range, and these are the conditionals with Q's pseudo-inverse).
    Also returns the layer priors P_l, for the diagnostics."""
    net, X = solution.network, solution.X
    sigma = net.join_state(solution.sigma, solution.weight_mean)
    tt = net.first_layer_kernel(sigma, X)
    st = net.first_layer_kernel(sigma, X_test, X)
    ss = net.first_layer_kernel_diag(sigma, X_test)
    priors = [net.prior_covariance(X.shape[1])]
    eye = jnp.eye(X.shape[0], dtype=X.dtype)
    deeper = zip(solution.kernels, solution.kernel_shifts, strict=True)
    for layer, (K, delta) in enumerate(deeper, start=2):
        priors.append(tt)
        DK = delta @ K
        K_st = st @ (eye - DK)
        k_ss = ss + jnp.sum((st @ (DK @ delta - delta)) * st, 1)
        act, scale, k_tt = net.layer_activation(layer), net.post_scale(layer), jnp.diagonal(K)
        tt = net.post_kernel(layer, K)
        st = scale * act.kernel(k_ss[:, None], k_tt[None, :], K_st)
        ss = scale * act.kernel(k_ss, k_ss, k_ss)
    return tt, st, ss, priors


def _readout_low_rank(net, sigma: Array, X: Array, Y: Array, X_test: Array, low_rank: _LowRank):
    """T = K_f⁻¹Y, the mean Q_f(x*, X) T and the variance v(x*) of SPEC §4 for
    K_f = Z B Zᵀ + D with Z of rank r < n and D diagonal (`_low_rank`), without an n×n
    matrix: with W = B⁻¹ + ZᵀD⁻¹Z, K_f⁻¹ = D⁻¹ − D⁻¹Z W⁻¹ ZᵀD⁻¹ (Woodbury) and
    B Zᵀ K_f⁻¹ = W⁻¹ZᵀD⁻¹, so f̄(x*) = z*ᵀ W⁻¹ ZᵀD⁻¹Y and v(x*) = q** − z*ᵀ B z* + z*ᵀ W⁻¹ z*.
    For linear φ the features are exact (q** = z*ᵀ B z*, D = σ²I). For a Nyström readout
    z* = φ(x*) (`_nystrom`, B = I) and q** is the exact prior variance, as on the training
    points. Costs O(n r² + r³)."""
    Z, _, B_inv, _, noise = low_rank
    if net.inducing is not None:
        Z_test, gap = _nystrom(net, sigma, X_test)
    else:
        Z_test, gap = net.linear_features(X_test)[0], 0.0
    D = noise[:, None]
    W_inv, _ = spd_inverse_logdet(B_inv + Z.T @ (Z / D))
    w_mean = W_inv @ (Z.T @ (Y / D))  # posterior mean of the readout in feature space
    T = (Y - Z @ w_mean) / D
    mean = Z_test @ w_mean  # = Z* B Zᵀ K_f⁻¹ Y, without the cancellation inside T
    variance = gap + jnp.sum((Z_test @ W_inv) * Z_test, 1)
    return T, mean, variance


def _readout_quadratic(net, sigma: Array, X: Array, T: Array) -> Array:
    """tr(Tᵀ Q_f(Σ) T) of a depth-1 network; in r dimensions when `_low_rank` (with the
    Nyström readout's diagonal correction, the part of its diagonal beyond σ²)."""
    low_rank = _low_rank(net, sigma, X)
    if low_rank is not None:
        return _low_rank_quadratic(low_rank, net.noise, T)
    return jnp.sum(T * (net.output_kernel(sigma, X) @ T))


def _low_rank_quadratic(low_rank: _LowRank, noise, T: Array) -> Array:
    """tr(Tᵀ Q_f T) for K_f = Z B Zᵀ + diag(`low_rank.noise`): Q_f is K_f less σ²I."""
    V = low_rank.Z.T @ T
    correction = (low_rank.noise - noise)[:, None]
    return jnp.sum(V * (low_rank.B @ V)) + jnp.sum(correction * T**2)


def predict(
    solution: Solution,
    X_test: Float[ArrayLike, "n_test d"],
    Y_test: Float[ArrayLike, "n_test m"] | Float[ArrayLike, " n_test"] | None = None,
) -> Prediction:
    """Predict test outputs and errors from a solved network (SPEC §4).

    The first layer is exact in weight space; deeper layers' test pre-kernels are the prior
    conditionals of their learned train blocks (SPEC §4). The readout kernel Q_f then gives
    f̄(x*) = Q_f(x*, X) T and v(x*) = Q_f(x*, x*) − Q_f(x*, X) K_f⁻¹ Q_f(X, x*). For linear
    φ with one hidden layer and P·S < n these are evaluated in the P·S-dimensional feature
    space (Woodbury), as the solve is: no n×n matrix is formed. So are they for a network
    with `inducing` points (its Nyström readout), with the exact prior variance at x*.

    **Arguments:**

    - `solution`: from [`fls_jax.solve`][].
    - `X_test`: test inputs (n*×d).
    - `Y_test`: optional test targets (n*×m or n*) for the test errors.

    **Returns:** a [`fls_jax.Prediction`][].
    """
    if not isinstance(solution, Solution):
        raise TypeError(f"predict needs an fls_jax.Solution, got {type(solution)}")
    if jnp.ndim(solution.X) != 2:
        raise ValueError(
            "predict takes one Solution; this one is batched (shape of X: "
            f"{jnp.shape(solution.X)}, e.g. from fls_jax.sweep, which returns its predictions "
            "too): use jax.vmap(fls_jax.predict, in_axes=(0, None)) or index one element"
        )
    X_test, Y_test = _validate_test(solution.X, solution.Y, X_test, Y_test)
    return _predict(solution, X_test, Y_test)


@eqx.filter_jit
def _predict(solution: Solution, X_test: Array, Y_test: Array | None) -> Prediction:
    """`predict` after validation: one compiled program per network structure and shapes."""
    net, X, Y = solution.network, solution.X, solution.Y
    sigma = net.join_state(solution.sigma, solution.weight_mean)  # the first layer's state
    n, m = Y.shape
    low_rank = _low_rank(net, sigma, X)
    if low_rank is not None:
        T, mean, variance = _readout_low_rank(net, sigma, X, Y, X_test, low_rank)
        quad = _low_rank_quadratic(low_rank, net.noise, T)  # tr(Tᵀ Q_f T), for χ_proxy
        priors = [net.prior_covariance(X.shape[1])]
    else:
        Qf, Q_star, q_diag, priors = _test_kernels(solution, X_test)
        Kf_inv, _ = spd_inverse_logdet(Qf + net.noise * jnp.eye(n, dtype=X.dtype))
        T = Kf_inv @ Y
        quad = jnp.sum(T * (Qf @ T))
        mean = Q_star @ T
        variance = q_diag - jnp.sum((Q_star @ Kf_inv) * Q_star, 1)
    train_error = jnp.sum((net.noise * T) ** 2) / (n * m)  # σ² T: no σ⁴ to overflow
    if Y_test is None:
        test_error = jnp.asarray(jnp.inf, X.dtype)
    else:
        test_error = jnp.mean((mean - Y_test) ** 2)

    # χ: the target-driven precision shift (1/C_L) ∂ tr[TTᵀ Q_f] of the last hidden layer,
    # whitened by that layer's prior.
    L = net.depth
    inv_width = _inverse_width(net) / net.width_ratio(L)
    if L == 1:
        shift = jax.grad(_readout_quadratic, argnums=1)(net, sigma, X, T) * inv_width
        S = net.filter_size(X.shape[1])
        shift = shift[:S, :S]  # with `weight_mean`, ∂/∂(Σ + μμᵀ) = ∂/∂Σ at fixed μ
        prior_sqrt = jnp.sqrt(1 / jnp.diagonal(net.prior_precision(X.shape[1])))  # Σ₀ ∝ I
        whitened = prior_sqrt[:, None] * shift * prior_sqrt[None, :]
        chi = eigvalsh(0.5 * (whitened + whitened.T))[-1]
    else:
        K_L, TTt = solution.kernels[-1], T @ T.T
        shift = jax.grad(lambda K: jnp.sum(TTt * net.post_kernel(L, K)))(K_L) * inv_width
        chi = _whitened_top(priors[-1], 0.5 * (shift + shift.T))
    # A traced X_test (under jit or vmap, unchecked) with NaN or inf, or inputs so large that
    # the kernels overflow, make NaN predictions from a converged solve: flagged, not silent.
    finite = jnp.all(jnp.isfinite(mean)) & jnp.all(jnp.isfinite(variance))
    finite = finite & jnp.isfinite(train_error)
    if Y_test is not None:
        finite = finite & jnp.isfinite(test_error)
    covs = (solution.sigma, *solution.kernels)
    shifts = (solution.precision - net.prior_precision(X.shape[1]), *solution.kernel_shifts)
    # λ_max(P⁻¹ cov) − 1 = 1/λ_min(I + P^{1/2} Δ P^{1/2}) − 1, Δ = cov⁻¹ − P⁻¹.
    stretch = jnp.stack(
        [1 / (1 - _whitened_top(P, -d)) - 1 for P, d in zip(priors, shifts, strict=True)]
    )
    return Prediction(
        mean=mean,
        variance=variance,
        train_error=train_error,
        test_error=test_error,
        test_error_draw=test_error + jnp.mean(variance),
        chi=chi,
        chi_proxy=quad * inv_width,
        sigma_eigenvalues=eigvalsh(solution.sigma),
        kernel_eigenvalues=tuple(eigvalsh(K) for K in covs[1:]),
        layer_stretch=stretch,
        free_energy=solution.free_energy,
        converged=solution.converged & finite,
    )


# `solve`'s keyword arguments, which `sweep` passes on.
_SOLVE_KEYWORDS = frozenset(
    p.name for p in inspect.signature(solve).parameters.values() if p.kind == p.KEYWORD_ONLY
)


def sweep(
    network,
    X: Float[ArrayLike, "n d"],
    Y: Float[ArrayLike, "n m"] | Float[ArrayLike, " n"],
    widths: Float[ArrayLike, " w"],
    X_test: Float[ArrayLike, "n_test d"],
    Y_test: Float[ArrayLike, "n_test m"] | Float[ArrayLike, " n_test"] | None = None,
    *,
    schedule: Literal["auto", "parallel", "path"] = "auto",
    devices: Sequence[Any] | None = None,
    **solve_kwargs,
) -> tuple[Solution, Prediction]:
    """Solve and predict at many widths in one jit-compiled call.

    The results are a [`fls_jax.Solution`][] and a [`fls_jax.Prediction`][] whose array
    fields carry a leading width axis, in the order of `widths`. `inf` is allowed and gives
    the GP limit. Two schedules, same answers (to the solver tolerance); ``"auto"`` (default)
    picks ``"path"`` on CPU and ``"parallel"`` on accelerators:

    - ``"parallel"``: `jax.vmap` over widths; each width runs its own continuation
      from the GP limit. Best where the device has parallel capacity to spare (a GPU with
      small n); a vmapped loop runs until its slowest element (the narrowest width) is done.
    - ``"path"``: `lax.scan` over the widths from wide to narrow; each solve continues from
      the last converged, wider solution, so a dense sweep costs a few Newton steps per
      width. Best where compute is the bottleneck (CPU, large n, many widths).

    **Sharding.** With more than one device (default: all of `jax.devices()`), the width
    axis is split across them with `jax.shard_map` over a one-axis `Mesh` (inputs placed
    with a `NamedSharding`): device j gets every D-th width of the wide-to-narrow order, so
    each device covers the whole range (balanced load; on the path schedule each device
    walks its own, coarser path from the GP limit). The width count is padded with GP-limit
    (``inf``) widths to a multiple of D, and the padding is dropped from the results. The
    parallel schedule gives the unsharded run's answers; the path schedule gives them to
    the solver tolerance (its warm starts differ). There is no communication between
    devices. `devices` is a sequence of distinct `jax.Device` objects; with one, the sweep
    runs on that device.

    **Arguments:** `network` (its `width` is replaced), training data `X`, `Y`, the
    `widths`, test data `X_test`, `Y_test`, `schedule`, `devices`, and keyword arguments
    for [`fls_jax.solve`][] (`precision0` only with the parallel schedule).
    """
    try:  # checked in NumPy where the widths are concrete: `sweep` may run inside jit
        w = np.asarray(widths, dtype=float)
    except jax.errors.TracerArrayConversionError:
        w = None
    if w is not None and w.ndim == 1 and w.size and not np.all(w > 0):
        raise ValueError(f"widths must be > 0 (inf for the GP limit), got {w}")
    widths = jnp.asarray(widths, dtype=float)
    if widths.ndim != 1 or widths.size == 0:
        raise ValueError(f"widths must be a non-empty 1-d array, got shape {widths.shape}")
    if schedule not in ("auto", "parallel", "path"):
        raise ValueError(f"schedule must be 'auto', 'parallel' or 'path', got {schedule!r}")
    if schedule == "auto":
        schedule = "path" if jax.default_backend() == "cpu" else "parallel"
    unknown = sorted(set(solve_kwargs) - _SOLVE_KEYWORDS)
    if unknown:
        raise TypeError(
            f"sweep got unexpected keyword arguments {unknown}; besides schedule and devices "
            f"it takes solve's: {sorted(_SOLVE_KEYWORDS)}"
        )
    network, X, Y = _validate(network, X, Y)
    X_test, Y_test = _validate_test(X, Y, X_test, Y_test)
    _check_max_stages(solve_kwargs.get("max_stages", _MAX_STAGES))
    _check_deep_float32(network, X)
    rescue = (solve_kwargs.get("past_folds"), solve_kwargs.get("minimise"))
    _check_rescue(network, X, solve_kwargs.get("precision0"), *rescue)
    if w is not None and jnp.finfo(X.dtype).bits < 64:  # each width's own kernel (mean-field)
        for width in np.unique(w):
            _check_float32(_with_width(network, width), X)
    if solve_kwargs.get("precision0") is not None and schedule == "parallel":
        # Checked here, where it is concrete: inside the vmapped solve it is traced.
        solve_kwargs["precision0"] = _validate_precision0(network, X, Y, solve_kwargs["precision0"])
    widths = widths.astype(X.dtype)
    named, devices = devices is not None, _check_devices(devices)
    options = (
        (solve_kwargs,)
        if schedule == "parallel"
        else _path_options(
            X.dtype,
            depth=network.depth,
            filter_size=network.state_size(X.shape[1]),
            **solve_kwargs,
        )
    )
    local_solve = _local_solve_parallel if schedule == "parallel" else _local_solve_path
    # Two compiled programs, solves then predictions: a failed solve's diagnostics come back
    # even if the prediction step were to fail.
    if len(devices) == 1:  # on the device named, which need not be the default one
        put = functools.partial(_put, where=devices[0]) if named else (lambda tree: tree)
        sols = local_solve(put((network, X, Y, *options)), put(widths))
        return sols, _local_predict(put((X_test, Y_test)), sols)
    mesh = jax.sharding.Mesh(np.array(devices), ("w",))
    slots = _strided_slots(widths, len(devices))
    padded = jnp.where(slots >= 0, widths[np.maximum(slots, 0)], jnp.inf)
    padded = jax.device_put(padded, jax.sharding.NamedSharding(mesh, _SWEEP_AXIS))
    replicated = _replicate((network, X, Y, *options), mesh)
    sols = _on_devices(local_solve, mesh, replicated, padded)
    preds = _on_devices(_local_predict, mesh, _replicate((X_test, Y_test), mesh), sols)
    flat = slots.ravel()
    back = np.empty(int(np.sum(flat >= 0)), dtype=int)
    back[flat[flat >= 0]] = np.nonzero(flat >= 0)[0]
    first = jax.sharding.SingleDeviceSharding(devices[0])

    def gather(tree):
        def take(x):
            return jax.device_put(x, first).reshape(-1, *x.shape[2:])[back]

        return jax.tree.map(lambda x: take(x) if eqx.is_array(x) else x, tree)

    return gather(sols), gather(preds)


_SWEEP_AXIS = jax.sharding.PartitionSpec("w")


def _strided_slots(widths: Array, n_dev: int) -> np.ndarray:
    """(n_dev, k) indices into `widths` (−1: padding): device j gets every n_dev-th width of
    the wide-to-narrow order, so each device's share spans the whole range."""
    per_dev = -(-widths.size // n_dev)
    order = np.asarray(_wide_first(widths))
    slots = np.concatenate([order, np.full(per_dev * n_dev - widths.size, -1)])
    return slots.reshape(per_dev, n_dev).T


def _wide_first(widths: Array) -> Array:
    """Indices that order `widths` from wide (C = ∞ first) to narrow, stably."""
    return jnp.argsort(jnp.where(jnp.isfinite(widths), 1 / widths, 0.0), stable=True)


def _check_devices(devices) -> list:
    """`sweep`'s `devices` as a list: all of `jax.devices()` for None, else a sequence of
    distinct `jax.Device` objects (a clear error, not one from inside JAX's sharding)."""
    if devices is None:
        return list(jax.devices())
    if isinstance(devices, jax.Device) or not isinstance(devices, Sequence):
        raise TypeError(f"devices must be a sequence of jax.Device objects, got {devices!r}")
    devices = list(devices)
    if not devices:
        raise ValueError("devices must name at least one device")
    if not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError(f"devices must be jax.Device objects (jax.devices()), got {devices!r}")
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices must be distinct, got {devices!r}")
    return devices


def _put(tree, where):
    """The arrays of `tree`, placed on `where` (a device or a sharding)."""
    return jax.tree.map(lambda x: jax.device_put(x, where) if eqx.is_array(x) else x, tree)


def _replicate(tree, mesh):
    """The arrays of `tree`, copied to every device of `mesh`."""
    return _put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


@eqx.filter_jit
def _on_devices(fn, mesh, replicated, sharded):
    """`fn(replicated, block)` on every device of `mesh` with `jax.shard_map`, where `block`
    is that device's row of `sharded` (split along its first axis); the results are stacked
    along a new first axis. Devices do not communicate. Non-array leaves stay static."""
    dyn_r, static_r = eqx.partition(replicated, eqx.is_array)
    dyn_s, static_s = eqx.partition(sharded, eqx.is_array)
    static_out = []

    def local(dr, ds):
        block = eqx.combine(jax.tree.map(lambda x: x[0], ds), static_s)
        out = fn(eqx.combine(dr, static_r), block)
        dyn_out, static = eqx.partition(out, eqx.is_array)
        static_out.append(static)
        return jax.tree.map(lambda x: x[None], dyn_out)

    spec = jax.sharding.PartitionSpec()
    dyn_out = jax.shard_map(
        local, mesh=mesh, in_specs=(spec, _SWEEP_AXIS), out_specs=_SWEEP_AXIS, check_vma=False
    )(dyn_r, dyn_s)
    return eqx.combine(dyn_out, static_out[-1])


def _local_solve_parallel(args, widths):
    network, X, Y, solve_kwargs = args
    return _sweep_solve(network, X, Y, widths, solve_kwargs)


def _local_solve_path(args, widths):
    network, X, Y, chain, max_stages, adjoint, rescue = args
    return _sweep_solve_path(network, X, Y, widths, chain, max_stages, adjoint, rescue)


def _local_predict(args, sols):
    return _sweep_predict(sols, *args)


@eqx.filter_jit
def _sweep_solve(network, X, Y, widths, solve_kwargs):
    def run(width):
        return solve(_with_width(network, width), X, Y, **solve_kwargs)

    return jax.vmap(run)(widths)


def _path_options(
    dtype,
    *,
    solver: optx.AbstractRootFinder | Sequence[Any] | str | None = None,
    max_steps: int | Sequence[int] | None = None,
    max_stages: int = _MAX_STAGES,
    precision0=None,
    adjoint: optx.AbstractAdjoint | None = None,
    past_folds: bool = False,
    minimise: bool = False,
    depth: int = 1,
    filter_size: int = 1,
):
    """`solve`'s keyword arguments, with its defaults, for the path schedule."""
    if precision0 is not None:
        raise ValueError("precision0 is not used by the path schedule (it warm-starts itself)")
    solver = _resolve_solver(solver, dtype, depth, filter_size)
    adjoint = _default_adjoint(depth) if adjoint is None else adjoint
    chain = _chain(solver, max_steps, filter_size, depth)
    return chain, max_stages, adjoint, (bool(past_folds), bool(minimise))


@eqx.filter_jit
def _sweep_solve_path(network, X, Y, widths, chain, max_stages, adjoint, rescue):
    """The path schedule: each width from the last converged one; `rescue`: `solve`'s
    (past_folds, minimise)."""
    order = _wide_first(widths)

    def step(carry, width):
        u_prev, state_prev = carry
        net = _with_width(network, width)
        sol, state = _solve_from(net, X, Y, chain, max_stages, u_prev, state_prev, adjoint, *rescue)
        u = jnp.where(sol.converged, _inverse_width(net), u_prev)
        return (u, _where(sol.converged, state, state_prev)), sol

    state0 = _gp_state(network, X)
    _, sols = jax.lax.scan(step, (jnp.zeros((), X.dtype), state0), widths[order])
    back = jnp.argsort(order)
    return jax.tree.map(lambda x: x[back] if eqx.is_array(x) else x, sols)


@eqx.filter_jit
def _sweep_predict(sols, X_test, Y_test):
    return jax.vmap(lambda s: predict(s, X_test, Y_test))(sols)
