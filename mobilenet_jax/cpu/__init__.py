"""The `cpu` op set: the reference layers computed with XLA:CPU kernels
(`layers`), and the kernels themselves (`depthwise`, `dots`, `batch_norm`)."""
