"""LeNet-5 (LeCun et al., 1998, "Gradient-based learning applied to document recognition").

C1 6@5x5 -> S2 subsample -> C3 16@5x5 -> S4 -> C5 120 -> F6 84 -> output. Inputs are 32x32: like
LeCun, 28x28 digits are centred in a 32x32 field (zero padding). C3 is fully connected to S2
(the paper's sparse connection table is a 1998 compute saving), sub-sampling is average pooling
and the output layer is linear instead of RBF units.
"""
import torch.nn.functional as F
from torch import nn
from timm.models import generate_default_cfgs, register_model

from ._common import LinearClassifierModel, create, small_cfg


class LeNet(LinearClassifierModel):
    def __init__(self, num_classes=10, in_chans=1, act_layer=nn.Tanh, drop_rate=0.0):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5), act_layer(), nn.AvgPool2d(2),   # C1, S2
            nn.Conv2d(6, 16, 5), act_layer(), nn.AvgPool2d(2),         # C3, S4
            nn.AdaptiveAvgPool2d(5),  # no-op at 32 px, lets larger inputs through
        )
        self.num_features = 16
        self.head_hidden_size = 84
        self.pre_logits = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), act_layer(),    # C5 (a 5x5 conv on a 5x5 map)
            nn.Linear(120, 84), act_layer(), nn.Dropout(drop_rate))   # F6
        self.fc = nn.Linear(84, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x):
        pad_h, pad_w = max(0, 32 - x.shape[-2]), max(0, 32 - x.shape[-1])
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return self.features(x)

    def forward_head(self, x, pre_logits=False):
        x = self.pre_logits(x)
        return x if pre_logits else self.fc(x)


default_cfgs = generate_default_cfgs({
    'lenet5': small_cfg(input_size=(1, 32, 32), mean=(0.5,), std=(0.5,), first_conv='features.0', classifier='fc'),
})


@register_model
def lenet5(pretrained=False, **kwargs):
    return create(LeNet, 'lenet5', pretrained, **kwargs)
