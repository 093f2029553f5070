"""MobileNetV4-Conv-L on ImageNet: the authors' released recipe, TF Model
Garden's `imagenet_mobilenetv4_conv_large_tpu.yaml` (82.9% top-1 at 500
epochs, 384 px): the Conv-M recipe (`imagenet_mobilenet_v4_conv_medium.py`)
at global batch 16384 with decoupled weight decay 0.2 (peak learning rate
0.004, 1560 warm-up steps, i.e. 20 epochs of 78 steps, at that batch).

Left out (not implemented here): RandAugment (magnitude 15), mixup (0.8) /
CutMix (1.0) on 20% of the batches, and stochastic depth (0.2).

Arguments: `:alpha=0.75,rho=1.0,t=0,epochs=500,batch_size=16384`.
"""

from mobilenet_jax import config_files
imagenet_mobilenet_v4_conv_medium = config_files.sibling(
    __file__, 'imagenet_mobilenet_v4_conv_medium')


def get_config(arg=None):
  return imagenet_mobilenet_v4_conv_medium.get_config(
      arg, size='conv_large', resolution=384, batch_size=16384,
      warmup_epochs=20.0, weight_decay=0.2)
