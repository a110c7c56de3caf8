"""Network in Network (Lin et al., 2014): "mlpconv" layers, a spatial conv followed by two 1x1 convs
(a small MLP shared over positions), and global average pooling instead of fully connected layers.

ImageNet model: the authors' Caffe model (96/256/384/1024 filters, 11x11/4 first conv, 224 px).
CIFAR model: the paper's 192-160-96 / 192-192-192 / 192-192 network, dropout 0.5 between blocks.
The paper's last 1x1 conv maps to the classes and is then averaged; we average first and apply the
same weights as a linear layer (the two commute), without a ReLU on the logits.
"""
from torch import nn
from timm.models import generate_default_cfgs, register_model

from ._common import ClassifierModel, cfg, he_init, small_cfg, variant_creator


def mlpconv(in_chs, filters, kernel, stride=1, padding=0):
    """A spatial conv, then 1x1 convs: an MLP applied at every position."""
    layers = [nn.Conv2d(in_chs, filters[0], kernel, stride, padding), nn.ReLU(True)]
    for a, b in zip(filters, filters[1:]):
        layers += [nn.Conv2d(a, b, 1), nn.ReLU(True)]
    return nn.Sequential(*layers)


class NiN(ClassifierModel):
    """blocks: (filters, kernel, stride, padding, pooling after: 'max', 'avg' or None). The last
    block omits its final 1x1 conv, the classifier, which the head supplies."""

    def __init__(self, blocks, drop_rate=0.5, num_classes=1000, in_chans=3, global_pool='avg'):
        super().__init__()
        self.num_classes = num_classes
        layers, chs = [], in_chans
        for i, (filters, kernel, stride, padding, pool) in enumerate(blocks):
            layers.append(mlpconv(chs, filters, kernel, stride, padding))
            if pool:
                layers.append((nn.MaxPool2d if pool == 'max' else nn.AvgPool2d)(3, 2, ceil_mode=True))
            if i < len(blocks) - 1 and drop_rate:
                layers.append(nn.Dropout(drop_rate))
            chs = filters[-1]
        self.features = nn.Sequential(*layers)
        self._init_head(chs, num_classes, global_pool)
        he_init(self)


MODEL_CFGS = {
    'nin': dict(blocks=(((96, 96, 96), 11, 4, 0, 'max'), ((256, 256, 256), 5, 1, 2, 'max'),
                        ((384, 384, 384), 3, 1, 1, 'max'), ((1024, 1024), 3, 1, 1, None))),
    'nin_cifar': dict(blocks=(((192, 160, 96), 5, 1, 2, 'max'), ((192, 192, 192), 5, 1, 2, 'avg'),
                              ((192, 192), 3, 1, 1, None))),
}

default_cfgs = generate_default_cfgs({
    'nin': cfg(first_conv='features.0.0', classifier='head.fc'),
    'nin_cifar': small_cfg(first_conv='features.0.0', classifier='head.fc'),
})


_create = variant_creator(NiN, MODEL_CFGS)


@register_model
def nin(pretrained=False, **kwargs):
    return _create('nin', pretrained, **kwargs)


@register_model
def nin_cifar(pretrained=False, **kwargs):
    return _create('nin_cifar', pretrained, **kwargs)
