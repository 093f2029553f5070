"""Our model's weighted layers in call order: what the converters
(`convert` from Keras, `convert_timm` from timm) zip with the source
network's layers."""

import flax.linen as nn

from mobilenet_jax import pretrained


def _kind(module: nn.Module) -> str | None:
  """A weighted module's kind: 'batch_norm', 'dense', 'depthwise' or 'conv'
  (None for others; nn.Dense is no nn.Conv subclass)."""
  if isinstance(module, nn.BatchNorm):
    return 'batch_norm'
  if isinstance(module, nn.Dense):
    return 'dense'
  if isinstance(module, nn.Conv):
    return 'depthwise' if module.feature_group_count > 1 else 'conv'
  return None


def weighted_layers(model: nn.Module):
  """Our weighted modules in call order, [(path, kind)], and the variables'
  shapes (the `reference` op set's modules; kinds as `_kind`, and
  'layer_scale')."""
  calls = []

  def record(next_fun, args, kwargs, context):
    kind = _kind(context.module)
    if context.method_name == '__call__' and kind:
      calls.append((context.module.path, kind))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    abstract = pretrained.abstract_variables(model.clone(ops='reference'))
  # A layer scale (the V4 hybrids' blocks) is a parameter of the block
  # itself, applied last: it follows the block's last module.
  for block in abstract['params']:
    if 'layer_scale' in abstract['params'][block]:
      last = max(i for i, (path, _) in enumerate(calls) if path[0] == block)
      calls.insert(last + 1, ((block,), 'layer_scale'))
  return calls, abstract
