"""MobileNetV3-Small on ImageNet: the V3-Large recipe
(`imagenet_mobilenet_v3_large.py`); the paper reports 67.4% top-1.

Arguments: `:alpha=0.75,rho=1.0,epochs=350,minimal=false`.
"""

from mobilenet_jax import config_files
imagenet_mobilenet_v3_large = config_files.sibling(
    __file__, 'imagenet_mobilenet_v3_large')


def get_config(arg=None):
  return imagenet_mobilenet_v3_large.get_config(arg, family='small')
