"""MobileNetV4-Conv-M on ImageNet: the authors' released recipe, TF Model
Garden's `imagenet_mobilenetv4_conv_medium_tpu.yaml` (official/vision/configs/
experiments/image_classification; 79.9% top-1 at 500 epochs, 256 px): AdamW
(decoupled weight decay 0.1 on every kernel, depthwise included, none on
BatchNorm), peak learning rate 0.004 at batch 4096 (scaled linearly with the
batch), 1560 linear warm-up steps at batch 4096 (5 epochs of 312 steps),
cosine decay to 0, 500 epochs, label smoothing 0.1, dropout 0.2, BatchNorm
decay 0.997, no EMA.

Left out (not implemented here): RandAugment (magnitude 15, probability 0.7)
and stochastic depth (0.075).

The learning rate is given at the source's batch and the warm-up in epochs,
so an override of the batch size scales both (`optim.resolve_schedule`).

Arguments: `:alpha=0.75,rho=1.0,t=0,epochs=500,batch_size=4096`.
"""

from mobilenet_jax import config_files
config_args = config_files.sibling(__file__, 'config_args')
imagenet_mobilenet_v2 = config_files.sibling(__file__, 'imagenet_mobilenet_v2')


def get_config(arg=None, size='conv_medium', resolution=256, epochs=500.0,
               batch_size=4096, learning_rate=0.004, warmup_epochs=5.0,
               weight_decay=0.1, dropout_rate=0.2):
  """The Conv-M recipe for `mobilenet_v4_{size}`;
  `imagenet_mobilenet_v4_{conv_small,conv_large,hybrid_medium,hybrid_large}
  .py` call it with their own defaults (`learning_rate` at `batch_size`)."""
  args = config_args.parse_arg(arg, alpha=1.0, rho=1.0, t=0.0, epochs=epochs,
                               batch_size=batch_size)
  config = imagenet_mobilenet_v2.get_config(
      f'model=mobilenet_v4_{size},alpha={args.alpha},rho={args.rho},'
      f't={args.t},epochs={args.epochs},batch_size={args.batch_size}')
  config.data.base_resolution = resolution
  config.model.dropout_rate = dropout_rate
  config.model.bn_momentum = 0.997

  config.optim.name = 'adamw'
  config.optim.learning_rate = learning_rate
  config.optim.base_batch_size = batch_size
  config.optim.schedule = 'cosine'
  config.optim.warmup_epochs = warmup_epochs
  config.optim.weight_decay = weight_decay
  config.optim.decay_depthwise = True
  config.optim.adam_epsilon = 1e-7  # TF's AdamWeightDecay default
  config.optim.label_smoothing = 0.1
  config.optim.ema_decay = 0.0
  return config
