"""The model zoo: importing this package registers every family in timm's registry."""
from . import attention  # noqa: F401  (building blocks, no registered models)
from . import alexnet, googlenet, hvt, lenet, nin, resnet, squeezenet, vgg, vit  # noqa: F401
