"""MobileNetV4-Hybrid-L on ImageNet: the authors' released recipe, TF Model
Garden's `imagenet_mobilenetv4_hybrid_large_tpu.yaml` (official/vision/
configs/experiments/image_classification; 83.7% top-1 at 500 epochs, 384
px): the Conv-M recipe (`imagenet_mobilenet_v4_conv_medium.py`) at global
batch 16384 with peak learning rate 0.01 (1560 warm-up steps at that batch,
20 epochs) and decoupled weight decay 0.2.

Left out (not implemented here): RandAugment (magnitude 15), mixup (0.8) /
CutMix (1.0) on 30% of the batches, stochastic depth (0.35), and the
cosine's floor (the yaml decays to 0.1% of the peak; here to 0).

Arguments: `:alpha=0.75,rho=1.0,t=0,epochs=500,batch_size=16384`.
"""

from mobilenet_jax import config_files
imagenet_mobilenet_v4_conv_medium = config_files.sibling(
    __file__, 'imagenet_mobilenet_v4_conv_medium')


def get_config(arg=None):
  return imagenet_mobilenet_v4_conv_medium.get_config(
      arg, size='hybrid_large', resolution=384, batch_size=16384,
      warmup_epochs=20.0, learning_rate=0.01, weight_decay=0.2)
