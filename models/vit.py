"""Vision Transformer (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words").

ImageNet scale is timm's faithful `vision_transformer`: vit_tiny/small/base/large_patch16_224 and
vit_huge_patch14_224 (ViT-B/16 = 86,567,656 parameters). Registered here: the same encoders on
32x32 images with 4x4 patches (an 8x8 grid), for CIFAR and Fashion-MNIST. The position embedding
is resampled for other grids (28 px -> 7x7); `patch_size`, `img_size` and the rest pass through.
"""
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ._common import create, small_cfg

SIZES = {  # embed_dim, depth, num_heads (ViT Table 1; Tiny and Small from DeiT)
    'tiny': (192, 12, 3),
    'small': (384, 12, 6),
    'base': (768, 12, 12),
}

default_cfgs = generate_default_cfgs({
    f'vit_{size}_patch4_32': small_cfg(first_conv='patch_embed.proj', classifier='head') for size in SIZES
})


def _create(size, pretrained=False, **kwargs):
    dim, depth, heads = SIZES[size]
    args = dict(img_size=32, patch_size=4, embed_dim=dim, depth=depth, num_heads=heads, dynamic_img_size=True)
    # timm's checkpoint filter resamples a weights file's position embeddings to this grid.
    return create(VisionTransformer, f'vit_{size}_patch4_32', pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                  **{**args, **kwargs})


@register_model
def vit_tiny_patch4_32(pretrained=False, **kwargs):
    return _create('tiny', pretrained, **kwargs)


@register_model
def vit_small_patch4_32(pretrained=False, **kwargs):
    return _create('small', pretrained, **kwargs)


@register_model
def vit_base_patch4_32(pretrained=False, **kwargs):
    return _create('base', pretrained, **kwargs)
