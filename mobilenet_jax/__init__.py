"""MobileNet V1, V2 and V3 in JAX/Flax: models, cost accounting, training."""
