"""Shared helpers: default pretrained-cfg entries, the builder every family uses, and the base
classes that give the families timm's model API."""
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg
from torch import nn

SMALL = dict(input_size=(3, 32, 32), pool_size=None, crop_pct=1.0, num_classes=10,
             mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def cfg(**kwargs):
    """A timm pretrained-cfg entry without weights (this zoo trains from scratch)."""
    return {'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
            'crop_pct': 0.875, 'interpolation': 'bilinear', 'mean': (0.485, 0.456, 0.406),
            'std': (0.229, 0.224, 0.225), 'first_conv': '', 'classifier': '', **kwargs}


def small_cfg(**kwargs):
    """Entry for a 28-32 px variant; any number of input channels works."""
    return cfg(**{**SMALL, **kwargs})


def create(model_cls, variant, pretrained=False, **kwargs):
    # The zoo publishes no weights; a weights file given through timm's pretrained path loads like timm's own
    # (pretrained_cfg_overlay={'file': ...}: classifier reset, first conv adapted).
    if pretrained and not (kwargs.get('pretrained_cfg_overlay') or {}).get('file'):
        raise ValueError(f'{variant}: no pretrained weights in this zoo: give a weights file (init: in a spec)')
    return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)


def variant_creator(model_cls, model_cfgs):
    """`_create(variant, pretrained, **kwargs)` for a family whose variants' arguments are in `model_cfgs`."""
    def _create(variant, pretrained=False, **kwargs):
        return create(model_cls, variant, pretrained, **{**model_cfgs[variant], **kwargs})
    return _create


def he_init(model):
    """He et al. (2015) initialization for the families without batch norm: weights N(0, 2 / fan_in) in every
    conv and fully connected layer, zero biases, N(0, 0.01) for the classifier. PyTorch's default draws
    weights with variance 1 / (3 fan_in), so each conv + ReLU shrinks the signal's variance about 6x: an
    8-19 layer net without batch norm then starts with constant logits and vanishing gradients (AlexNet and
    VGG stay at chance). The BN families keep PyTorch's default."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode='fan_in', nonlinearity='relu')
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    classifier = model.get_classifier()
    if isinstance(classifier, (nn.Conv2d, nn.Linear)):
        nn.init.normal_(classifier.weight, 0.0, 0.01)


class ClassifierModel(nn.Module):
    """timm's uniform model API (reset_classifier, get_classifier, forward_features, forward_head,
    forward) for a family built as `self.features` + `self.head`, a timm ClassifierHead made by
    `_init_head`. A family overrides only what differs, e.g. forward_features for another trunk."""

    def _init_head(self, num_features, num_classes, global_pool='avg', drop_rate=0.0):
        self.num_features = self.head_hidden_size = num_features
        self.head = ClassifierHead(num_features, num_classes, global_pool, drop_rate)

    def reset_classifier(self, num_classes, global_pool=None):
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def get_classifier(self):
        return self.head.fc

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, x, pre_logits=False):
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class LinearClassifierModel(ClassifierModel):
    """The same API for a family whose head is `self.pool`, fully connected `self.pre_logits` layers
    (their output width is head_hidden_size) and a linear `self.fc` classifier."""

    def reset_classifier(self, num_classes, global_pool=None):
        self.num_classes = num_classes
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()

    def get_classifier(self):
        return self.fc

    def forward_head(self, x, pre_logits=False):
        x = self.pre_logits(self.pool(x))
        return x if pre_logits else self.fc(x)
