"""Process-wide XLA settings, applied when fls_jax is imported (before the first computation).

XLA:CPU's concurrency-optimised scheduler was seen to hang idle on the vmapped solve (jax
0.10.2, PatchCNN S = 16, P = 8); disabling it cured one reproduction, not all (see README).
XLA reads XLA_FLAGS when its backend starts, so this only takes effect if fls_jax is imported
before JAX has run anything. A user's own setting of the flag wins.
"""

import os


_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=false".strip()
