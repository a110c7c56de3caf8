"""The model zoo: importing this package registers every family in timm's registry."""
from . import attention  # noqa: F401  (building blocks, no registered models)
from . import alexnet, clip_classifier, densenet, fractalnet, googlenet, hvt, inception, lenet, nin, resnet, squeezenet, vgg, vit  # noqa: F401
from .catalogue import FAMILIES, family_of, small_image_models  # noqa: F401
