"""Exported models (.tflite, see `mobilenet_jax.export`) on the LiteRT
interpreter: load, run one image, count ops, evaluate on a split.

An export is PATH.tflite plus PATH.json (`metadata_path`), whose fields
`evaluate` reads: the source workdir, step and quantization, the resolution
and the normalisation. The model takes one normalised float image
`(pixel / 255 - mean) / std` (`data.normalise`, as the training steps),
[1, R, R, 3], and returns [1, classes] logits;
a full-integer int8 export takes and returns int8, quantized with the scale
and zero point of its input and output tensors (`predict` does both).

The interpreter's default op resolver delegates to XNNPACK on CPU.
"""

import collections
import json
import os

from ai_edge_litert import interpreter as interpreter_lib
import ml_collections
import numpy as np
from etils import epath

from mobilenet_jax import checkpoint
from mobilenet_jax import config_check
from mobilenet_jax import data


def metadata_path(tflite_path: str) -> str:
  """PATH.tflite -> PATH.json: the export's metadata beside it."""
  return os.path.splitext(tflite_path)[0] + '.json'


def load(tflite_path: str | None = None, *, content: bytes | None = None,
         threads: int = 1) -> interpreter_lib.Interpreter:
  """An interpreter over a .tflite file (or its bytes), tensors allocated."""
  interpreter = interpreter_lib.Interpreter(
      model_path=tflite_path, model_content=content, num_threads=threads)
  interpreter.allocate_tensors()
  return interpreter


def op_counts(tflite_path: str | None = None, *,
              content: bytes | None = None) -> dict[str, int]:
  """{op name: count} of a .tflite file's (or bytes') operators, most
  frequent first: the model's own, read without a delegate (XNNPACK would
  show as one DELEGATE op in their place)."""
  interpreter = interpreter_lib.Interpreter(
      model_path=tflite_path, model_content=content,
      experimental_op_resolver_type=(
          interpreter_lib.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
  counts = collections.Counter(
      op['op_name'] for op in interpreter._get_ops_details())  # pylint: disable=protected-access
  return dict(counts.most_common())


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
  scale, zero_point = detail['quantization']
  if detail['dtype'] == np.float32:
    return x.astype(np.float32)
  info = np.iinfo(detail['dtype'])
  return np.clip(np.round(x / scale + zero_point), info.min,
                 info.max).astype(detail['dtype'])


def _dequantize(x: np.ndarray, detail: dict) -> np.ndarray:
  scale, zero_point = detail['quantization']
  if detail['dtype'] == np.float32:
    return x
  return (x.astype(np.float32) - zero_point) * scale


def predict(interpreter: interpreter_lib.Interpreter,
            image: np.ndarray) -> np.ndarray:
  """Float32 logits [classes] of one normalised float image [R, R, 3]."""
  (input_detail,) = interpreter.get_input_details()
  (output_detail,) = interpreter.get_output_details()
  interpreter.set_tensor(input_detail['index'],
                         _quantize(image[None], input_detail))
  interpreter.invoke()
  return _dequantize(interpreter.get_tensor(output_detail['index']),
                     output_detail)[0]


def result_path(workdir: str, step: int, quantization: str,
                variant: str = '') -> epath.Path:
  """WORKDIR/eval/step_<N>.tflite_<quantization>.json, beside the JAX
  evaluation WORKDIR/eval/step_<N>.json of the same checkpoint; with a
  `variant` (another dataset or split: `checkpoint.result_variant`),
  step_<N>.<variant>.tflite_<quantization>.json."""
  name = '.'.join([f'step_{step}', *([variant] if variant else []),
                   f'tflite_{quantization}.json'])
  return checkpoint.eval_result_path(workdir, step).parent / name


def dataset_config(dataset: str, mean, std, data_dir: str | None,
                   base: ml_collections.ConfigDict
                   ) -> ml_collections.ConfigDict:
  """`base` (a run's `config.data`, or a config file's for a converted
  model) on
  `dataset` (a tfds name or folder:DIR, from `data_dir`) normalised with
  `mean` and `std`: the data of an export whose source has none of its own
  (a converted model) or another dataset than its run's."""
  config = ml_collections.ConfigDict(base.to_dict())
  config.dataset = dataset
  if data_dir is not None:
    config.data_dir = data_dir
  config.mean, config.std = tuple(mean), tuple(std)
  return config


def converted_result_path(tflite_path: str, dataset: str,
                          split: str) -> epath.Path:
  """PATH.eval.<dataset>.<split>.json beside PATH.tflite: where the
  evaluation of an export of a converted model (no workdir) goes."""
  return epath.Path(os.path.splitext(tflite_path)[0] + '.eval.' +
                    checkpoint.file_part(dataset) + '.' +
                    checkpoint.file_part(split) + '.json')


def evaluate(tflite_path: str, dataset: str | None = None,
             split: str | None = None, data_dir: str | None = None,
             converted_config: ml_collections.ConfigDict | None = None
             ) -> dict:
  """Top-1 and top-5 of an export on its run's eval split (or `dataset` /
  `split`) through the run's eval preprocessing at the export's resolution.

  Writes and returns {"top1", "top5", "num_examples", "step", "tflite",
  "quantization", "resolution", "ema", "checkpoint"} at `result_path`.
  An export of a converted model has no run and no data: it needs `dataset`
  and `converted_config` (a training config, e.g. configs/default.py's:
  its preprocessing, splits and batch size, with the export's
  normalisation; `data_dir` for tfds) and its result, with "dataset" and
  "split" added, goes to `converted_result_path`.
  """
  meta_file = epath.Path(metadata_path(tflite_path))
  if not meta_file.exists():
    raise config_check.ConfigError(
        f'tflite: {tflite_path!r} has no {meta_file.name} '
        'beside it (write exports with mobilenet_jax.export)')
  meta = json.loads(meta_file.read_text())
  converted = meta['step'] is None
  if converted:
    if not dataset:
      raise config_check.ConfigError(
          f'dataset: {tflite_path!r} was exported from a '
          'converted model, which has no data of its own; name '
          'a dataset to evaluate on (e.g. shapes)')
    if converted_config is None:
      raise ValueError('converted_config: an export of a converted model is '
                       'evaluated with a training config\'s data settings')
    config = converted_config
    data_config = dataset_config(dataset, meta['mean'], meta['std'],
                                 data_dir, config.data)
  else:
    config = checkpoint.load_config(meta['source'])
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    if dataset:
      data_config.dataset = dataset
    if data_dir is not None:
      data_config.data_dir = data_dir
  # 0: the training batch size (configs/default.py).
  eval_batch_size = config.eval_batch_size or config.batch_size
  if split:
    data_config.eval_split = split
  interpreter = load(tflite_path)
  top1 = top5 = count = 0
  for batch in data.create_eval_iterator(
      data_config, global_batch_size=eval_batch_size,
      resolution=meta['resolution']):
    images = data.normalise(batch['image'], meta['mean'], meta['std'])
    for image, label, mask in zip(images, batch['label'], batch['mask']):
      if not mask:
        continue
      ranked = np.argsort(-predict(interpreter, image))
      top1 += int(ranked[0] == label)
      top5 += int(label in ranked[:5])
      count += 1
  result = {'step': meta['step'], 'top1': top1 / count, 'top5': top5 / count,
            'num_examples': count, 'tflite': os.fspath(tflite_path),
            'quantization': meta['quantization'],
            'resolution': meta['resolution'], 'ema': meta['ema'],
            'checkpoint': meta['checkpoint']}
  if converted:
    result.update(dataset=data_config.dataset, split=data_config.eval_split)
    path = converted_result_path(tflite_path, data_config.dataset,
                                 data_config.eval_split)
  else:
    path = result_path(meta['source'], meta['step'], meta['quantization'],
                       checkpoint.result_variant(config, meta['ema'],
                                                 dataset, split))
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2) + '\n')
  return result
