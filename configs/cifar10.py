"""CIFAR-10 from tfds (downloaded once into data.data_dir by tfds), 32 px
upsampled to 64 px. The MobileNetV2 recipe at small scale: SGD + nesterov,
cosine schedule, label smoothing 0.1.

  python -m mobilenet_jax.main --config=configs/cifar10.py --workdir=runs/c10
"""

from mobilenet_jax import config_files
default = config_files.sibling(__file__, 'default')


def get_config():
  config = default.get_config()
  config.model.name = 'mobilenet_v2'
  config.model.alpha = 1.0
  config.model.dropout_rate = 0.2
  config.model.bn_momentum = 0.99
  config.data.dataset = 'cifar10'
  config.data.base_resolution = 64
  config.data.eval_split = 'test'
  config.data.crop_area_range = (0.5, 1.0)
  config.data.eval_crop_fraction = 1.0  # the whole 32 px image
  config.optim.name = 'sgd'
  config.optim.learning_rate = 0.2
  config.optim.warmup_steps = 500
  config.optim.weight_decay = 5e-5
  config.optim.label_smoothing = 0.1
  config.optim.ema_decay = 0.999
  config.batch_size = 256
  config.num_train_steps = 0
  config.num_epochs = 100.0
  config.log_every_steps = 100
  config.eval_every_steps = 2000
  config.checkpoint_every_steps = 1000
  return config
