"""SqueezeNet 1.0 and 1.1 (Iandola et al., 2016, "SqueezeNet: AlexNet-level accuracy with 50x fewer
parameters and <0.5MB model size"), torchvision's layouts.

Fire module: a 1x1 "squeeze" conv feeding parallel 1x1 and 3x3 "expand" convs, concatenated.
The classifier (dropout 0.5, 1x1 conv to the classes, global average pool) is applied as pool then
linear, which is the same map; torchvision's ReLU on the logits is left out. 1.1 moves the pools
earlier and uses a 3x3/2 64-filter first conv (2.4x less compute, same accuracy).
Small variant: a 3x3/1 first conv; the three max pools take 32 px to 4 px.
"""
import torch
from torch import nn
from timm.models import generate_default_cfgs, register_model

from ._common import ClassifierModel, cfg, he_init, small_cfg, variant_creator


class Fire(nn.Module):
    def __init__(self, in_chs, squeeze, expand1x1, expand3x3):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(in_chs, squeeze, 1), nn.ReLU(True))
        self.expand1x1 = nn.Sequential(nn.Conv2d(squeeze, expand1x1, 1), nn.ReLU(True))
        self.expand3x3 = nn.Sequential(nn.Conv2d(squeeze, expand3x3, 3, padding=1), nn.ReLU(True))

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], dim=1)


FIRES = {  # (squeeze, expand 1x1, expand 3x3) per fire module, 'M' = 3x3/2 max pool
    '1_0': ((16, 64, 64), (16, 64, 64), (32, 128, 128), 'M', (32, 128, 128), (48, 192, 192), (48, 192, 192),
            (64, 256, 256), 'M', (64, 256, 256)),
    '1_1': ((16, 64, 64), (16, 64, 64), 'M', (32, 128, 128), (32, 128, 128), 'M', (48, 192, 192),
            (48, 192, 192), (64, 256, 256), (64, 256, 256)),
}


class SqueezeNet(ClassifierModel):
    def __init__(self, version='1_0', stem_kernel=7, stem_stride=2, num_classes=1000, in_chans=3,
                 drop_rate=0.5, global_pool='avg'):
        super().__init__()
        self.num_classes = num_classes
        stem_chs = 96 if version == '1_0' else 64
        layers = [nn.Conv2d(in_chans, stem_chs, stem_kernel, stem_stride, padding=stem_kernel // 2 if stem_stride == 1 else 0),
                  nn.ReLU(True), nn.MaxPool2d(3, 2, ceil_mode=True)]
        chs = stem_chs
        for spec in FIRES[version]:
            if spec == 'M':
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            else:
                layers.append(Fire(chs, *spec))
                chs = spec[1] + spec[2]
        self.features = nn.Sequential(*layers)
        self._init_head(chs, num_classes, global_pool, drop_rate)
        he_init(self)


MODEL_CFGS = {
    'squeezenet1_0': dict(version='1_0'),
    'squeezenet1_1': dict(version='1_1', stem_kernel=3),
    'squeezenet1_0_cifar': dict(version='1_0', stem_kernel=3, stem_stride=1),
    'squeezenet1_1_cifar': dict(version='1_1', stem_kernel=3, stem_stride=1),
}

default_cfgs = generate_default_cfgs({
    name: (small_cfg if name.endswith('_cifar') else cfg)(first_conv='features.0', classifier='head.fc')
    for name in MODEL_CFGS
})


_create = variant_creator(SqueezeNet, MODEL_CFGS)


@register_model
def squeezenet1_0(pretrained=False, **kwargs):
    return _create('squeezenet1_0', pretrained, **kwargs)


@register_model
def squeezenet1_1(pretrained=False, **kwargs):
    return _create('squeezenet1_1', pretrained, **kwargs)


@register_model
def squeezenet1_0_cifar(pretrained=False, **kwargs):
    return _create('squeezenet1_0_cifar', pretrained, **kwargs)


@register_model
def squeezenet1_1_cifar(pretrained=False, **kwargs):
    return _create('squeezenet1_1_cifar', pretrained, **kwargs)
