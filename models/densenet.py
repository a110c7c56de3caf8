"""DenseNet (Huang et al., 2017, "Densely Connected Convolutional Networks").

Each layer gets the concatenation of all earlier feature maps of its dense block and adds k (the
growth rate) new ones. DenseNet-BC: bottleneck layers BN-ReLU-1x1(4k)-BN-ReLU-3x3(k) and
transitions that compress the channels by theta = 0.5 (BN-ReLU-1x1, 2x2 average pooling).
ImageNet DenseNet-121/169/201 are timm's (DenseNet-121 = 7,978,856 parameters); this class builds
the same layouts (`stem='imagenet'`) and is registered for small images as in the paper's CIFAR
models: a 3x3 stem with 2k filters and three dense blocks of (L - 4) / 6 layers.
"""
import torch
from torch import nn
from timm.models import generate_default_cfgs, register_model

from ._common import ClassifierModel, small_cfg, variant_creator


def bn_relu_conv(in_chs, out_chs, kernel):
    return nn.Sequential(nn.BatchNorm2d(in_chs), nn.ReLU(inplace=True),
                         nn.Conv2d(in_chs, out_chs, kernel, padding=kernel // 2, bias=False))


class DenseLayer(nn.Module):
    def __init__(self, in_chs, growth_rate, bn_size=4, drop_rate=0.0):
        super().__init__()
        self.conv = nn.Sequential(bn_relu_conv(in_chs, bn_size * growth_rate, 1),
                                  bn_relu_conv(bn_size * growth_rate, growth_rate, 3), nn.Dropout(drop_rate))

    def forward(self, x):
        return torch.cat([x, self.conv(x)], dim=1)


class DenseNet(ClassifierModel):
    def __init__(self, block_config=(16, 16, 16), growth_rate=12, compression=0.5, stem='cifar',
                 num_classes=1000, in_chans=3, drop_rate=0.0, global_pool='avg'):
        super().__init__()
        self.num_classes = num_classes
        chs = 2 * growth_rate
        if stem == 'imagenet':
            self.stem = nn.Sequential(nn.Conv2d(in_chans, chs, 7, 2, 3, bias=False), nn.BatchNorm2d(chs),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Conv2d(in_chans, chs, 3, padding=1, bias=False)
        layers = []
        for i, n in enumerate(block_config):
            for _ in range(n):
                layers.append(DenseLayer(chs, growth_rate, drop_rate=drop_rate))
                chs += growth_rate
            if i < len(block_config) - 1:
                out = int(chs * compression)
                layers += [bn_relu_conv(chs, out, 1), nn.AvgPool2d(2, ceil_mode=True)]  # transition
                chs = out
        self.features = nn.Sequential(*layers, nn.BatchNorm2d(chs), nn.ReLU(inplace=True))
        self._init_head(chs, num_classes, global_pool)

    def forward_features(self, x):
        return self.features(self.stem(x))


def _bc(depth, growth_rate):
    n = (depth - 4) // 6
    return dict(block_config=(n, n, n), growth_rate=growth_rate)


MODEL_CFGS = {
    'densenet_bc_100_12': _bc(100, 12),
    'densenet_bc_250_24': _bc(250, 24),
    'densenet_bc_190_40': _bc(190, 40),
}

default_cfgs = generate_default_cfgs({name: small_cfg(first_conv='stem', classifier='head.fc') for name in MODEL_CFGS})


_create = variant_creator(DenseNet, MODEL_CFGS)


@register_model
def densenet_bc_100_12(pretrained=False, **kwargs):
    return _create('densenet_bc_100_12', pretrained, **kwargs)


@register_model
def densenet_bc_250_24(pretrained=False, **kwargs):
    return _create('densenet_bc_250_24', pretrained, **kwargs)


@register_model
def densenet_bc_190_40(pretrained=False, **kwargs):
    return _create('densenet_bc_190_40', pretrained, **kwargs)
