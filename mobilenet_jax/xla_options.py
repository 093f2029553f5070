"""XLA compiler options for the jitted train and eval steps.

On CPU the steps compile with LLVM's floating-point reassociation,
contraction into fused multiply-adds and no-signed-zeros, and nothing else
of fast math: NaNs, infinities, division and math functions stay exact
(`xla_cpu_fast_math_honor_*`), so a diverging run still shows NaN losses.
Results move by rounding only (the order of additions in a fused loop).

Why: XLA:CPU's backward pass of the shifted depthwise convolution, fused
with the preceding ReLU6's mask, ran 5x slower with strict IEEE semantics
(46 ms against 8-9 at 32x56x56x144, float32): the same fusion without the
mask took 7 ms either way. The MobileNetV2 1.0 / 224 px / batch 32 train
step went from a median of 1368 ms to 1200 (10 interleaved steps each, one
process, 2026-12-03; README, "Speed"); the inference step did not change.

LLVM optimises the steps' kernels at -O1 (`xla_backend_optimization_level`,
default 2): the V2 and V3-Large train steps compiled about 1.2 s sooner
(V2: 11.6 -> 10.4 s, V3-Large: 13.8 -> 12.7 s, two compilations each in
fresh processes) and ran as fast (paired step-time ratios 1.005 and 1.016
for V2 and V3-Large training, 0.987 for V2 inference, 14-30 interleaved
steps; 2026-12-03): the dots run in YNNPACK, and the fused elementwise
kernels are bound by memory, not by LLVM's heavier passes.

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
