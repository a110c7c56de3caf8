"""The families of the lecture, in its order: paper, year, model names.

Published results (the ILSVRC entries' top-5 errors among them) live in `models/references.yaml`, each
with its source and budget. Parameter counts and MACs are computed by the pipeline, not stored.
"""
from dataclasses import dataclass

from timm.models import is_model, model_entrypoint


@dataclass(frozen=True)
class Family:
    name: str
    paper: str
    year: int
    imagenet_models: tuple
    small_models: tuple


FAMILIES = (
    Family('LeNet', 'Gradient-based learning applied to document recognition', 1998, (), ('lenet5',)),
    Family('AlexNet', 'ImageNet Classification with Deep Convolutional Neural Networks', 2012,
           ('alexnet2012',), ('alexnet2012_cifar',)),
    Family('ZFNet', 'Visualizing and Understanding Convolutional Networks', 2013, ('zfnet',), ('zfnet_cifar',)),
    Family('VGG', 'Very Deep Convolutional Networks for Large-Scale Image Recognition', 2014,
           ('vgg11', 'vgg11_bn', 'vgg13', 'vgg13_bn', 'vgg16', 'vgg16_bn', 'vgg19', 'vgg19_bn'),
           tuple(f'vgg{d}{bn}_cifar' for d in (11, 13, 16, 19) for bn in ('', '_bn'))),
    Family('Network in Network', 'Network In Network', 2014, ('nin',), ('nin_cifar',)),
    Family('GoogLeNet', 'Going Deeper with Convolutions', 2014, ('googlenet_v1',), ('googlenet_v1_cifar',)),
    Family('Inception-v4', 'Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning',
           2016, ('inception_v4', 'inception_resnet_v2'), ('inception_v4_cifar', 'inception_resnet_v2_cifar')),
    Family('ResNet', 'Deep Residual Learning for Image Recognition', 2015,
           ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152'),
           ('resnet20', 'resnet32', 'resnet44', 'resnet56', 'resnet110',
            'plain20', 'plain32', 'plain44', 'plain56', 'plain110')),
    Family('Pre-activation ResNet', 'Identity Mappings in Deep Residual Networks', 2016,
           ('resnetv2_50', 'resnetv2_101'), ('preact_resnet110', 'preact_resnet164')),
    Family('Wide ResNet', 'Wide Residual Networks', 2016, ('wide_resnet50_2', 'wide_resnet101_2'),
           ('wrn28_10', 'wrn40_4')),
    Family('ResNeXt', 'Aggregated Residual Transformations for Deep Neural Networks', 2017,
           ('resnext50_32x4d', 'resnext101_32x8d'), ('resnext29_8x64d',)),
    Family('Stochastic Depth', 'Deep Networks with Stochastic Depth', 2016, ('resnet152_sd',), ('resnet110_sd',)),
    Family('SENet', 'Squeeze-and-Excitation Networks', 2018,
           ('seresnet50', 'seresnext50_32x4d', 'senet154'), ('se_resnet20', 'se_resnet110')),
    Family('FractalNet', 'FractalNet: Ultra-Deep Neural Networks without Residuals', 2017,
           ('fractalnet34',), ('fractalnet20_cifar', 'fractalnet40_cifar')),
    Family('DenseNet', 'Densely Connected Convolutional Networks', 2017,
           ('densenet121', 'densenet169', 'densenet201'),
           ('densenet_bc_100_12', 'densenet_bc_250_24', 'densenet_bc_190_40')),
    Family('SqueezeNet', 'SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size',
           2016, ('squeezenet1_0', 'squeezenet1_1'), ('squeezenet1_0_cifar', 'squeezenet1_1_cifar')),
    Family('ViT', 'An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale', 2021,
           ('vit_tiny_patch16_224', 'vit_small_patch16_224', 'vit_base_patch16_224', 'vit_large_patch16_224',
            'vit_huge_patch14_224'), ('vit_tiny_patch4_32', 'vit_small_patch4_32', 'vit_base_patch4_32')),
    Family('HVT', 'Scalable Vision Transformers with Hierarchical Pooling', 2021,
           ('hvt_tiny_1_patch16_224', 'hvt_small_1_patch16_224', 'hvt_small_4_patch16_224'),
           ('hvt_tiny_patch4_32', 'hvt_small_patch4_32')),
)

_BY_MODEL = {m: f.name for f in FAMILIES for m in f.imagenet_models + f.small_models}

# timm names outside the catalogue, by prefix (first match wins: specific before general)
_PREFIXES = (
    ('inception_resnet', 'Inception-v4'), ('inception_v4', 'Inception-v4'), ('vit_', 'ViT'),
    ('wide_resnet', 'Wide ResNet'), ('resnetv2', 'Pre-activation ResNet'), ('resnext', 'ResNeXt'),
    ('seresne', 'SENet'), ('senet', 'SENet'), ('legacy_se', 'SENet'), ('resnet', 'ResNet'),
    ('vgg', 'VGG'), ('densenet', 'DenseNet'), ('clip_', 'CLIP'),
)


def family_of(model_name):
    """Family of a registered model name; for other timm models, the timm module that defines it."""
    name = model_name.split('.')[0]  # drop a pretrained tag such as '.augreg_in21k'
    if name in _BY_MODEL:
        return _BY_MODEL[name]
    for prefix, family in _PREFIXES:
        if name.startswith(prefix):
            return family
    return model_entrypoint(name).__module__.rsplit('.', 1)[-1] if is_model(name) else 'other'


def small_image_models():
    """Every 28-32 px variant registered by this zoo."""
    return [m for f in FAMILIES for m in f.small_models]
