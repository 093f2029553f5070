"""MobileNetV1 on ImageNet: the same TPU RMSProp recipe as
`imagenet_mobilenet_v2.py` (TF Model Garden's `mobilenet_imagenet` reaches
72.3% top-1 for V1 1.0 at 500 epochs; the paper reports 70.6% with RMSProp,
little weight decay and less augmentation, section 4).

Arguments: `:alpha=0.5,rho=0.714,epochs=350` (the paper's table 6/7 grid).
"""

from mobilenet_jax import config_files
config_args = config_files.sibling(__file__, 'config_args')
imagenet_mobilenet_v2 = config_files.sibling(__file__, 'imagenet_mobilenet_v2')


def get_config(arg=None):
  args = config_args.parse_arg(arg, alpha=1.0, rho=1.0, epochs=350.0,
                               batch_size=4096)
  config = imagenet_mobilenet_v2.get_config(
      f'model=mobilenet_v1,alpha={args.alpha},rho={args.rho},'
      f'epochs={args.epochs},batch_size={args.batch_size}')
  # The paper: "very little or no weight decay on the depthwise filters".
  config.optim.decay_depthwise = False
  return config
