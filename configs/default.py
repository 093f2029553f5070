"""The default run: offline, small and CPU-friendly.

A MobileNetV1 (alpha 0.5) trained on the built-in procedurally generated
`shapes` dataset at 64 px (`make run`): minutes on a 2-core CPU, 95-98% test
top-1 (docs/performance.md records the measured runs). Every other config
starts from this one and overrides what differs.

Why this recipe: on `shapes` every model (a plain 5-layer CNN included) sits
at chance for the first 100-200 steps before it finds the shapes, so a short
run has no room for a slow start. AdamW at 5e-3 gets through that plateau
fastest (SGD 0.1 and AdamW 2e-3 reached 40-75% in the same time); 1000 steps
leave a margin over 90% (800 gave 93.5-94.3%). Crops that keep at least 85%
of the image never cut the shape away, and the shape fills up to 80% of the
image, so evaluation takes the whole image (no central crop). Dropout and
weight decay only slowed a run this short.

This file lists every config field with its default and imports only
ml_collections, so that loading any config is fast and needs no jax,
TensorFlow or optax.
"""

import ml_collections
from ml_collections import config_dict


def get_config():
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.name = 'mobilenet_v1'  # a models.REGISTRY name
  config.model.alpha = 0.5  # width multiplier
  config.model.expansion = config_dict.placeholder(float)  # None: paper's t
  config.model.dropout_rate = 0.0  # before the classifier
  config.model.dtype = 'float32'  # compute dtype; parameters stay float32
  # Short runs need a short BatchNorm memory; the references use 0.99-0.999.
  config.model.bn_momentum = 0.9
  config.model.bn_epsilon = 1e-3  # TF's; timm's (PyTorch) weights use 1e-5
  # Which op set computes the network: 'reference' (plain Flax: nn.Conv with
  # feature_group_count depthwise, nn.BatchNorm; what TPU, GPU and export
  # run), 'cpu' (XLA:CPU kernels, tested equal to reference), 'auto' (cpu on
  # the CPU backend, reference elsewhere).
  config.model.ops = 'auto'
  # Under bfloat16/float16: kernel and bias gradients in float32 (a custom
  # transpose, layers.float32_weight_grad); false: plain Flax layers.
  config.model.float32_weight_grads = True
  # Convolution padding: 'same' (TensorFlow's, the extra pixel after on
  # stride 2) or 'symmetric' (PyTorch's k // 2 on both sides: timm weights).
  config.model.padding = 'same'

  # The input pipeline (mobilenet_jax/data/pipeline.py documents each field).
  config.data = ml_collections.ConfigDict()
  # A tfds name ('shapes', 'shapes/tiny', 'cifar10', 'imagenet2012', ...) or
  # 'folder:/path/to/dir' (<split>/<class>/<image file>).
  config.data.dataset = 'shapes'
  config.data.data_dir = config_dict.placeholder(str)  # None: tfds' default
  config.data.train_split = 'train'  # tfds split string, slicing allowed
  config.data.eval_split = 'test'  # tfds split string, slicing allowed
  config.data.image_key = 'image'  # the image feature's name
  config.data.label_key = 'label'  # the ClassLabel feature's name
  config.data.rho = 1.0  # resolution multiplier of base_resolution
  config.data.base_resolution = 64  # input side at rho = 1
  config.data.shuffle_buffer = 16_384  # examples in the training shuffle
  # Keep the training slice in memory; None: when it fits (pipeline.py).
  config.data.cache = config_dict.placeholder(bool)
  # Train crop area / image area, (min, max); 0.85 keeps the shapes whole.
  config.data.crop_area_range = (0.85, 1.0)
  config.data.crop_aspect_ratio_range = (3 / 4, 4 / 3)  # crop width / height
  config.data.eval_crop_fraction = 1.0  # central crop side / shorter side
  # Random horizontal flips in training; off where mirroring changes the
  # class (digits, text).
  config.data.random_flip = True
  # Antialiased resizing: 60-90% more host CPU per JPEG; the
  # authors' pipelines resize without it.
  config.data.antialias = False
  config.data.mean = (0.485, 0.456, 0.406)  # RGB mean in [0, 1] (ImageNet's)
  config.data.std = (0.229, 0.224, 0.225)  # RGB std in [0, 1] (ImageNet's)

  # The optimizer (mobilenet_jax/optim.py documents each field).
  config.optim = ml_collections.ConfigDict()
  config.optim.name = 'adamw'  # 'sgd' | 'rmsprop_tf' | 'adamw'
  config.optim.learning_rate = 5e-3  # peak, at base_batch_size if set
  # None: learning_rate is the global batch's; else the run uses
  # learning_rate * batch_size / base_batch_size.
  config.optim.base_batch_size = config_dict.placeholder(int)
  config.optim.schedule = 'cosine'  # 'cosine' | 'exponential' | 'constant'
  # Linear warm-up from 0, in steps or in epochs: set exactly one.
  config.optim.warmup_steps = config_dict.FieldReference(50, field_type=int)
  config.optim.warmup_epochs = config_dict.placeholder(float)
  config.optim.weight_decay = 0.0  # sgd/rmsprop_tf: L2; adamw: decoupled
  config.optim.decay_depthwise = False  # also decay depthwise kernels
  config.optim.label_smoothing = 0.0  # in [0, 1)
  config.optim.ema_decay = 0.0  # EMA of the variables; 0 disables
  config.optim.momentum = 0.9  # sgd / rmsprop_tf momentum; 0 disables
  config.optim.nesterov = True  # sgd only
  config.optim.decay_rate = 0.97  # exponential: factor every decay_epochs
  config.optim.decay_epochs = 2.4  # exponential: staircase period
  config.optim.rmsprop_decay = 0.9  # rmsprop_tf: squared-gradient decay
  config.optim.rmsprop_epsilon = 0.002  # rmsprop_tf: inside the square root
  config.optim.adam_b1 = 0.9  # adamw first-moment decay
  config.optim.adam_b2 = 0.999  # adamw second-moment decay
  config.optim.adam_epsilon = 1e-8  # adamw epsilon
  config.optim.grad_clip_norm = 0.0  # global-norm gradient clip; 0 disables

  config.batch_size = 64
  config.eval_batch_size = 0  # 0: same as batch_size
  config.num_train_steps = 1000
  config.num_epochs = 0.0  # used when num_train_steps is 0
  config.log_every_steps = 50
  config.eval_every_steps = 0  # 0: only the final evaluation
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 3
  config.seed = 0
  config.init_from = ''  # a converted Keras model or a training workdir
  # init_from's classifier is kept only when the class counts agree and it
  # was trained on the same dataset (converted Keras models: imagenet2012);
  # true keeps it whenever the shapes agree (the same labels under another
  # dataset name).
  config.init_head = False
  config.freeze_backbone = False
  return config
