"""GoogLeNet / Inception v1 (Szegedy et al., 2015, "Going Deeper with Convolutions").

Nine Inception modules with 1x1 dimension reductions before the 3x3 and 5x5 convs and after the
pooling branch (Table 1 of the paper), no batch norm (torchvision's googlenet adds it, and uses
3x3 in the "5x5" branch), LRN in the stem, dropout 0.4 before the classifier.
Auxiliary classifiers after 4a and 4d (5x5/3 average pool, 1x1 conv 128, FC 1024, dropout 0.7):
in train mode `forward` returns GoogLeNetOutputs(logits, aux1, aux2), and the loss is
    loss = CE(logits) + model.aux_loss_weight * (CE(aux1) + CE(aux2))     (weight 0.3 in the paper)
(`googlenet_loss` below); in eval mode, and from forward_features/forward_head, logits only.
`inception='naive'` builds the paper's naive module (1x1, 3x3, 5x5 and pooling, no reductions).
Small variant: a 3x3/1 stem of 192 filters replaces the 7x7/2 stem and its pools (32 -> 32 px),
then the same modules with pooling after 3b and 4e.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from timm.models import generate_default_cfgs, register_model

from ._common import ClassifierModel, cfg, he_init, small_cfg, variant_creator


class GoogLeNetOutputs(NamedTuple):
    logits: torch.Tensor
    aux1: torch.Tensor
    aux2: torch.Tensor


def googlenet_loss(outputs, target, aux_weight=0.3, criterion=F.cross_entropy):
    """Main loss plus the weighted auxiliary losses when `outputs` carries them."""
    if isinstance(outputs, GoogLeNetOutputs):
        main, aux1, aux2 = outputs
        return criterion(main, target) + aux_weight * (criterion(aux1, target) + criterion(aux2, target))
    return criterion(outputs, target)


def conv_relu(in_chs, out_chs, kernel, stride=1, padding=None):
    padding = kernel // 2 if padding is None else padding
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, kernel, stride, padding), nn.ReLU(inplace=True))


class Inception(nn.Module):
    """Four parallel branches concatenated along channels: 1x1 | 1x1->3x3 | 1x1->5x5 | pool->1x1."""

    def __init__(self, in_chs, c1, c3r, c3, c5r, c5, pool_proj, naive=False):
        super().__init__()
        self.b1 = conv_relu(in_chs, c1, 1)
        if naive:  # no reductions: the pooling branch passes all input channels through
            self.b3, self.b5 = conv_relu(in_chs, c3, 3), conv_relu(in_chs, c5, 5)
            self.bp = nn.MaxPool2d(3, 1, 1)
            self.out_chs = c1 + c3 + c5 + in_chs
        else:
            self.b3 = nn.Sequential(conv_relu(in_chs, c3r, 1), conv_relu(c3r, c3, 3))
            self.b5 = nn.Sequential(conv_relu(in_chs, c5r, 1), conv_relu(c5r, c5, 5))
            self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_relu(in_chs, pool_proj, 1))
            self.out_chs = c1 + c3 + c5 + pool_proj

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


class AuxHead(nn.Module):
    def __init__(self, in_chs, num_classes):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)  # = 5x5/3 average pooling on the 14x14 maps at 224 px
        self.conv = conv_relu(in_chs, 128, 1)
        self.fc1 = nn.Linear(128 * 16, 1024)
        self.drop = nn.Dropout(0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.conv(self.pool(x)).flatten(1)
        return self.fc2(self.drop(F.relu(self.fc1(x), inplace=True)))


# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj; 'M' = 3x3/2 max pool
MODULES = ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), 'M',
           (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
           (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), 'M',
           (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128))
AUX_AFTER = (3, 6)  # indices of 4a and 4d in MODULES


class GoogLeNet(ClassifierModel):
    aux_loss_weight = 0.3  # weight of each auxiliary loss in the total (paper, Sec. 5)

    def __init__(self, stem='imagenet', inception='reduction', aux_logits=True, num_classes=1000, in_chans=3,
                 drop_rate=0.4, global_pool='avg'):
        super().__init__()
        self.num_classes = num_classes
        if stem == 'imagenet':
            self.stem = nn.Sequential(
                conv_relu(in_chans, 64, 7, 2), nn.MaxPool2d(3, 2, ceil_mode=True),
                nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75), conv_relu(64, 64, 1), conv_relu(64, 192, 3),
                nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75), nn.MaxPool2d(3, 2, ceil_mode=True))
        else:
            self.stem = conv_relu(in_chans, 192, 3)
        blocks, chs, aux_chs = [], 192, []
        for i, spec in enumerate(MODULES):
            if spec == 'M':
                blocks.append(nn.MaxPool2d(3, 2, ceil_mode=True))
                continue
            block = Inception(chs, *spec, naive=inception == 'naive')
            blocks.append(block)
            chs = block.out_chs
            if i in AUX_AFTER:
                aux_chs.append(chs)
        self.blocks = nn.ModuleList(blocks)
        self.aux = nn.ModuleList(AuxHead(c, num_classes) for c in aux_chs) if aux_logits else None
        self._init_head(chs, num_classes, global_pool, drop_rate)
        he_init(self)

    def reset_classifier(self, num_classes, global_pool=None):
        super().reset_classifier(num_classes, global_pool)
        if self.aux is not None:
            self.aux = nn.ModuleList(AuxHead(a.conv[0].in_channels, num_classes) for a in self.aux)

    def _forward_blocks(self, x, with_aux):
        x, aux = self.stem(x), []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if with_aux and i in AUX_AFTER:
                aux.append(self.aux[len(aux)](x))
        return x, aux

    def forward_features(self, x):
        return self._forward_blocks(x, with_aux=False)[0]

    def forward(self, x):
        with_aux = self.training and self.aux is not None
        x, aux = self._forward_blocks(x, with_aux)
        logits = self.forward_head(x)
        return GoogLeNetOutputs(logits, *aux) if with_aux else logits


MODEL_CFGS = {
    'googlenet_v1': dict(),
    'googlenet_v1_cifar': dict(stem='cifar'),
}

default_cfgs = generate_default_cfgs({
    'googlenet_v1': cfg(first_conv='stem.0.0', classifier='head.fc'),
    'googlenet_v1_cifar': small_cfg(first_conv='stem.0', classifier='head.fc'),
})


_create = variant_creator(GoogLeNet, MODEL_CFGS)


@register_model
def googlenet_v1(pretrained=False, **kwargs):
    """GoogLeNet as in the paper (aux_logits=False drops the auxiliary classifiers)."""
    return _create('googlenet_v1', pretrained, **kwargs)


@register_model
def googlenet_v1_cifar(pretrained=False, **kwargs):
    return _create('googlenet_v1_cifar', pretrained, **kwargs)
