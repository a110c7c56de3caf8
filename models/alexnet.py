"""AlexNet (Krizhevsky et al., 2012) and ZFNet (Zeiler & Fergus, 2014): one class, five conv layers
and three fully connected ones, described by a per-layer config.

AlexNet 2012 layout on 227x227 inputs: 96-256-384-384-256 filters, ReLU, local response
normalisation (k=2, n=5, alpha=1e-4, beta=0.75) after conv1 and conv2, overlapping 3x3/2 max
pooling, dropout 0.5 in FC6/FC7. `groups=2` reproduces the two-GPU split: conv2, conv4 and conv5
only see the feature maps on their own GPU (60,965,224 parameters; 62,378,344 without the split).
torchvision's `alexnet` is the later one-GPU variant (64 first filters, no LRN).
ZFNet: 7x7/2 first filters and a 5x5/2 conv2 (stride 2 instead of AlexNet's 4 then 1), 224x224.
The small variants keep the filter banks with a 5x5/1 (AlexNet) or 3x3/1 (ZFNet) first conv and
1024-unit FC layers; an adaptive pool fixes the FC input (a no-op at ImageNet size).
"""
from torch import nn
from timm.models import generate_default_cfgs, register_model

from ._common import LinearClassifierModel, cfg, he_init, small_cfg, variant_creator

# per conv: (filters, kernel, stride, padding, grouped, lrn, max pool after)
ALEXNET = ((96, 11, 4, 0, False, True, True), (256, 5, 1, 2, True, True, True), (384, 3, 1, 1, False, False, False),
           (384, 3, 1, 1, True, False, False), (256, 3, 1, 1, True, False, True))
ZFNET = ((96, 7, 2, 1, False, True, True), (256, 5, 2, 0, False, True, True), (384, 3, 1, 1, False, False, False),
         (384, 3, 1, 1, False, False, False), (256, 3, 1, 1, False, False, True))


def _small(layers, kernel):
    first = (layers[0][0], kernel, 1, kernel // 2, *layers[0][4:])
    return (first, (layers[1][0], 5, 1, 2, *layers[1][4:]), *layers[2:])


class AlexNet(LinearClassifierModel):
    def __init__(self, layers=ALEXNET, groups=1, fc_dim=4096, pool_size=6, ceil_mode=False,
                 num_classes=1000, in_chans=3, drop_rate=0.5, global_pool=None):
        super().__init__()
        self.num_classes = num_classes
        feats, chs = [], in_chans
        for out, k, s, p, grouped, lrn, pool in layers:
            feats += [nn.Conv2d(chs, out, k, s, p, groups=groups if grouped else 1), nn.ReLU(inplace=True)]
            if lrn:
                feats.append(nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0))
            if pool:
                feats.append(nn.MaxPool2d(3, 2, ceil_mode=ceil_mode))  # overlapping pooling
            chs = out
        self.features = nn.Sequential(*feats)
        self.num_features, self.head_hidden_size = chs, fc_dim
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.pre_logits = nn.Sequential(
            nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(chs * pool_size ** 2, fc_dim), nn.ReLU(inplace=True),
            nn.Dropout(drop_rate), nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True))
        self.fc = nn.Linear(fc_dim, num_classes) if num_classes else nn.Identity()
        he_init(self)


MODEL_CFGS = {
    'alexnet2012': dict(layers=ALEXNET),
    'zfnet': dict(layers=ZFNET, ceil_mode=True),  # 110 -> 55 -> 26 -> 13 -> 6 as in the paper
    'alexnet2012_cifar': dict(layers=_small(ALEXNET, 5), fc_dim=1024, pool_size=3, ceil_mode=True),
    'zfnet_cifar': dict(layers=_small(ZFNET, 3), fc_dim=1024, pool_size=3, ceil_mode=True),
}

default_cfgs = generate_default_cfgs({
    'alexnet2012': cfg(input_size=(3, 227, 227), first_conv='features.0', classifier='fc'),
    'zfnet': cfg(first_conv='features.0', classifier='fc'),
    'alexnet2012_cifar': small_cfg(first_conv='features.0', classifier='fc'),
    'zfnet_cifar': small_cfg(first_conv='features.0', classifier='fc'),
})


_create = variant_creator(AlexNet, MODEL_CFGS)


@register_model
def alexnet2012(pretrained=False, **kwargs):
    """AlexNet as in the 2012 paper; groups=2 for the two-GPU split."""
    return _create('alexnet2012', pretrained, **kwargs)


@register_model
def zfnet(pretrained=False, **kwargs):
    return _create('zfnet', pretrained, **kwargs)


@register_model
def alexnet2012_cifar(pretrained=False, **kwargs):
    return _create('alexnet2012_cifar', pretrained, **kwargs)


@register_model
def zfnet_cifar(pretrained=False, **kwargs):
    return _create('zfnet_cifar', pretrained, **kwargs)
