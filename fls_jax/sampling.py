"""Ground truth: the weight posterior of the finite network, sampled (SPEC §1 and §6).

The Equations of State (SPEC §3) approximate the posterior of a *finite* network; with one
hidden layer,

    p(θ | X, Y) ∝ exp(−‖f_θ(X) − Y‖² / (2σ²)) · N(w; 0, σ_w²/S · I) · N(a; 0, s_a/(C P) · I)

with f_θ(x) = Σ_i Σ_c a_ic φ(w_c · x_i): the input cut into P patches x_i of size S (P = 1,
S = d for [`fls_jax.FCN`][]), C filters w_c shared across patches, and s_a = σ_a² (standard
scaling) or σ_a²/C (mean-field). Its C → ∞ output covariance is
``network.output_kernel(Σ₀, X)``. A network of depth L > 1 (`docs/deep.md`) has, after that
first layer, fully connected layers h^(l) = W_l φ(h^(l−1)) of widths C_l with
W_l ~ N(0, σ_{w,l}²/fan-in) (fan-in P·C_1 for l = 2, C_{l−1} after) and a readout
a ~ N(0, s_a/C_L) on the last; its deeper layers' pre-kernels are what `Solution.kernels`
predicts. This module samples that posterior exactly as written, for the
same network objects the theory solves, and measures the observables the theory predicts
(SPEC §6), with error bars, so that theory and networks can be compared field by field:

- [`fls_jax.sampling.sample`][]: many independent chains, `jax.vmap`-ed and jit-compiled, a
  `lax.scan` over steps. ``"mala"`` and ``"hmc"`` are BlackJAX's kernels (unbiased);
  ``"langevin"`` is the paper's procedure, gradient descent plus Gaussian noise (the
  unadjusted Langevin algorithm), whose stationary law is off by O(step size).
- [`fls_jax.sampling.estimates`][]: the posterior mean predictor, ensemble variance, train and
  test errors, the first-layer second moment Σ̂ = (1/C) Σ_c w_c w_cᵀ, its top eigenvalue and
  its alignment with a teacher, and for deep networks the pre-kernels K̂^(l) = (1/C_l) H_l H_lᵀ
  of the deeper layers, each with a standard error over chains. The names match
  [`fls_jax.Prediction`][] and [`fls_jax.Solution`][] (``sigma``, ``kernels``).

The chains run in prior-whitened coordinates, w = √(σ_w²/S) u and a = √(s_a/(C P)) v (and
each deeper W_l scaled by its prior standard deviation), so the prior is N(0, I) in every
coordinate. That is a fixed linear change of variables: the posterior
of (w, a) is the same distribution, only the samplers' isotropic proposals fit it better.
With ``readout="marginal"`` the readout a is not in the chain at all: it is integrated out
exactly and drawn from its Gaussian conditional at each kept draw (see `sample`).

BlackJAX is an optional dependency (``pip install fls_jax[sampling]``); it is imported when a
sampler needs it.
"""

import contextlib
import warnings
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._free_energy import _gp_post_kernels
from ._network import AbstractNetwork
from ._predict import _validate_test
from ._solve import _check_int, _check_key, _validate


Method = Literal["mala", "hmc", "langevin"]
_METHODS = ("mala", "hmc", "langevin")
Readout = Literal["marginal", "joint"]
_READOUTS = ("marginal", "joint")
_RHAT_MIXED = 1.1  # `estimates` warns above this max split R̂ (Gelman et al.'s threshold)
_HMC_JITTER = 0.2  # HMC step sizes are drawn uniformly in ε·[1 − 0.2, 1 + 0.2] (no resonances)


def _import_blackjax():
    try:
        import blackjax
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "fls_jax.sampling needs BlackJAX for the 'mala' and 'hmc' samplers: "
            "pip install fls_jax[sampling]"
        ) from err
    return blackjax


# --------------------------------------------------------------------------------------------
# The finite network (SPEC §1)
# --------------------------------------------------------------------------------------------


def apply(
    network: AbstractNetwork,
    first_layer: Float[Array, "C S"],
    readout: Float[Array, "m P_out C_L"],
    X: Float[Array, "n d"],
    hidden: tuple[Float[Array, "C_l fan_in"], ...] = (),
) -> Float[Array, "n m"]:
    """The finite network of SPEC §1–3: f_k(x) = Σ_i Σ_c a_ic^(k) φ(w_c · x_i) for one hidden
    layer; for depth L > 1 the deeper layers are fully connected (`docs/deep.md`).

    **Arguments:**

    - `network`: an [`fls_jax.FCN`][] or [`fls_jax.PatchCNN`][] (its activations and patching
      are used; the weights carry their own scale).
    - `first_layer`: the C_1 filters w_c as rows (C_1×S).
    - `readout`: a_ic^(k) for output k, patch i, channel c (m×P×C) for one hidden layer;
      a_c^(k) (m×1×C_L) for deeper networks, whose readout sees the last layer's C_L units.
    - `X`: inputs (n×d).
    - `hidden`: for depth L > 1, the weights W_2, …, W_L into the deeper layers, W_l of shape
      C_l×(P·C_1) for l = 2 (all P·C_1 outputs of the first layer) and C_l×C_{l−1} after.

    **Returns:** the outputs f(X) (n×m).
    """
    return _forward(network, first_layer, readout, X, hidden)[0]


def _forward(network, first_layer, readout, X, hidden):
    """f(X) and the deeper layers' pre-activations h^(l)(X) (n×C_l, l = 2…L)."""
    phi, pre = _features(network, first_layer, X, hidden)
    return phi @ readout.reshape(readout.shape[0], -1).T, pre


def _features(network, first_layer, X, hidden):
    """The readout's inputs φ(X) (n×(P_out·C_L), patch-major: column p·C_L + c, as the
    readout's (m, P_out, C_L) flattens) and the deeper layers' pre-activations (n×C_l)."""
    if len(hidden) != network.depth - 1:
        raise ValueError(
            f"a depth-{network.depth} network needs {network.depth - 1} hidden weight "
            f"matrices, got {len(hidden)}"
        )
    h = jnp.einsum("pns,cs->pnc", network.patches(X), first_layer)
    post = network.layer_activation(1)(h)  # P×n×C_1
    # n×(P·C_1), the width spelled out: with no test inputs (n = 0) −1 cannot be inferred.
    post = jnp.transpose(post, (1, 0, 2)).reshape(X.shape[0], post.shape[0] * post.shape[2])
    pre = []
    for layer, W in enumerate(hidden, start=2):
        h = post @ W.T
        pre.append(h)
        post = network.layer_activation(layer)(h)
    return post, tuple(pre)


class _Model(eqx.Module):
    """The posterior of SPEC §1 in prior-whitened coordinates θ, flattened.

    `widths` are the integer widths (C_1, …, C_L). The weights into deeper layer l have prior
    N(0, σ_{w,l}²/fan-in), fan-in P·C_1 for l = 2 and C_{l−1} after, so that the pre-kernel of
    layer l has prior mean Q^(l−1) (`docs/deep.md`); the readout N(0, s_a/(C_L P_out)).

    With `marginal`, θ holds the hidden weights only: the readout v is integrated out exactly
    (given the hidden weights, f = Φ v with v ~ N(0, I) is Bayesian linear regression on the
    scaled features Φ), `logdensity` is the log marginal likelihood plus the hidden prior, and
    `observe` draws v from its Gaussian conditional and also returns the conditional moments
    of f (Rao–Blackwellised). Otherwise θ holds the readout too (the joint posterior).
    """

    network: AbstractNetwork
    X: Array
    Y: Array
    X_test: Array
    widths: tuple[int, ...] = eqx.field(static=True)
    S: int = eqx.field(static=True)
    P: int = eqx.field(static=True)
    marginal: bool = eqx.field(static=True, default=False)

    @property
    def m(self) -> int:
        return self.Y.shape[1]

    @property
    def P_out(self) -> int:
        """Readout groups: the P patches for one hidden layer, 1 for deeper networks."""
        return self.P if len(self.widths) == 1 else 1

    @property
    def D(self) -> int:
        """The readout's fan-in P_out·C_L: the number of features Φ per output."""
        return self.P_out * self.widths[-1]

    def _shapes(self) -> list[tuple[int, int, int]]:
        """(rows, columns, fan-in) of w, W_2, …, W_L and (unless marginal) the readout."""
        C = self.widths
        shapes = [(C[0], self.S, self.S)]
        for layer in range(2, len(C) + 1):
            fan_in = self.P * C[0] if layer == 2 else C[layer - 2]
            shapes.append((C[layer - 1], fan_in, fan_in))
        if not self.marginal:
            shapes.append((self.m, self.D, self.D))
        return shapes

    @property
    def dim(self) -> int:
        return sum(r * c for r, c, _ in self._shapes())

    def _blocks(self, theta):
        net = self.network
        mats, start = [], 0
        for layer, (rows, cols, fan_in) in enumerate(self._shapes(), start=1):
            block = theta[start : start + rows * cols].reshape(rows, cols)
            start += rows * cols
            var = net.readout_scale() if layer > net.depth else net.layer_sigma_w2(layer)
            mats.append(jnp.sqrt(var / fan_in) * block)
        return mats

    def weights(self, theta):
        """(first layer, readout, deeper layers) of the joint θ."""
        mats = self._blocks(theta)
        readout = mats[-1].reshape(self.m, self.P_out, self.widths[-1])
        return mats[0], readout, tuple(mats[1:-1])

    def _hidden(self, theta):
        mats = self._blocks(theta)
        return mats[0], tuple(mats[1 : self.network.depth])

    def _scaled_features(self, theta, X):
        """Φ = √(s_a/D) φ(X) (n×D): f = Φ v for the whitened readout v ~ N(0, I)."""
        w, hidden = self._hidden(theta)
        phi, _ = _features(self.network, w, X, hidden)
        return jnp.sqrt(self.network.readout_scale() / self.D) * phi

    def _conditional(self, theta):
        """The readout's Gaussian conditional given the hidden weights, in whichever of the
        D×D (Woodbury: A = I + ΦᵀΦ/σ² = LLᵀ, c = L⁻¹ΦᵀY/σ²) or n×n (K = ΦΦᵀ + σ²I = LLᵀ,
        c = L⁻¹Y) forms is smaller. Returns (log N(Y; 0, K) + (nm/2) log 2π, Φ, L, c)."""
        Phi = self._scaled_features(theta, self.X)
        noise = self.network.noise
        n, m = self.Y.shape
        if self.D <= n:  # A = I + ΦᵀΦ/σ² (D×D); v | · ~ N(A⁻¹ΦᵀY/σ², A⁻¹)
            L = jnp.linalg.cholesky(jnp.eye(self.D, dtype=Phi.dtype) + Phi.T @ Phi / noise)
            c = jax.scipy.linalg.solve_triangular(L, Phi.T @ self.Y / noise, lower=True)
            quad = jnp.sum(self.Y**2) / noise - jnp.sum(c**2)
            logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(L))) + n * jnp.log(noise)
        else:  # K = ΦΦᵀ + σ²I (n×n)
            L = jnp.linalg.cholesky(Phi @ Phi.T + noise * jnp.eye(n, dtype=Phi.dtype))
            c = jax.scipy.linalg.solve_triangular(L, self.Y, lower=True)
            quad = jnp.sum(c**2)
            logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(L)))
        return -0.5 * quad - 0.5 * m * logdet, Phi, L, c

    def logdensity(self, theta):
        if self.marginal:
            return self._conditional(theta)[0] - 0.5 * jnp.sum(theta**2)
        w, a, hidden = self.weights(theta)
        r = apply(self.network, w, a, self.X, hidden) - self.Y
        return -0.5 * jnp.sum(r**2) / self.network.noise - 0.5 * jnp.sum(theta**2)

    def observe(self, theta, key):
        """What is kept at every draw: f(X), f(X*), Σ̂, μ̂, and with `marginal` the conditional
        means E[f(X) | hidden], E[f(X*) | hidden] and variance Var[f(X*) | hidden] (n*)."""
        if not self.marginal:
            w, a, hidden = self.weights(theta)
            f_train = apply(self.network, w, a, self.X, hidden)
            f_test = apply(self.network, w, a, self.X_test, hidden)
            return f_train, f_test, w.T @ w / w.shape[0], jnp.mean(w, axis=0)
        w, _ = self._hidden(theta)
        _, Phi, L, c = self._conditional(theta)
        Phi_t = self._scaled_features(theta, self.X_test)
        noise = self.network.noise
        solve = jax.scipy.linalg.solve_triangular
        if self.D <= self.Y.shape[0]:
            # v = A⁻¹ΦᵀY/σ² + L⁻ᵀξ, A = LLᵀ; E[f* | ·] = Φ*A⁻¹ΦᵀY/σ², Var = diag Φ*A⁻¹Φ*ᵀ.
            xi = jax.random.normal(key, c.shape, c.dtype)
            v_mean = solve(L.T, c, lower=False)
            v = v_mean + solve(L.T, xi, lower=False)
            mean_train, mean_test = Phi @ v_mean, Phi_t @ v_mean
            var_test = jnp.sum(solve(L, Phi_t.T, lower=True) ** 2, axis=0)
        else:
            # Matheron's rule: v = v₀ + ΦᵀK⁻¹(Y − Φv₀ − ε), v₀ ~ N(0, I), ε ~ N(0, σ²I).
            k0, k1 = jax.random.split(key)
            v0 = jax.random.normal(k0, (self.D, self.m), c.dtype)
            eps = jnp.sqrt(noise) * jax.random.normal(k1, self.Y.shape, c.dtype)

            def k_inv(r):
                return solve(L.T, solve(L, r, lower=True), lower=False)

            alpha = solve(L.T, c, lower=False)  # K⁻¹Y
            v = v0 + Phi.T @ k_inv(self.Y - Phi @ v0 - eps)
            mean_train = self.Y - noise * alpha
            cross = Phi_t @ Phi.T  # n*×n
            mean_test = cross @ alpha
            var_test = jnp.sum(Phi_t**2, axis=1) - jnp.sum(solve(L, cross.T, lower=True) ** 2, 0)
            var_test = jnp.maximum(var_test, 0.0)
        return (
            Phi @ v,
            Phi_t @ v,
            w.T @ w / w.shape[0],
            jnp.mean(w, axis=0),
            mean_train,
            mean_test,
            var_test,
        )

    def kernels(self, theta):
        """The deeper layers' pre-kernels K̂^(l) = (1/C_l) H_l H_lᵀ on the training inputs:
        accumulated over the draws of each chain, not kept per draw (n² floats each)."""
        w, hidden = self._hidden(theta)
        _, pre = _features(self.network, w, self.X, hidden)
        return tuple(h @ h.T / h.shape[1] for h in pre)


# --------------------------------------------------------------------------------------------
# The chains
# --------------------------------------------------------------------------------------------


class _ULAState(NamedTuple):
    position: Array
    logdensity: Array
    logdensity_grad: Array


def _ula_kernel(logdensity):
    grad_fn = jax.value_and_grad(logdensity)

    def init(theta):
        return _ULAState(theta, *grad_fn(theta))

    def step(state, key, eps):
        # θ ← θ + ε ∇log p(θ) + √(2ε) ξ: gradient descent plus noise, no accept/reject.
        xi = jax.random.normal(key, state.position.shape, state.position.dtype)
        theta = state.position + eps * state.logdensity_grad + jnp.sqrt(2 * eps) * xi
        return _ULAState(theta, *grad_fn(theta)), jnp.ones((), theta.dtype)

    return init, step


def _x64_off():
    """A context in which JAX's default float is float32 (`jax.enable_x64`; a JAX without it
    keeps the switch as it is)."""
    enable_x64 = getattr(jax, "enable_x64", None)
    return contextlib.nullcontext() if enable_x64 is None else enable_x64(False)


def _mala_kernel(logdensity):
    blackjax = _import_blackjax()
    mala = blackjax.mala.build_kernel()

    def step(state, key, eps):
        # BlackJAX's MALA draws its noise with σ = 1.0 in JAX's default float (float64 under
        # x64): a float32 chain's proposal came back float64 and its accept/reject `cond`
        # raised a TypeError (stop 61). A float32 chain's step runs with x64 off, in float32.
        float64 = state.position.dtype == jnp.float64
        with contextlib.nullcontext() if float64 else _x64_off():
            state, info = mala(key, state, logdensity, eps)
        return state, info.acceptance_rate

    return (lambda theta: blackjax.mala.init(theta, logdensity)), step


def _hmc_kernel(logdensity, num_integration_steps: int):
    blackjax = _import_blackjax()
    hmc = blackjax.hmc.build_kernel()

    def step(state, key, eps):
        k_eps, k_hmc = jax.random.split(key)
        jitter = jax.random.uniform(k_eps, (), eps.dtype, 1 - _HMC_JITTER, 1 + _HMC_JITTER)
        ones = jnp.ones(state.position.shape, state.position.dtype)
        state, info = hmc(k_hmc, state, logdensity, eps * jitter, ones, num_integration_steps)
        return state, info.acceptance_rate

    return (lambda theta: blackjax.hmc.init(theta, logdensity)), step


def _kernel(method: str, logdensity, num_integration_steps: int):
    """(init, step) for one chain; step(state, key, ε) → (state, acceptance probability)."""
    if method == "langevin":
        return _ula_kernel(logdensity)
    if method == "mala":
        return _mala_kernel(logdensity)
    return _hmc_kernel(logdensity, num_integration_steps)


def _dual_averaging(target):
    _import_blackjax()
    from blackjax.adaptation.step_size import dual_averaging_adaptation

    return dual_averaging_adaptation(target)


@eqx.filter_jit
def _run_chains(
    logdensity,
    observe,
    init_positions: Float[Array, "chains dim"],
    key: PRNGKeyArray,
    step_size: Float[Array, ""],
    target_acceptance: Float[Array, ""],
    *,
    method: str,
    num_samples: int,
    burn_in: int,
    thin: int,
    num_integration_steps: int = 1,
    adapt: bool = True,
    accumulate=None,
):
    """Run independent chains of one kernel on a flat position vector (SPEC §6).

    `logdensity(θ)` is the target's log density and `observe(θ, key)` the pytree of
    observables recorded at every kept draw (`key` for any randomness of its own);
    `accumulate(θ)`, if given, a pytree of large observables that are only summed over each
    chain's kept draws (see below). Each chain runs `burn_in`
    steps (adapting its step size by BlackJAX's dual averaging towards `target_acceptance`
    when `adapt`, for MALA/HMC only), then `num_samples · thin` steps at the frozen step
    size, keeping every `thin`-th state. The chains are `jax.vmap`-ed; the steps are
    `lax.scan`-s.

    **Returns:** (observables with leading axes (chains, num_samples), log densities at the kept
    draws (chains, num_samples), mean acceptance probability after burn-in (chains), the step
    size used after burn-in (chains), and, with `accumulate` (else None), per leaf of
    `accumulate(θ)` (sum over all kept draws, sum and sum of squares over the first
    ⌊num_samples/2⌋ draws, the same over the next ⌊num_samples/2⌋), each with a leading
    chains axis: a chain's mean and split R̂ without storing the draws).
    """
    init, step = _kernel(method, logdensity, num_integration_steps)
    adapt = adapt and method != "langevin" and burn_in > 0
    adapter = _dual_averaging(target_acceptance) if adapt else None

    def one_chain(key, theta0):
        state = init(theta0)
        k_burn, k_run = jax.random.split(key)
        if adapter is not None:
            da_init, da_update, da_final = adapter

            def burn(carry, k):
                state, da = carry
                state, acc = step(state, k, jnp.exp(da.log_step_size))
                acc = jnp.where(jnp.isfinite(acc), acc, 0.0)
                return (state, da_update(da, acc)), None

            (state, da), _ = jax.lax.scan(
                burn, (state, da_init(step_size)), jax.random.split(k_burn, burn_in)
            )
            eps = da_final(da)
        else:
            eps = step_size
            if burn_in > 0:
                state, _ = jax.lax.scan(
                    lambda s, k: step(s, k, eps), state, jax.random.split(k_burn, burn_in)
                )

        half = num_samples // 2

        def block(carry, inputs):
            state, sums = carry
            k, i = inputs
            k_steps, k_obs = jax.random.split(k)
            state, acc = jax.lax.scan(
                lambda s, kk: step(s, kk, eps), state, jax.random.split(k_steps, thin)
            )
            acc = jnp.where(jnp.isfinite(acc), acc, 0.0)
            if accumulate is not None:
                first, second = i < half, (i >= half) & (i < 2 * half)

                def add(m, x):
                    total, s1, q1, s2, q2 = m
                    return (
                        total + x,
                        s1 + jnp.where(first, x, 0),
                        q1 + jnp.where(first, x**2, 0),
                        s2 + jnp.where(second, x, 0),
                        q2 + jnp.where(second, x**2, 0),
                    )

                x = accumulate(state.position)
                sums = jax.tree.map(lambda xi, m: add(m, xi), x, sums)
            obs = observe(state.position, k_obs)
            return (state, sums), (obs, state.logdensity, jnp.mean(acc))

        if accumulate is None:
            sums0 = None
        else:
            shapes = jax.eval_shape(accumulate, state.position)
            sums0 = jax.tree.map(lambda x: (jnp.zeros(x.shape, x.dtype),) * 5, shapes)
        inputs = (jax.random.split(k_run, num_samples), jnp.arange(num_samples))
        (_, sums), (obs, logp, acc) = jax.lax.scan(block, (state, sums0), inputs)
        return obs, logp, jnp.mean(acc), eps, sums

    keys = jax.random.split(key, init_positions.shape[0])
    return jax.vmap(one_chain)(keys, init_positions)


# --------------------------------------------------------------------------------------------
# Public sampler
# --------------------------------------------------------------------------------------------


class Samples(eqx.Module):
    """Observables of the kept posterior draws of a finite network (SPEC §6).

    Arrays have leading axes (chains, draws). Chains are independent and start from the prior.

    **Fields:**

    - `f_train`: the network outputs on the training inputs, f(X) (chains×draws×n×m).
    - `f_test`: the network outputs on the test inputs, f(X*) (chains×draws×n*×m).
    - `f_train_mean`, `f_test_mean`: E[f | hidden weights, data] at each draw, the readout
      integrated out exactly (Rao–Blackwellised; chains×draws×n×m and ×n*×m), and
      `f_test_var`: Var[f(x*) | hidden weights, data] (chains×draws×n*), the same for every
      output. With ``readout="joint"`` the readout is sampled: these are f_train, f_test and
      0. [`fls_jax.sampling.estimates`][] uses these, not the draws.
    - `sigma`: Σ̂ = (1/C) Σ_c w_c w_cᵀ, the first layer's second moment (chains×draws×S×S);
      its posterior mean is what [`fls_jax.Solution`][]'s `sigma` predicts.
    - `weight_mean`: μ̂ = (1/C) Σ_c w_c, the first layer's mean over filters
      (chains×draws×S). Its posterior mean is the mean of one filter's posterior: zero by
      symmetry for an odd φ (w → −w with the readout's sign), not for ReLU, whose Gaussian
      EoS leave it out (SPEC §3, "Non-odd activations"; `docs/fidelity.md`).
    - `kernels`: for depth L > 1, (K̂^(2), …, K̂^(L)), K̂^(l) = (1/C_l) H_l H_lᵀ with H_l the
      n×C_l pre-activations of layer l on the training inputs, averaged over each chain's
      kept draws (chains×n×n each: n² floats per draw would not fit at large n); their
      posterior means are what `Solution.kernels` predicts. Empty for one hidden layer.
    - `log_density`: the unnormalised log posterior at each kept draw (a burn-in trace).
    - `acceptance_rate`: mean Metropolis acceptance probability after burn-in, per chain
      (1 for ``"langevin"``: ULA accepts every step, which is the source of its bias).
    - `step_size`: the step size used after burn-in, per chain (adapted for MALA/HMC).
    - `rhat_f_test`, `rhat_sigma`, `rhat_kernels`: split R̂ over chains of each test prediction
      (of `f_test_mean`, n*×m), each entry of Σ̂ (S×S) and of each K̂^(l) (n×n); values
      near 1 (say < 1.05) mean the chains agree.
    - `ess_f_test`, `ess_sigma`: effective sample sizes of the test predictions and of Σ̂.
    - `method`, `readout`, `width`: the sampler, ``"marginal"`` or ``"joint"``, and the integer
      width C.
    """

    f_train: Float[Array, "chains draws n m"]
    f_test: Float[Array, "chains draws n_test m"]
    f_train_mean: Float[Array, "chains draws n m"]
    f_test_mean: Float[Array, "chains draws n_test m"]
    f_test_var: Float[Array, "chains draws n_test"]
    sigma: Float[Array, "chains draws S S"]
    weight_mean: Float[Array, "chains draws S"]
    kernels: tuple[Float[Array, "chains n n"], ...]
    log_density: Float[Array, "chains draws"]
    acceptance_rate: Float[Array, " chains"]
    step_size: Float[Array, " chains"]
    rhat_f_test: Float[np.ndarray, "n_test m"]
    rhat_sigma: Float[np.ndarray, "S S"]
    ess_f_test: Float[np.ndarray, "n_test m"]
    ess_sigma: Float[np.ndarray, "S S"]
    rhat_kernels: tuple[Float[np.ndarray, "n n"], ...]
    method: str = eqx.field(static=True)
    readout: str = eqx.field(static=True)
    width: int = eqx.field(static=True)

    @property
    def max_rhat(self) -> float:
        """The largest split R̂ over the test predictions and the entries of Σ̂ and K̂^(l)."""
        vals = [np.asarray(x).ravel() for x in (self.rhat_f_test, self.rhat_sigma)]
        vals += [np.asarray(x).ravel() for x in self.rhat_kernels]
        return float(np.max(np.concatenate(vals)))

    @property
    def diverged(self) -> np.ndarray:
        """Per chain: whether any kept draw has a non-finite log density or observable."""
        arrays = (self.log_density, self.f_train, self.f_test, self.sigma, self.weight_mean)
        arrays += tuple(self.kernels)
        arrays += (self.f_train_mean, self.f_test_mean, self.f_test_var)
        flat = [np.asarray(x).reshape(x.shape[0], -1) for x in arrays]
        return np.asarray(~np.isfinite(np.concatenate(flat, axis=1)).all(axis=1))


def _split_rhat_ess(x: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Split R̂ and effective sample size over axes (chains, draws), per trailing entry.

    Split R̂ (Gelman et al., BDA3 §11.4): each chain is cut into two halves and
    R̂ = √(V̂/W), V̂ = (N−1)/N W + B/N, with W the mean within-half variance and B/N the
    variance of the half means. ESS: the multi-chain autocorrelation estimate with Geyer's
    initial positive, monotone sequence of paired autocorrelations (as in Stan).
    """
    x = np.asarray(x, dtype=float)
    K, T = x.shape[:2]
    tail = x.shape[2:]
    x = x.reshape(K, T, -1)
    if x.shape[2] == 0:
        return np.zeros(tail), np.zeros(tail)
    half = T // 2
    split = np.concatenate([x[:, :half], x[:, half : 2 * half]], axis=0)
    rhat = _split_rhat(split.mean(1), split.var(1, ddof=1), half)
    # Autocovariances of each chain by FFT, averaged over chains.
    c = x - x.mean(1, keepdims=True)
    nfft = 1 << (2 * T - 1).bit_length()
    spec = np.fft.rfft(c, nfft, axis=1)
    acov = np.fft.irfft(spec * np.conj(spec), nfft, axis=1)[:, :T] / T
    W_full = x.var(1, ddof=1).mean(0)
    var_full = (T - 1) / T * W_full + x.mean(1).var(0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 1 - (W_full - acov.mean(0)) / var_full  # (T, D)
        pairs = rho[: 2 * (T // 2)].reshape(T // 2, 2, -1).sum(1)
        keep = np.cumprod(pairs > 0, axis=0).astype(bool)
        pairs = np.minimum.accumulate(np.where(keep, pairs, 0.0), axis=0)
        tau = -1 + 2 * pairs.sum(0)
        ess = K * T / np.maximum(tau, 1 / np.log10(K * T + 10))
    return rhat.reshape(tail), ess.reshape(tail)


def _split_rhat_from_sums(s1, q1, s2, q2, half: int) -> np.ndarray:
    """Split R̂ (as in `_split_rhat_ess`) from each chain's sums and sums of squares over the
    two halves of its draws (leading axis: chains), without the draws themselves."""
    s = np.concatenate([np.asarray(s1), np.asarray(s2)])
    q = np.concatenate([np.asarray(q1), np.asarray(q2)])
    means = s / half
    return _split_rhat(means, np.maximum(q - half * means**2, 0.0) / (half - 1), half)


def _split_rhat(means: np.ndarray, variances: np.ndarray, half: int) -> np.ndarray:
    """R̂ = √(V̂/W), V̂ = (N−1)/N W + B/N, from the means and variances (ddof 1) of the 2K
    half-chains of N = `half` draws each (leading axis), per trailing entry. Where no
    half-chain moves (W = 0): 1 if they all sit at the same value (a quantity that is
    constant under the posterior, e.g. f at x = 0), ∞ if they sit at different ones (stuck
    chains), and ∞ where a draw is not finite. (It was NaN, which made `Samples.max_rhat`
    NaN, and a check `max_rhat < 1.05` could not tell.)"""
    W = variances.mean(0)
    B = means.var(0, ddof=1)
    var_plus = (half - 1) / half * W + B
    with np.errstate(invalid="ignore", divide="ignore"):
        rhat = np.sqrt(var_plus / np.where(W > 0, W, np.nan))
    rhat = np.where(W > 0, rhat, np.where(B > 0, np.inf, 1.0))
    return np.where(np.isfinite(W) & np.isfinite(B), rhat, np.inf)


def _check_widths(network: AbstractNetwork) -> tuple[int, ...]:
    """The integer widths (C_1, …, C_L), C_l = C · r_l, or a ValueError."""
    try:
        width = np.asarray(network.width)
    except jax.errors.TracerArrayConversionError as err:
        raise ValueError("sample needs a concrete network width, not a traced one") from err
    if width.shape != () or not np.isfinite(width) or width < 1 or width != np.round(width):
        raise ValueError(
            f"sampling needs a finite integer width C >= 1 (there is no finite network to "
            f"sample at C = {width}; the GP limit is fj.solve with width=inf), got {width}"
        )
    widths = tuple(float(width) * network.width_ratio(l) for l in range(1, network.depth + 1))
    # Within rounding of an integer counts (100 · 0.29 = 28.999999999999996 is 29 neurons).
    if any(abs(w - np.round(w)) > 1e-9 * max(w, 1.0) for w in widths):
        raise ValueError(
            f"sampling needs integer layer widths C · width_ratios, got {widths} for C = {width}"
        )
    return tuple(int(np.round(w)) for w in widths)


def sample(
    network: AbstractNetwork,
    X: Float[ArrayLike, "n d"],
    Y: Float[ArrayLike, "n m"] | Float[ArrayLike, " n"],
    X_test: Float[ArrayLike, "n_test d"] | None = None,
    *,
    key: PRNGKeyArray,
    num_chains: int = 8,
    num_samples: int = 200,
    burn_in: int = 500,
    thin: int = 1,
    method: Method = "hmc",
    readout: Readout = "joint",
    step_size: float | None = None,
    num_integration_steps: int | None = None,
    target_acceptance: float | None = None,
    adapt_step_size: bool = True,
) -> Samples:
    """Sample the weight posterior of the finite network (SPEC §1), for ground truth (SPEC §6).

    `num_chains` independent chains start from the prior and run in prior-whitened coordinates
    (see the module docstring), vmapped and jit-compiled. Each runs `burn_in` steps, then
    `num_samples · thin` steps keeping every `thin`-th; only the observables of the kept draws
    are stored (see [`fls_jax.sampling.Samples`][]), about
    ``8 · num_chains · (num_samples · ((n + n*) m + S²) + 5 (L − 1) n²)`` bytes for depth L
    (each deeper layer's pre-kernel is summed over the draws, not kept per draw), and
    ``8 · num_chains · num_samples · ((n + n*) m + n*)`` more with ``readout="marginal"``.

    The readout. Given the hidden weights the network is linear in its readout, whose
    posterior is then Gaussian: Bayesian linear regression on the last layer's D = P_out·C_L
    features Φ. With ``readout="joint"`` (the default) the readout is in the chain with the
    other weights. With ``readout="marginal"`` it is integrated out exactly: the chains run on
    the hidden weights only, under p(hidden) N(Y; 0, ΦΦᵀ + σ²I), and at each kept draw the
    readout is drawn from its conditional; the conditional means and variances of f are kept
    too, and `estimates` averages those (Rao–Blackwellisation). Each step then costs a
    Cholesky factorisation of the smaller of ΦᵀΦ (D×D) and ΦΦᵀ (n×n) and its gradient, i.e.
    O(n min(n, D)²) against the joint chain's O(n D S). Measured on 2 CPU cores
    (`benchmarks/sampler_readout.py`, narrow FCNs, n = 32–128, C = 4–16): a run takes
    1.4–2.8× the joint one; Σ̂'s effective sample size 1–3.3× larger; the spread of the test error
    over seeds 0.9–2.3× smaller; both unbiased against exact posteriors. It pays most for the
    ensemble variance, whose readout share it removes (0.15 % error bars on a C = 256 FCN in
    `tests/test_sampling.py`, resolving its O(1/C) shift from the GP).

    Deep networks (depth L > 1, `docs/deep.md`) are sampled as they are defined there: the
    first layer as for one hidden layer, then fully connected layers of widths C_l = C · r_l
    with weights N(0, σ_{w,l}²/fan-in), and a readout N(0, s_a/C_L); the pre-kernels of the
    deeper layers on the training inputs are recorded (`Samples.kernels`).

    Methods:

    - ``"mala"``: BlackJAX's Metropolis-adjusted Langevin algorithm; unbiased.
    - ``"hmc"``: BlackJAX's Hamiltonian Monte Carlo (identity mass matrix in the whitened
      coordinates, `num_integration_steps` leapfrog steps, step size jittered by ±20 % per
      transition); unbiased, and much faster to decorrelate than MALA when σ² is small.
    - ``"langevin"``: the paper's procedure, gradient descent plus Gaussian noise, i.e. the
      unadjusted Langevin algorithm θ ← θ + ε ∇log p(θ) + √(2ε) ξ, ξ ~ N(0, I). It has no
      accept/reject step, so its stationary distribution is *not* the posterior: it is biased
      by O(ε) (for a Gaussian posterior of precision Λ the variances along Λ's eigenvectors
      are 1/(λ(1 − ελ/2)) instead of 1/λ; the mean is exact). It needs ε well below 2/λ_max.
      Like the others it runs in the whitened coordinates, i.e. it is gradient descent with a
      learning rate proportional to each layer's prior variance.

    For MALA and HMC the step size is adapted during burn-in by BlackJAX's dual averaging
    (towards `target_acceptance`, default 0.57 for MALA and 0.75 for HMC) and then frozen,
    per chain, so the kept draws come from a fixed, valid Markov kernel.

    **Arguments:**

    - `network`: [`fls_jax.FCN`][] or [`fls_jax.PatchCNN`][], of any depth, with a finite
      integer `width` (and integer layer widths C · r_l).
    - `X`, `Y`: training inputs (n×d) and targets (n×m or n).
    - `X_test`: optional test inputs (n*×d) whose outputs are recorded.
    - `key`: a JAX PRNG key.
    - `num_chains` (>= 2, for R̂ and error bars), `num_samples` (kept draws per chain, >= 4),
      `burn_in`, `thin`: chain lengths.
    - `method`: ``"hmc"`` (default), ``"mala"`` or ``"langevin"``. MALA was the default
      until stop 44, when it was found not to mix at these chain lengths: max R̂ 3.0–4.4 on
      a linear FCN with n = 12 and C = 4, 8–9 on an erf FCN with n = 64 and C = 16, 24–27 at
      C = 64 and σ² = 10⁻³; HMC's 1.02 on all three, at 2.5×, 10× and 40× MALA's wall time
      (`benchmarks/sampler_mixing.py`).
    - `readout`: ``"joint"`` (default) or ``"marginal"``, see above.
    - `step_size`: ε (the initial value when adapted). Required for ``"langevin"``. Default
      for MALA/HMC: from the GP-limit curvature λ = 1 + λ_max(Q_f(X))/σ² (Q_f the NNGP
      output kernel) of the
      likelihood, 0.5 λ^(−1) dim^(−1/3) (MALA) or 0.5 λ^(−1/2) (HMC).
    - `num_integration_steps`: HMC leapfrog steps per transition; default ⌈1.5 √λ⌉ (a
      trajectory of about 0.75 prior standard deviations at the initial step size
      0.5 λ^(−1/2)), at most 256.
    - `target_acceptance`: target of the step-size adaptation.
    - `adapt_step_size`: adapt ε during burn-in (MALA/HMC).

    **Returns:** a [`fls_jax.sampling.Samples`][]. `sample` compiles and vmaps its chains
    itself and computes R̂ and effective sample sizes in NumPy: call it outside `jax.jit`
    and `jax.vmap` (a traced argument is refused).
    """
    traced = (network, X, Y, X_test, key)
    if any(isinstance(leaf, Tracer) for leaf in jax.tree.leaves(traced)):
        raise TypeError(
            "sample runs its own compiled, vmapped chains and reads concrete values (widths, "
            "step sizes, R̂): call it outside jax.jit and jax.vmap (for several keys, "
            "call it once per key, or raise num_chains)"
        )
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if readout not in _READOUTS:
        raise ValueError(f"readout must be one of {_READOUTS}, got {readout!r}")
    # Weights are sampled directly: a singular GP-limit prior (a deep linear FCN with n > d)
    # is no obstacle here, unlike for the EoS.
    network, X, Y = _validate(network, X, Y)
    if X_test is None:
        X_test = jnp.zeros((0, X.shape[1]), X.dtype)
    else:
        X_test, _ = _validate_test(X, Y, X_test, None)
    widths = _check_widths(network)
    num_chains = _check_int("num_chains", num_chains, 2)
    num_samples = _check_int("num_samples", num_samples, 4)
    burn_in = _check_int("burn_in", burn_in, 0)
    thin = _check_int("thin", thin, 1)
    _check_key(key)
    if method == "langevin" and step_size is None:
        raise ValueError("method='langevin' needs an explicit step_size (its bias is O(step_size))")
    for name, val in (("step_size", step_size), ("target_acceptance", target_acceptance)):
        if val is not None and not (np.isfinite(val) and val > 0):
            raise ValueError(f"{name} must be a finite positive number, got {val!r}")
    if target_acceptance is not None and not 0 < target_acceptance < 1:
        raise ValueError(f"target_acceptance must lie in (0, 1), got {target_acceptance}")
    if num_integration_steps is not None:
        num_integration_steps = _check_int("num_integration_steps", num_integration_steps, 1)

    S = network.filter_size(X.shape[1])
    P = int(network.patches(X[:1]).shape[0])
    model = _Model(network, X, Y, X_test, widths=widths, S=S, P=P, marginal=readout == "marginal")
    if step_size is None or (method == "hmc" and num_integration_steps is None):
        q = _gp_post_kernels(network, X)[-1]
        lam = 1.0 + float(np.linalg.eigvalsh(np.asarray(q))[-1]) / float(network.noise)
        if step_size is None:
            step_size = 0.5 / lam * model.dim ** (-1 / 3) if method == "mala" else 0.5 / lam**0.5
        if num_integration_steps is None:
            num_integration_steps = int(min(256, np.ceil(1.5 * np.sqrt(lam))))
    if target_acceptance is None:
        target_acceptance = 0.57 if method == "mala" else 0.75

    k_init, k_run = jax.random.split(key)
    init = jax.random.normal(k_init, (num_chains, model.dim), X.dtype)
    obs, logp, acc, eps, sums = _run_chains(
        model.logdensity,
        model.observe,
        init,
        k_run,
        jnp.asarray(step_size, X.dtype),
        jnp.asarray(target_acceptance, X.dtype),
        method=method,
        num_samples=num_samples,
        burn_in=burn_in,
        thin=thin,
        num_integration_steps=num_integration_steps or 1,
        adapt=adapt_step_size,
        accumulate=model.kernels,
    )
    if readout == "marginal":
        f_train, f_test, sigma, weight_mean, f_train_mean, f_test_mean, f_test_var = obs
    else:
        f_train, f_test, sigma, weight_mean = obs
        f_train_mean, f_test_mean = f_train, f_test
        f_test_var = jnp.zeros(f_test.shape[:3], f_test.dtype)
    kernel_sums: tuple = sums or ()
    kernels = tuple(total / num_samples for total, *_ in kernel_sums)
    rhat_f, ess_f = _split_rhat_ess(f_test_mean)
    rhat_s, ess_s = _split_rhat_ess(sigma)
    return Samples(
        f_train=f_train,
        f_test=f_test,
        f_train_mean=f_train_mean,
        f_test_mean=f_test_mean,
        f_test_var=f_test_var,
        sigma=sigma,
        weight_mean=weight_mean,
        kernels=kernels,
        log_density=logp,
        acceptance_rate=acc,
        step_size=eps,
        rhat_f_test=rhat_f,
        rhat_sigma=rhat_s,
        ess_f_test=ess_f,
        ess_sigma=ess_s,
        rhat_kernels=tuple(
            _split_rhat_from_sums(s1, q1, s2, q2, num_samples // 2)
            for _, s1, q1, s2, q2 in kernel_sums
        ),
        method=method,
        readout=readout,
        width=int(np.asarray(network.width)),
    )


# --------------------------------------------------------------------------------------------
# Estimators with error bars
# --------------------------------------------------------------------------------------------


class Estimate(NamedTuple):
    """A sampled estimate and its standard error over independent chains."""

    value: np.ndarray
    stderr: np.ndarray

    def z(self, theory: ArrayLike) -> np.ndarray:
        """(theory − value) / stderr: how many error bars a prediction is away."""
        return (np.asarray(theory) - self.value) / self.stderr


class Estimates(NamedTuple):
    """Posterior averages over sampled finite networks (SPEC §6), each an `Estimate`.

    Field names follow [`fls_jax.Prediction`][] (and `sigma` follows [`fls_jax.Solution`][]):

    - `mean`: the posterior mean predictor f̄(x*) (n*×m).
    - `variance`: the ensemble variance Var f(x*), averaged over outputs (n*).
    - `train_error`: mean over (n, m) of (f̄(X) − Y)², f̄ the posterior mean on train inputs.
    - `test_error`: mean over (n*, m) of (f̄(x*) − Y*)² (NaN without `Y_test`).
    - `test_error_draw`: E_θ of the mean squared test error of one draw (NaN without `Y_test`).
    - `sigma`: the posterior mean of Σ̂ = (1/C) Σ_c w_c w_cᵀ (S×S).
    - `sigma_top_eigenvalue`: the largest eigenvalue of that mean.
    - `weight_mean`: the posterior mean of μ̂ = (1/C) Σ_c w_c (S), one filter's posterior
      mean (`Samples.weight_mean`).
    - `teacher_overlap`: (v₁ · w*/‖w*‖)², v₁ the top eigenvector of that mean (NaN without a
      teacher); compare with [`fls_jax.sampling.teacher_overlap`][] of the theory's Σ.
    - `kernels`: for depth L > 1, the posterior means of the pre-kernels K̂^(2), …, K̂^(L) on
      the training inputs (n×n each), to compare with `Solution.kernels`; empty for one
      hidden layer.
    """

    mean: Estimate
    variance: Estimate
    train_error: Estimate
    test_error: Estimate
    test_error_draw: Estimate
    sigma: Estimate
    sigma_top_eigenvalue: Estimate
    teacher_overlap: Estimate
    weight_mean: Estimate
    kernels: tuple[Estimate, ...] = ()


def teacher_overlap(sigma: Float[ArrayLike, "S S"], teacher: Float[ArrayLike, " S"]) -> float:
    """(v₁ · w*/‖w*‖)², v₁ the top eigenvector of Σ: 1 when Σ's top direction is the teacher's.

    Apply it to the theory's `Solution.sigma` to compare with
    [`fls_jax.sampling.estimates`][]'s `teacher_overlap` (SPEC §4: alignment with a teacher).
    """
    sigma = np.asarray(sigma, dtype=float)
    t = np.asarray(teacher, dtype=float).ravel()
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1] or t.shape != (sigma.shape[0],):
        raise ValueError(f"need an S×S sigma and an S-vector teacher, got {sigma.shape}, {t.shape}")
    if not np.any(t):
        raise ValueError("teacher must be a non-zero vector")
    v = np.linalg.eigh(0.5 * (sigma + sigma.T))[1][:, -1]
    return float((v @ t) ** 2 / (t @ t))


def _jackknife(per_chain: list[np.ndarray], stat, bias_corrected: bool = False) -> Estimate:
    """Leave-one-chain-out jackknife of stat(chain-averaged inputs): for a statistic linear in
    the chain means this is exactly std over chain means / √K (chains are independent).

    With `bias_corrected` the value is the jackknife's K θ̂ − (K − 1) mean_k θ̂₍₋ₖ₎, which for
    a statistic quadratic in the chain means (a variance, a squared error) removes the
    plug-in's O(1/K) bias exactly: for (ā − y)² it subtracts stderr(ā)², for b̄ − ā² it adds
    it. (Over 1000 seeds of 8 chains on a linear FCN the variance's mean z-score against the
    exact posterior went from +0.35 to +0.21 with MALA's unmixed chains, from +0.10 to +0.07
    with HMC's: `benchmarks/sampler_mixing.py`.)"""
    K = per_chain[0].shape[0]
    full = [x.mean(0) for x in per_chain]
    value = np.asarray(stat(*full), dtype=float)
    loo = np.stack(
        [
            np.asarray(
                stat(*[(K * f - x[k]) / (K - 1) for f, x in zip(full, per_chain, strict=True)])
            )
            for k in range(K)
        ]
    )
    se = np.sqrt((K - 1) / K * np.sum((loo - loo.mean(0)) ** 2, axis=0))
    if bias_corrected:
        value = K * value - (K - 1) * loo.mean(0)
    return Estimate(value, se)


def estimates(
    samples: Samples,
    Y: Float[ArrayLike, "n m"] | Float[ArrayLike, " n"],
    Y_test: Float[ArrayLike, "n_test m"] | Float[ArrayLike, " n_test"] | None = None,
    teacher: Float[ArrayLike, " S"] | None = None,
) -> Estimates:
    """Posterior averages and their standard errors from sampled networks (SPEC §6).

    The averages are over the conditional moments `Samples.f_train_mean`, `f_test_mean` and
    `f_test_var` (the draws themselves with ``readout="joint"``). Each chain is reduced to its
    time averages; the standard error is the leave-one-chain-out
    jackknife over the independent chains, which for the averages themselves is the std over
    chain means / √(num_chains). Autocorrelation within a chain is thereby accounted for; a
    bias from chains that have not forgotten their start is not (check `Samples.max_rhat`).
    With few chains, an error over its standard error follows Student's t with
    num_chains − 1 degrees of freedom, not a normal: with 8 chains |z| > 3 happens 2 % of the
    time (0.3 % for a normal), so read z-scores against t, or run more chains.
    The errors of the mean predictor are corrected for the Monte-Carlo noise in f̄:
    E[(f̂ − y)²] = (f̄ − y)² + stderr(f̂)², so stderr(f̂)² is subtracted; the ensemble variance
    E[f²] − f̄² likewise adds it (the jackknife's bias correction, exact for both). The top
    eigenvalue and the teacher overlap are plug-in values (biased by O(1/num_chains)).

    Chains that have not mixed (`Samples.max_rhat` > 1.1) raise a `RuntimeWarning`: the
    averages' error bars still hold if the chains are independent, but those of the variance
    and the errors do not (each chain then holds a few effective draws, and the estimate and
    its error bar are correlated: with MALA on a linear FCN at R̂ ≈ 2.9, the variance's
    z-scores over 1000 seeds have std 1.31 ± 0.03 against t₇'s 1.18, and HMC's, at
    R̂ ≈ 1.02, 1.19; `benchmarks/sampler_mixing.py`). Use longer chains, `thin`,
    ``method="hmc"`` or ``readout="marginal"``.

    **Arguments:**

    - `samples`: from [`fls_jax.sampling.sample`][].
    - `Y`: the training targets used for sampling (n×m or n).
    - `Y_test`: optional test targets (n*×m or n*).
    - `teacher`: optional teacher filter w* (S), e.g. `fls_jax.datasets.Task.teacher`.

    **Returns:** an [`fls_jax.sampling.Estimates`][].
    """
    if not isinstance(samples, Samples):
        raise TypeError(f"estimates needs fls_jax.sampling.Samples, got {type(samples)}")
    f_tr, f_te = np.asarray(samples.f_train_mean), np.asarray(samples.f_test_mean)
    v_te = np.asarray(samples.f_test_var)
    sig = np.asarray(samples.sigma)
    _, _, n, m = f_tr.shape
    if samples.diverged.any():
        raise ValueError(
            f"chains {np.flatnonzero(samples.diverged).tolist()} diverged (non-finite values); "
            "lower the step size"
        )
    if samples.max_rhat > _RHAT_MIXED:
        warnings.warn(
            f"the chains have not mixed (max split R̂ {samples.max_rhat:.3g} > {_RHAT_MIXED}): "
            "the error bars of the variance and the errors are unreliable; run longer chains, "
            "thin them, or use method='hmc' or readout='marginal'",
            RuntimeWarning,
            stacklevel=2,
        )
    Y = np.asarray(Y, dtype=float)
    Y = Y[:, None] if Y.ndim == 1 else Y
    if Y.shape != (n, m):
        raise ValueError(f"Y must have shape {(n, m)} (as sampled), got {Y.shape}")
    if not np.all(np.isfinite(Y)):
        raise ValueError("Y contains NaN or inf")
    nt = f_te.shape[2]
    if Y_test is not None:
        Y_test = np.asarray(Y_test, dtype=float)
        Y_test = Y_test[:, None] if Y_test.ndim == 1 else Y_test
        if Y_test.shape != (nt, m):
            raise ValueError(f"Y_test must have shape {(nt, m)}, got {Y_test.shape}")
        if not np.all(np.isfinite(Y_test)):
            raise ValueError("Y_test contains NaN or inf")
    S = sig.shape[-1]
    if teacher is not None:
        teacher = np.asarray(teacher, dtype=float).ravel()
        if teacher.shape != (S,) or not np.any(teacher):
            raise ValueError(f"teacher must be a non-zero vector of length S = {S}")

    m1_tr, m1_te = f_tr.mean(1), f_te.mean(1)  # per-chain time averages
    m2_te = (f_te**2 + v_te[..., None]).mean(1)  # E[f²] = E[E[f | hidden]² + Var[f | hidden]]
    sig_c = sig.mean(1)
    mean = _jackknife([m1_te], lambda a: a)
    variance = _jackknife([m1_te, m2_te], lambda a, b: (b - a**2).mean(-1), bias_corrected=True)

    def mse(f_bar, y):  # (f̄ − y)², less f̄'s Monte-Carlo part stderr(f̄)²
        return _jackknife([f_bar], lambda a: np.mean((a - y) ** 2), bias_corrected=True)

    train_error = mse(m1_tr, Y)
    nan = Estimate(np.asarray(np.nan), np.asarray(np.nan))
    if Y_test is None or nt == 0:
        test_error = test_error_draw = nan
    else:
        test_error = mse(m1_te, Y_test)
        yt = Y_test
        test_error_draw = _jackknife([m1_te, m2_te], lambda a, b: np.mean(b - 2 * a * yt + yt**2))

    def top(s):
        return np.linalg.eigvalsh(0.5 * (s + s.T))[-1]

    sigma_est = _jackknife([sig_c], lambda a: a)
    top_eig = _jackknife([sig_c], top)
    if teacher is None:
        overlap = nan
    else:
        t = teacher
        overlap = _jackknife([sig_c], lambda s: teacher_overlap(s, t))
    return Estimates(
        mean=mean,
        variance=variance,
        train_error=train_error,
        test_error=test_error,
        test_error_draw=test_error_draw,
        sigma=sigma_est,
        sigma_top_eigenvalue=top_eig,
        teacher_overlap=overlap,
        weight_mean=_jackknife([np.asarray(samples.weight_mean).mean(1)], lambda a: a),
        kernels=tuple(_jackknife([np.asarray(k)], lambda a: a) for k in samples.kernels),
    )
