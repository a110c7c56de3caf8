"""Residual networks, one class for the lecture's ResNet variants that timm lacks.

- CIFAR ResNet-20/32/44/56/110 and their plain twins (He et al., 2015, "Deep Residual Learning for
  Image Recognition", Sec. 4.2): 3x3 stem with 16 filters, three stages of 16/32/64 filters, option-A
  shortcuts (identity, stride-2 subsampling, zero-padded extra channels: no extra parameters).
- Pre-activation ResNet (He et al., 2016, "Identity Mappings in Deep Residual Networks"):
  BN-ReLU before each conv, nothing after the addition. ImageNet scale: timm's `resnetv2_*`.
- Wide ResNet WRN-d-k (Zagoruyko & Komodakis, 2016): pre-activation basic blocks, k times wider,
  optional dropout between the two convs, 1x1 projection shortcuts.
- ResNeXt-29 for CIFAR (Xie et al., 2017): bottlenecks with grouped 3x3 convs (cardinality).
- SE-ResNet for CIFAR (Hu et al., 2018): squeeze-and-excitation on each residual branch.
- Stochastic Depth (Huang et al., 2016, "Deep Networks with Stochastic Depth"): in training each
  residual branch is dropped whole for the mini-batch with probability 1 - p_l, p_l decaying
  linearly from 1 to p_L = 0.5 at the last block; at test time the branch is scaled by p_l.
  (timm's drop_path is per sample, not this.) A dropped branch leaves its parameters unused for
  that step: DDP needs find_unused_parameters=True.
ImageNet-scale ResNet-18..152, ResNeXt, SE-ResNet(X) and WRN-50-2 are timm's (faithful);
`resnet152_sd` is built here, with the ResNet-152 layout, for stochastic depth.
"""
import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import SEModule
from timm.models import generate_default_cfgs, register_model

from ._common import ClassifierModel, cfg, small_cfg, variant_creator


class ShortcutA(nn.Module):
    """Option A: identity with stride subsampling, extra channels filled with zeros."""

    def __init__(self, in_chs, out_chs, stride):
        super().__init__()
        self.stride, self.pad = stride, out_chs - in_chs

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad))


def conv_bn(in_chs, out_chs, kernel_size, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out_chs))


def bn_relu(chs):
    return nn.Sequential(nn.BatchNorm2d(chs), nn.ReLU(inplace=True))


def basic_branch(in_chs, out_chs, stride, preact, drop_rate=0.0, **_):
    if preact:  # the first BN-ReLU is applied by the block (shared with a projection shortcut)
        return nn.Sequential(nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False), bn_relu(out_chs),
                             nn.Dropout(drop_rate), nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False))
    return nn.Sequential(conv_bn(in_chs, out_chs, 3, stride), nn.ReLU(inplace=True), conv_bn(out_chs, out_chs, 3))


def bottleneck_branch(in_chs, out_chs, stride, preact, groups=1, width=None, **_):
    width = width or out_chs // 4
    if preact:
        return nn.Sequential(nn.Conv2d(in_chs, width, 1, bias=False), bn_relu(width),
                             nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False), bn_relu(width),
                             nn.Conv2d(width, out_chs, 1, bias=False))
    return nn.Sequential(conv_bn(in_chs, width, 1), nn.ReLU(inplace=True),
                         conv_bn(width, width, 3, stride, groups), nn.ReLU(inplace=True),
                         conv_bn(width, out_chs, 1))


class Block(nn.Module):
    """out = branch(x) + shortcut(x), with post-activation (ReLU after the sum) or pre-activation.

    shortcut: 'A' (zero-padded identity), 'B' (1x1 projection where the shape changes) or None (a
    plain network, no shortcut). survival_prob < 1 turns on stochastic depth for this block.
    """

    def __init__(self, branch_fn, in_chs, out_chs, stride=1, shortcut='B', preact=False, se=False,
                 survival_prob=1.0, **branch_kwargs):
        super().__init__()
        self.preact = bn_relu(in_chs) if preact else None
        self.branch = branch_fn(in_chs, out_chs, stride, preact, **branch_kwargs)
        self.se = SEModule(out_chs, rd_ratio=1 / 16) if se else nn.Identity()
        self.has_shortcut = shortcut is not None
        self.shortcut = nn.Identity()
        if self.has_shortcut and (stride != 1 or in_chs != out_chs):
            if shortcut == 'A':
                self.shortcut = ShortcutA(in_chs, out_chs, stride)
            elif preact:
                self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)
            else:
                self.shortcut = conv_bn(in_chs, out_chs, 1, stride)
        self.survival_prob = survival_prob

    def forward(self, x):
        shortcut = x
        if self.preact is not None:
            x = self.preact(x)
            if not isinstance(self.shortcut, nn.Identity):
                shortcut = x  # a projection sees the pre-activated input (He et al., 2016)
        shortcut = self.shortcut(shortcut)
        if self.training and self.survival_prob < 1 and torch.rand(()).item() > self.survival_prob:
            out = shortcut  # stochastic depth: the whole branch is skipped for this mini-batch
        else:
            out = self.se(self.branch(x))
            if not self.training and self.survival_prob < 1:
                out = out * self.survival_prob  # expected value of the training-time branch
            if self.has_shortcut:
                out = out + shortcut
        return out if self.preact is not None else F.relu(out)


class ResNet(ClassifierModel):
    """Stages of residual blocks behind a CIFAR stem (3x3 conv) or an ImageNet stem (7x7/2 + max pool).

    Args:
        layers: blocks per stage. widths: output channels per stage.
        block: 'basic' or 'bottleneck'. shortcut: 'A', 'B' or None (plain network).
        preact: pre-activation blocks. se: squeeze-and-excitation. groups/base_width: ResNeXt
        cardinality and width per group (bottleneck width = widths/4 * base_width/64 * groups).
        final_survival_prob: stochastic depth p_L (1.0 = off); block l of L survives with
        1 - l/L * (1 - p_L).
    """

    def __init__(self, layers, widths, block='basic', stem='cifar', stem_width=16, shortcut='A',
                 preact=False, se=False, groups=1, base_width=64, block_drop_rate=0.0,
                 final_survival_prob=1.0, num_classes=1000, in_chans=3, global_pool='avg', drop_rate=0.0):
        super().__init__()
        self.num_classes = num_classes
        # Dropped blocks leave parameters without gradients: data-parallel training must allow it.
        self.has_unused_parameters = final_survival_prob < 1
        if stem == 'cifar':
            self.stem = nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False)
            if not preact:
                self.stem = nn.Sequential(self.stem, bn_relu(stem_width))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_width, 7, 2, 3, bias=False), bn_relu(stem_width),
                                      nn.MaxPool2d(3, 2, 1))
        branch_fn = basic_branch if block == 'basic' else bottleneck_branch
        total, idx, in_chs = sum(layers), 0, stem_width
        stages = []
        for stage_idx, (depth, out_chs) in enumerate(zip(layers, widths)):
            blocks = []
            for i in range(depth):
                idx += 1
                stride = 2 if stage_idx > 0 and i == 0 else 1
                width = out_chs // 4 * base_width // 64 * groups
                blocks.append(Block(branch_fn, in_chs, out_chs, stride, shortcut, preact, se,
                                    survival_prob=1 - idx / total * (1 - final_survival_prob),
                                    drop_rate=block_drop_rate, groups=groups, width=width))
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.final_act = bn_relu(in_chs) if preact else nn.Identity()
        self._init_head(in_chs, num_classes, global_pool, drop_rate)

    def forward_features(self, x):
        return self.final_act(self.stages(self.stem(x)))


def _cifar(n, **kwargs):
    """6n+2 layers (basic blocks) or 9n+2 (bottlenecks), three stages."""
    return dict(layers=(n, n, n), **kwargs)


MODEL_CFGS = {
    **{f'resnet{6 * n + 2}': _cifar(n, widths=(16, 32, 64)) for n in (3, 5, 7, 9, 18)},
    **{f'plain{6 * n + 2}': _cifar(n, widths=(16, 32, 64), shortcut=None) for n in (3, 5, 7, 9, 18)},
    'resnet110_sd': _cifar(18, widths=(16, 32, 64), final_survival_prob=0.5),
    'preact_resnet110': _cifar(18, widths=(16, 32, 64), preact=True, shortcut='B'),
    'preact_resnet164': _cifar(18, widths=(64, 128, 256), block='bottleneck', preact=True, shortcut='B'),
    'wrn28_10': _cifar(4, widths=(160, 320, 640), preact=True, shortcut='B'),
    'wrn40_4': _cifar(6, widths=(64, 128, 256), preact=True, shortcut='B'),
    'resnext29_8x64d': _cifar(3, widths=(256, 512, 1024), block='bottleneck', stem_width=64, shortcut='B',
                              groups=8, base_width=64),
    'se_resnet20': _cifar(3, widths=(16, 32, 64), se=True),
    'se_resnet110': _cifar(18, widths=(16, 32, 64), se=True),
    'resnet152_sd': dict(layers=(3, 8, 36, 3), widths=(256, 512, 1024, 2048), block='bottleneck',
                         stem='imagenet', stem_width=64, shortcut='B', final_survival_prob=0.5),
}

default_cfgs = generate_default_cfgs({
    **{name: small_cfg(first_conv='stem.0', classifier='head.fc') for name in MODEL_CFGS if name != 'resnet152_sd'},
    'resnet152_sd': cfg(first_conv='stem.0', classifier='head.fc'),
})


_create = variant_creator(ResNet, MODEL_CFGS)


@register_model
def resnet20(pretrained=False, **kwargs):
    return _create('resnet20', pretrained, **kwargs)


@register_model
def resnet32(pretrained=False, **kwargs):
    return _create('resnet32', pretrained, **kwargs)


@register_model
def resnet44(pretrained=False, **kwargs):
    return _create('resnet44', pretrained, **kwargs)


@register_model
def resnet56(pretrained=False, **kwargs):
    return _create('resnet56', pretrained, **kwargs)


@register_model
def resnet110(pretrained=False, **kwargs):
    return _create('resnet110', pretrained, **kwargs)


@register_model
def plain20(pretrained=False, **kwargs):
    return _create('plain20', pretrained, **kwargs)


@register_model
def plain32(pretrained=False, **kwargs):
    return _create('plain32', pretrained, **kwargs)


@register_model
def plain44(pretrained=False, **kwargs):
    return _create('plain44', pretrained, **kwargs)


@register_model
def plain56(pretrained=False, **kwargs):
    return _create('plain56', pretrained, **kwargs)


@register_model
def plain110(pretrained=False, **kwargs):
    return _create('plain110', pretrained, **kwargs)


@register_model
def resnet110_sd(pretrained=False, **kwargs):
    """ResNet-110 with stochastic depth, p_L = 0.5 (Huang et al.'s CIFAR model)."""
    return _create('resnet110_sd', pretrained, **kwargs)


@register_model
def resnet152_sd(pretrained=False, **kwargs):
    """ResNet-152 with stochastic depth, p_L = 0.5 (Huang et al.'s ImageNet model)."""
    return _create('resnet152_sd', pretrained, **kwargs)


@register_model
def preact_resnet110(pretrained=False, **kwargs):
    return _create('preact_resnet110', pretrained, **kwargs)


@register_model
def preact_resnet164(pretrained=False, **kwargs):
    return _create('preact_resnet164', pretrained, **kwargs)


@register_model
def wrn28_10(pretrained=False, **kwargs):
    """WRN-28-10; pass block_drop_rate=0.3 for the paper's dropout variant."""
    return _create('wrn28_10', pretrained, **kwargs)


@register_model
def wrn40_4(pretrained=False, **kwargs):
    return _create('wrn40_4', pretrained, **kwargs)


@register_model
def resnext29_8x64d(pretrained=False, **kwargs):
    return _create('resnext29_8x64d', pretrained, **kwargs)


@register_model
def se_resnet20(pretrained=False, **kwargs):
    return _create('se_resnet20', pretrained, **kwargs)


@register_model
def se_resnet110(pretrained=False, **kwargs):
    return _create('se_resnet110', pretrained, **kwargs)
