"""XLA compiler options for the jitted train and eval steps.

On CPU the steps compile with LLVM's floating-point reassociation,
contraction into fused multiply-adds and no-signed-zeros, and nothing else
of fast math: NaNs, infinities, division and math functions stay exact
(`xla_cpu_fast_math_honor_*`), so a diverging run still shows NaN losses.
Results move by rounding only (the order of additions in a fused loop).
Why: with strict IEEE semantics XLA:CPU ran the backward pass of the `cpu`
op set's shifted depthwise convolution, fused with the preceding ReLU6's
mask, several times slower.

LLVM optimises the steps' kernels at -O1 (`xla_backend_optimization_level`,
default 2): the steps compile sooner and run as fast, since the dots run in
a library and the fused elementwise kernels are bound by memory.
docs/performance.md has the measurements.

Other backends get no options: these are XLA:CPU's.
"""

import jax

CPU_FAST_MATH = {
    'xla_cpu_enable_fast_math': True,
    'xla_cpu_fast_math_honor_nans': True,
    'xla_cpu_fast_math_honor_infs': True,
    'xla_cpu_fast_math_honor_division': True,
    'xla_cpu_fast_math_honor_functions': True,
}
CPU_OPTIONS = {**CPU_FAST_MATH, 'xla_backend_optimization_level': 1}


def step_compiler_options(backend: str | None = None) -> dict:
  """`compiler_options` for `jax.jit` of a step on `backend` (default: JAX's
  default backend)."""
  if (backend or jax.default_backend()) == 'cpu':
    return dict(CPU_OPTIONS)
  return {}
