"""MobileNetV4-Conv-S on ImageNet: the authors' released recipe, TF Model
Garden's `imagenet_mobilenetv4_conv_small_tpu.yaml` (73.8% top-1 at about
9600 epochs, 224 px): the Conv-M recipe (`imagenet_mobilenet_v4_conv_medium.py`)
with AdamW beta_1 0.6, epsilon 1e-6, decoupled weight decay 0.01, peak
learning rate 0.002 at batch 4096, 9600 epochs (3,002,368 steps), dropout 0.3,
BatchNorm decay 0.95 and an EMA of decay 0.9999.

Left out (not implemented here): RandAugment (magnitude 9, probability 0.5),
the extra L2 loss of 1e-5 on top of AdamW's decay, BatchNorm epsilon 1e-6
(ours stays 1e-3) and the EMA's start at step 1560.

Arguments: `:alpha=0.75,rho=1.0,t=0,epochs=9600,batch_size=4096`.
"""

from mobilenet_jax import config_files
imagenet_mobilenet_v4_conv_medium = config_files.sibling(
    __file__, 'imagenet_mobilenet_v4_conv_medium')


def get_config(arg=None):
  config = imagenet_mobilenet_v4_conv_medium.get_config(
      arg, size='conv_small', resolution=224, epochs=9600.0, learning_rate=0.002,
      weight_decay=0.01, dropout_rate=0.3)
  config.model.bn_momentum = 0.95
  config.optim.adam_b1 = 0.6
  config.optim.adam_epsilon = 1e-6
  config.optim.ema_decay = 0.9999
  return config
