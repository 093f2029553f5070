"""Input pipeline (tfds + tf.data) and the built-in offline `shapes` dataset.

Importing this package registers the `shapes` tfds builder.
"""

from mobilenet_jax.data import shapes
from mobilenet_jax.data.pipeline import (DatasetInfo, create_eval_iterator,
                                         create_train_iterator,
                                         get_dataset_info, normalise)

__all__ = ['DatasetInfo', 'create_eval_iterator', 'create_train_iterator',
           'get_dataset_info', 'normalise', 'shapes']
