"""VGG (Simonyan & Zisserman, 2015): stacks of 3x3 convs (stride 1, pad 1) and 2x2/2 max pooling.

ImageNet scale is timm's `vgg11`...`vgg19` and `*_bn` (VGG-16 = 138,357,544 parameters, as
torchvision). This class builds the same layouts and is registered for 28-32 px images as in the
CIFAR VGGs (Liu & Deng, 2015): batch norm optional, pooling in ceil mode so 28 px reaches 1x1,
and a 512-512 classifier instead of 4096-4096 over a 7x7 map.
"""
from torch import nn
from timm.models import generate_default_cfgs, register_model

from ._common import LinearClassifierModel, create, he_init, small_cfg

LAYOUTS = {  # filters per conv, 'M' = max pool (the paper's configurations A, B, D, E)
    11: (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    13: (64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    16: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'),
    19: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M'),
}


class VGG(LinearClassifierModel):
    def __init__(self, depth=16, batch_norm=False, fc_dim=512, pool_size=1, ceil_mode=True,
                 num_classes=1000, in_chans=3, drop_rate=0.5, global_pool=None):
        super().__init__()
        self.num_classes = num_classes
        layers, chs = [], in_chans
        for v in LAYOUTS[depth]:
            if v == 'M':
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil_mode))
                continue
            layers += [nn.Conv2d(chs, v, 3, padding=1)] + ([nn.BatchNorm2d(v)] if batch_norm else []) + [nn.ReLU(True)]
            chs = v
        self.features = nn.Sequential(*layers)
        self.num_features, self.head_hidden_size = chs, fc_dim
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.pre_logits = nn.Sequential(
            nn.Flatten(), nn.Linear(chs * pool_size ** 2, fc_dim), nn.ReLU(True), nn.Dropout(drop_rate),
            nn.Linear(fc_dim, fc_dim), nn.ReLU(True), nn.Dropout(drop_rate))
        self.fc = nn.Linear(fc_dim, num_classes) if num_classes else nn.Identity()
        he_init(self)


default_cfgs = generate_default_cfgs({
    f'vgg{d}{bn}_cifar': small_cfg(first_conv='features.0', classifier='fc') for d in LAYOUTS for bn in ('', '_bn')
})


def _create(depth, batch_norm, pretrained=False, **kwargs):
    variant = f'vgg{depth}{"_bn" if batch_norm else ""}_cifar'
    return create(VGG, variant, pretrained, **{'depth': depth, 'batch_norm': batch_norm, **kwargs})


@register_model
def vgg11_cifar(pretrained=False, **kwargs):
    return _create(11, False, pretrained, **kwargs)


@register_model
def vgg11_bn_cifar(pretrained=False, **kwargs):
    return _create(11, True, pretrained, **kwargs)


@register_model
def vgg13_cifar(pretrained=False, **kwargs):
    return _create(13, False, pretrained, **kwargs)


@register_model
def vgg13_bn_cifar(pretrained=False, **kwargs):
    return _create(13, True, pretrained, **kwargs)


@register_model
def vgg16_cifar(pretrained=False, **kwargs):
    return _create(16, False, pretrained, **kwargs)


@register_model
def vgg16_bn_cifar(pretrained=False, **kwargs):
    return _create(16, True, pretrained, **kwargs)


@register_model
def vgg19_cifar(pretrained=False, **kwargs):
    return _create(19, False, pretrained, **kwargs)


@register_model
def vgg19_bn_cifar(pretrained=False, **kwargs):
    return _create(19, True, pretrained, **kwargs)
