"""A classifier on a CLIP image tower: the open_clip model's image tower, its features L2-normalised, a linear
head. CLIP's zero-shot classifier is such a head (class text embeddings times the logit scale), so
`init: clip:...` starts it as the zero-shot classifier and fine-tuning goes on from there."""
import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._common import cfg, create
from .clip import check_model_name_or_raise, register_small_models


def image_tower(clip_model: str):
    """(the image tower of open_clip model `clip_model`, randomly initialised, its image size, its embedding
    width); built from open_clip's config (the small models of models.clip among them), no text tower."""
    import open_clip
    from open_clip.model import _build_vision_tower

    register_small_models()
    check_model_name_or_raise(clip_model)
    config = open_clip.get_model_config(clip_model)
    if config is None:
        raise ValueError(f"CLIP model '{clip_model}' has no open_clip config to build its image tower from")
    vision = config["vision_cfg"]
    size = vision.get("image_size", 224)
    # open_clip has no public call that builds the image tower alone; this is the one its CLIP class builds it with.
    tower = _build_vision_tower(config["embed_dim"], vision, config.get("quick_gelu", False))
    return tower, int(size[0] if isinstance(size, (tuple, list)) else size), config["embed_dim"]


class ClipImageClassifier(nn.Module):
    """`visual` (named as in the CLIP model, so its weights copy as they are), then L2 normalisation and `head`.

    Grey images are repeated to 3 channels and images of another size resized (bilinear, antialiased) to the
    tower's, as pipeline.clip.data.ImageInput does. The input arrives normalised by the data's statistics;
    `input_scale` and `input_shift` (per RGB channel, identity by default) map it to the normalisation the
    tower was trained with, set by `init: clip:...` with the weights."""

    def __init__(self, clip_model='clip-rn-32', num_classes=10, in_chans=3, drop_rate=0.0):
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f'clip_image_classifier takes 1 or 3 input channels, not {in_chans}')
        self.visual, self.image_size, embed_dim = image_tower(clip_model)
        self.clip_model, self.num_classes, self.in_chans = clip_model, num_classes, in_chans
        self.num_features = self.head_hidden_size = embed_dim
        self.register_buffer('input_scale', torch.ones(3))
        self.register_buffer('input_shift', torch.zeros(3))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        """The tower's stem, its stages (ResNet) or blocks (ViT), its pooling/projection; the head last."""
        return dict(stem=r'^visual\.(?:conv\d|bn\d|class_embedding|positional_embedding|ln_pre|trunk\.stem)',
                    blocks=[(r'^visual\.(?:layer|trunk\.stages?\.|transformer\.resblocks\.)(\d+)', None),
                            (r'^visual\.(?:attnpool|ln_post|proj|head|trunk\.(?:norm|head))', (99999,))])

    @torch.jit.ignore
    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes, global_pool=None):
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x):
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode='bilinear', antialias=True,
                              align_corners=False)
        x = x * self.input_scale.view(1, 3, 1, 1) + self.input_shift.view(1, 3, 1, 1)
        return F.normalize(self.visual(x), dim=-1)

    def forward_head(self, x, pre_logits=False):
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs({
    'clip_image_classifier': cfg(input_size=(3, 32, 32), crop_pct=1.0, num_classes=10, classifier='head',
                                 mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)),
})


@register_model
def clip_image_classifier(pretrained=False, **kwargs):
    model = create(ClipImageClassifier, 'clip_image_classifier', pretrained, **kwargs)
    # The input size is the tower's, which its clip_model decides.
    model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg,
                                                'input_size': (3, model.image_size, model.image_size)}
    return model
