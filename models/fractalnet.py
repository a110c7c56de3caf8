"""FractalNet (Larsson et al., 2017, "FractalNet: Ultra-Deep Neural Networks without Residuals").

A fractal block with C columns: f_1(z) = conv(z), f_{C+1}(z) = join(f_C(f_C(z)), conv(z)), where
join is the element-wise mean; column c has 2^(c-1) conv-BN-ReLU units and the deepest path 2^(C-1).
Joins that meet at the same depth are one join over all those columns (the paper's Fig. 1).
Drop-path, sampled per mini-batch in training, half the batches each way:
- local: each join drops each of its inputs with probability 0.15, keeping at least one;
- global: one column is chosen for the whole network, every join keeps only that column.
At test time all paths are used. CIFAR: B=5 blocks of 64-128-256-512-512 filters, each followed by
2x2 max pooling (ceil mode, so 28 px reaches 1x1); FractalNet-20 (C=3) and -40 (C=4).
ImageNet: FractalNet-34 (C=4, 4 blocks of 64-128-256-512 behind ResNet's 7x7/2 stem and max pool).
"""
import random

import torch
from torch import nn
from timm.models import generate_default_cfgs, register_model

from ._common import ClassifierModel, cfg, small_cfg, variant_creator


def conv_bn_relu(in_chs, out_chs):
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False), nn.BatchNorm2d(out_chs),
                         nn.ReLU(inplace=True))


class FractalBlock(nn.Module):
    def __init__(self, in_chs, out_chs, num_columns, drop_rate=0.0):
        super().__init__()
        self.num_columns = num_columns
        self.depth = 2 ** (num_columns - 1)
        # column c (0 = shallowest) has 2^c units, each spanning depth / 2^c steps of the deepest one
        self.columns = nn.ModuleList(
            nn.ModuleList(conv_bn_relu(in_chs if i == 0 else out_chs, out_chs) for i in range(2 ** c))
            for c in range(num_columns))
        self.drop = nn.Dropout(drop_rate)

    @staticmethod
    def _join(outs, drop):
        """Mean of the inputs; local drop-path keeps each with probability 1 - p, at least one."""
        if drop is not None:
            kept = [o for o in outs if random.random() >= drop[1]]
            outs = kept or [random.choice(outs)]
        return torch.stack(outs).mean(0)

    def forward(self, x, drop=None):
        """drop: None (all paths), ('local', p) or ('global', column)."""
        if drop is not None and drop[0] == 'global':  # only the chosen column is on the path
            for unit in self.columns[drop[1]]:
                x = unit(x)
            return self.drop(x)
        inputs = [x] * self.num_columns
        for step in range(1, self.depth + 1):
            active = [c for c in range(self.num_columns) if step % (self.depth >> c) == 0]
            outs = [self.columns[c][step // (self.depth >> c) - 1](inputs[c]) for c in active]
            joined = self._join(outs, drop) if len(outs) > 1 else outs[0]
            for c in active:
                inputs[c] = joined
        return self.drop(inputs[0])


class FractalNet(ClassifierModel):
    def __init__(self, widths=(64, 128, 256, 512, 512), num_columns=4, stem='cifar', block_drop_rates=None,
                 local_drop_prob=0.15, global_drop_ratio=0.5, num_classes=1000, in_chans=3, drop_rate=0.0,
                 global_pool='avg'):
        super().__init__()
        self.num_classes = num_classes
        self.num_columns = num_columns
        self.local_drop_prob, self.global_drop_ratio = local_drop_prob, global_drop_ratio
        # Dropped paths leave parameters without gradients: data-parallel training must allow it.
        self.has_unused_parameters = local_drop_prob > 0 or global_drop_ratio > 0
        if stem == 'imagenet':
            self.stem = nn.Sequential(nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
            chs, pool_after_last = 64, False
        else:
            self.stem, chs, pool_after_last = nn.Identity(), in_chans, True
        block_drop_rates = block_drop_rates or [0.0] * len(widths)
        self.blocks, self.pools = nn.ModuleList(), nn.ModuleList()
        for i, (width, rate) in enumerate(zip(widths, block_drop_rates)):
            self.blocks.append(FractalBlock(chs, width, num_columns, rate))
            last = i == len(widths) - 1
            self.pools.append(nn.MaxPool2d(2, 2, ceil_mode=True) if pool_after_last or not last else nn.Identity())
            chs = width
        self._init_head(chs, num_classes, global_pool, drop_rate)

    def sample_drop_path(self):
        """One draw per mini-batch: ('global', column) or ('local', p)."""
        if random.random() < self.global_drop_ratio:
            return 'global', random.randrange(self.num_columns)
        return 'local', self.local_drop_prob

    def forward_features(self, x, drop=None):
        if drop is None and self.training:
            drop = self.sample_drop_path()
        x = self.stem(x)
        for block, pool in zip(self.blocks, self.pools):
            x = pool(block(x, drop))
        return x


MODEL_CFGS = {
    'fractalnet20_cifar': dict(num_columns=3),
    'fractalnet40_cifar': dict(num_columns=4),
    'fractalnet34': dict(widths=(64, 128, 256, 512), num_columns=4, stem='imagenet'),
}

default_cfgs = generate_default_cfgs({
    'fractalnet20_cifar': small_cfg(classifier='head.fc'),
    'fractalnet40_cifar': small_cfg(classifier='head.fc'),
    'fractalnet34': cfg(first_conv='stem.0', classifier='head.fc'),
})


_create = variant_creator(FractalNet, MODEL_CFGS)


@register_model
def fractalnet20_cifar(pretrained=False, **kwargs):
    """C=3: 20 conv layers on the deepest path; the paper adds dropout 0, .1, .2, .3, .4 per block
    (block_drop_rates) to drop-path."""
    return _create('fractalnet20_cifar', pretrained, **kwargs)


@register_model
def fractalnet40_cifar(pretrained=False, **kwargs):
    return _create('fractalnet40_cifar', pretrained, **kwargs)


@register_model
def fractalnet34(pretrained=False, **kwargs):
    return _create('fractalnet34', pretrained, **kwargs)
