"""Shared helpers: default pretrained-cfg entries and the builder every family uses."""
from timm.models import build_model_with_cfg

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
    if pretrained:
        raise ValueError(f'{variant}: no pretrained weights in this zoo (models train from scratch)')
    return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
