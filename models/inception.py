"""Inception-v4 and Inception-ResNet-v2 for 28-32 px images (Szegedy et al., 2016): timm's networks
behind a stride-1 stem.

The papers' stems shrink a 299 px image 8x (to 35x35) with stride-2 convolutions and poolings before the
first Inception module; on a 28 px image that leaves 3x3, and the two reduction modules nothing. As the
CIFAR versions of these networks do, the small variants keep every layer of the stem but at stride 1
(padding the convolutions that were strided), so the Inception-A / Inception-ResNet-A modules see a
24-26 px grid that the reduction modules bring to 5x5. All Inception modules are timm's, unchanged; the
ImageNet-scale networks are timm's `inception_v4` and `inception_resnet_v2`.
"""
from functools import partial

import torch
from timm.layers import ConvNormAct
from timm.models import generate_default_cfgs, register_model
from timm.models.inception_resnet_v2 import InceptionResnetV2
from timm.models.inception_v4 import InceptionV4, Mixed4a
from torch import nn

from ._common import create, small_cfg

# timm's Inception convolution: conv without bias, batch norm (eps 1e-3), ReLU; unpadded unless told.
conv_block = partial(ConvNormAct, padding=0, norm_layer='batchnorm2d', act_layer='relu',
                     norm_kwargs=dict(eps=1e-3), act_kwargs=dict(inplace=True))


class Concat(nn.Module):
    """Branches side by side, their outputs concatenated along channels (the stem's mixed layers)."""

    def __init__(self, *branches):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], 1)


def _inception_v4_stem(in_chans):
    """Inception-v4's stem (Fig. 3 of the paper) at stride 1: 3x3 convs 32-32-64, [max pool | 3x3 conv 96],
    timm's Mixed4a (two branches ending in unpadded 3x3 convs: the grid loses 2 px), [3x3 conv 192 | max pool]:
    384 channels, as many modules as timm's stem so the feature taps keep their indices."""
    pool = partial(nn.MaxPool2d, 3, stride=1, padding=1)
    return [conv_block(in_chans, 32, 3, padding=1), conv_block(32, 32, 3, padding=1), conv_block(32, 64, 3, padding=1),
            Concat(pool(), conv_block(64, 96, 3, padding=1)), Mixed4a(conv_block),
            Concat(conv_block(192, 192, 3, padding=1), pool())]


def _small_strides(model):
    """The feature taps' reductions once the stem's 8x is gone."""
    for info in model.feature_info:
        info['reduction'] = max(1, info['reduction'] // 8)
    return model


default_cfgs = generate_default_cfgs({
    'inception_v4_cifar': small_cfg(first_conv='features.0.conv', classifier='last_linear'),
    'inception_resnet_v2_cifar': small_cfg(first_conv='conv2d_1a.conv', classifier='classif'),
})


@register_model
def inception_v4_cifar(pretrained=False, **kwargs):
    """Inception-v4 for 28-32 px: 4 Inception-A, 7 Inception-B, 3 Inception-C modules on 26/12/5 px grids."""
    model = create(InceptionV4, 'inception_v4_cifar', pretrained, feature_cfg=dict(flatten_sequential=True),
                   **kwargs)
    model.features = nn.Sequential(*_inception_v4_stem(model.in_chans), *model.features[6:])
    return _small_strides(model)


@register_model
def inception_resnet_v2_cifar(pretrained=False, **kwargs):
    """Inception-ResNet-v2 for 28-32 px: the stem's first conv at stride 1, its two max poolings removed;
    10 / 20 / 10 residual Inception modules on 24/11/5 px grids."""
    model = create(InceptionResnetV2, 'inception_resnet_v2_cifar', pretrained, **kwargs)
    model.conv2d_1a = conv_block(model.in_chans, 32, 3, padding=1)
    model.maxpool_3a = nn.Identity()
    model.maxpool_5a = nn.Identity()
    return _small_strides(model)
