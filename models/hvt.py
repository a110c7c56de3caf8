"""HVT, the Hierarchical Visual Transformer (Pan et al., 2021, "Scalable Vision Transformers with
Hierarchical Pooling").

A ViT/DeiT encoder that max-pools the token sequence (1D, kernel 3, stride 2) at M points, so later
blocks see ever shorter sequences, like the downsampling of a CNN. There is no class token: the
head averages the last stage's tokens. A learned position embedding is added to the patch tokens
and again after each pooling (our reading: pooled tokens get positions of their own scale).
Built on models/attention.py.
"""
from torch import nn
from timm.layers import resample_abs_pos_embed
from timm.models import generate_default_cfgs, register_model

from ._common import ClassifierModel, cfg, small_cfg, variant_creator
from .attention import LearnedPositionalEncoding, TransformerBlock


class HVT(ClassifierModel):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=192, depth=12,
                 num_heads=3, mlp_ratio=4.0, num_pools=1, drop_rate=0.0, drop_path_rate=0.0, global_pool='avg'):
        super().__init__()
        self.num_classes = num_classes
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        # pooling before blocks at M evenly spaced points, splitting the depth into M + 1 stages
        self.pool_at = {round(depth * (i + 1) / (num_pools + 1)) for i in range(num_pools)}
        self.pool = nn.MaxPool1d(3, 2)
        lengths, n = [], self.grid ** 2
        for i in range(depth):
            if i in self.pool_at:
                n = (n - 3) // 2 + 1
                lengths.append(n)
        self.pos_embed = LearnedPositionalEncoding(self.grid ** 2, embed_dim)
        self.stage_pos_embeds = nn.ModuleList(LearnedPositionalEncoding(n, embed_dim) for n in lengths)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, num_heads, mlp_ratio, drop_path=p) for p in dpr)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = self.head_hidden_size = embed_dim
        self.global_pool = global_pool
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()

    def reset_classifier(self, num_classes, global_pool=None):
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def get_classifier(self):
        return self.head

    def _pos(self, x, h, w):
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed(x)
        return x + resample_abs_pos_embed(self.pos_embed.pos, (h, w), (self.grid, self.grid), num_prefix_tokens=0)

    def _pool(self, x):  # (B, N, D): max over neighbouring tokens, per channel
        return self.pool(x.transpose(1, 2)).transpose(1, 2)

    def forward_features(self, x):
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        x = self.pos_drop(self._pos(x.flatten(2).transpose(1, 2), h, w))
        stage = 0
        for i, block in enumerate(self.blocks):
            if i in self.pool_at:
                x = self.stage_pos_embeds[stage](self._pool(x))  # (a shorter sequence uses the first positions)
                stage += 1
            x = block(x)
        return self.norm(x)

    def forward_head(self, x, pre_logits=False):
        x = self.head_drop(x.mean(dim=1))
        return x if pre_logits else self.head(x)


MODEL_CFGS = {  # HVT-Ti-1 / HVT-S-1 / HVT-S-4 of the paper; small images use 4x4 patches, 3 poolings
    'hvt_tiny_1_patch16_224': dict(embed_dim=192, num_heads=3, num_pools=1),
    'hvt_small_1_patch16_224': dict(embed_dim=384, num_heads=6, num_pools=1),
    'hvt_small_4_patch16_224': dict(embed_dim=384, num_heads=6, num_pools=4),
    'hvt_tiny_patch4_32': dict(img_size=32, patch_size=4, embed_dim=192, num_heads=3, num_pools=3),
    'hvt_small_patch4_32': dict(img_size=32, patch_size=4, embed_dim=384, num_heads=6, num_pools=3),
}

default_cfgs = generate_default_cfgs({
    name: (small_cfg if name.endswith('_32') else cfg)(first_conv='patch_embed', classifier='head')
    for name in MODEL_CFGS
})


_create = variant_creator(HVT, MODEL_CFGS)


@register_model
def hvt_tiny_1_patch16_224(pretrained=False, **kwargs):
    return _create('hvt_tiny_1_patch16_224', pretrained, **kwargs)


@register_model
def hvt_small_1_patch16_224(pretrained=False, **kwargs):
    return _create('hvt_small_1_patch16_224', pretrained, **kwargs)


@register_model
def hvt_small_4_patch16_224(pretrained=False, **kwargs):
    return _create('hvt_small_4_patch16_224', pretrained, **kwargs)


@register_model
def hvt_tiny_patch4_32(pretrained=False, **kwargs):
    return _create('hvt_tiny_patch4_32', pretrained, **kwargs)


@register_model
def hvt_small_patch4_32(pretrained=False, **kwargs):
    return _create('hvt_small_patch4_32', pretrained, **kwargs)
