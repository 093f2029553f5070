"""MobileNetV3-Large on ImageNet: the recipe of the V3 paper (section 6.1:
RMSProp with momentum 0.9, batch 4096, dropout 0.2, weight decay 1e-5, EMA
0.9998; 75.2% top-1) in the TPU form of `imagenet_mobilenet_v2.py`
(warm-up, exponential decay 0.97 every 2.4 epochs; timm's 600-epoch variant
reaches 75.8%).

Arguments: `:alpha=0.75,rho=1.0,epochs=350,minimal=false`.
"""

from mobilenet_jax import config_files
config_args = config_files.sibling(__file__, 'config_args')
imagenet_mobilenet_v2 = config_files.sibling(__file__, 'imagenet_mobilenet_v2')


def get_config(arg=None, family='large'):
  args = config_args.parse_arg(arg, alpha=1.0, rho=1.0, t=0.0, epochs=350.0,
                               batch_size=4096, minimal=False)
  name = f'mobilenet_v3_{family}' + ('_minimal' if args.minimal else '')
  config = imagenet_mobilenet_v2.get_config(
      f'model={name},alpha={args.alpha},rho={args.rho},t={args.t},'
      f'epochs={args.epochs},batch_size={args.batch_size}')
  config.optim.ema_decay = 0.9998
  return config
