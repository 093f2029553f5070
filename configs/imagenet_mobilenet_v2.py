"""MobileNetV2 on ImageNet (imagenet2012 from tfds; TFDS_DATA_DIR or
data.data_dir pointing at a prepared copy, e.g. gs://BUCKET/tensorflow_datasets).

Recipe: the TPU recipe of the authors' group for MobileNetV2/V3 and MnasNet
(tensorflow/tpu models/official/mnasnet, used by TF Model Garden's
`mobilenet_imagenet` configs, which reach 72.7% top-1 for V2 1.0 at 500
epochs): RMSProp TF-style (decay 0.9, momentum 0.9, epsilon 0.001), peak
learning rate 0.016 per 256 images (0.256 at batch 4096), 5 warm-up epochs,
exponential decay 0.97 every 2.4 epochs, weight decay (L2) 1e-5, label
smoothing 0.1, EMA 0.9999, dropout 0.2, global batch 4096.
Paper (V2 section 6.1): RMSProp decay/momentum 0.9, lr 0.045 decaying 0.98
per epoch, weight decay 4e-5, batch 96 on 16 GPUs: 72.0% top-1.

The learning rate and the warm-up are given per batch of 256 and in epochs,
so `--config.batch_size=1024` trains at 0.064 with 5 epochs of warm-up
(the run resolves them, `optim.resolve_schedule`).

The recipe is hardware-neutral: float32 and `model.ops = 'auto'` from
`default.py`; `tpu.py` adds what a TPU decides (bfloat16).

Arguments: `:alpha=0.75,rho=0.857,t=4,epochs=350`.
"""

from mobilenet_jax import config_files
config_args = config_files.sibling(__file__, 'config_args')
default = config_files.sibling(__file__, 'default')


def get_config(arg=None):
  args = config_args.parse_arg(arg, model='mobilenet_v2', alpha=1.0, rho=1.0,
                               t=0.0, epochs=350.0, batch_size=4096)
  config = default.get_config()
  config.model.name = args.model
  config.model.alpha = args.alpha
  if args.t > 0:
    config.model.expansion = args.t
  config.model.dropout_rate = 0.2
  config.model.bn_momentum = 0.99

  config.data.dataset = 'imagenet2012'
  config.data.rho = args.rho
  config.data.base_resolution = 224
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.crop_area_range = (0.08, 1.0)  # the Inception crop
  config.data.eval_crop_fraction = 0.875  # 224 of 256

  config.batch_size = args.batch_size
  config.optim.name = 'rmsprop_tf'
  config.optim.learning_rate = 0.016
  config.optim.base_batch_size = 256
  config.optim.rmsprop_decay = 0.9
  config.optim.momentum = 0.9
  config.optim.rmsprop_epsilon = 0.001
  config.optim.schedule = 'exponential'
  config.optim.decay_rate = 0.97
  config.optim.decay_epochs = 2.4
  config.optim.warmup_steps = None
  config.optim.warmup_epochs = 5.0
  config.optim.weight_decay = 1e-5
  config.optim.label_smoothing = 0.1
  config.optim.ema_decay = 0.9999

  config.num_train_steps = 0
  config.num_epochs = args.epochs
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 5
  return config
