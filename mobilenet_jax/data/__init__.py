"""Input pipelines (tfds + tf.data) and the built-in offline `shapes` data."""

from mobilenet_jax.data.input_pipeline import DatasetInfo
from mobilenet_jax.data.input_pipeline import create_eval_iterator
from mobilenet_jax.data.input_pipeline import create_train_iterator
from mobilenet_jax.data.input_pipeline import get_dataset_info
