"""Model zoo: registration, timm API, parameter counts against references, training behaviours."""
import math
import random

import pytest
import timm
import torch
import torch.nn.functional as F

import models  # noqa: F401  (registers the zoo)
from models import FAMILIES, family_of, small_image_models
from models.attention import (
    MultiHeadAttention,
    SinusoidalPositionalEncoding,
    causal_mask,
    scaled_dot_product_attention,
    sinusoidal_encoding,
)
from models.densenet import DenseNet
from models.googlenet import GoogLeNetOutputs, googlenet_loss
from models.vgg import VGG


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def meta_model(name, **kwargs):
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


# ---- exact parameter counts (ImageNet heads of 1000 classes unless a count says otherwise) ----
REFERENCE_PARAMS = {
    # torchvision / timm reference implementations
    'vgg16': 138_357_544,
    'resnet50': 25_557_032,
    'vit_base_patch16_224': 86_567_656,
    'densenet121': 7_978_856,
    'squeezenet1_0': 1_248_424,  # torchvision
    'squeezenet1_1': 1_235_496,
    'alexnet2012': 62_378_344,  # 2012 layout by hand: convs 3.75M + FC 58.6M
    'zfnet': 62_357_608,  # AlexNet's count with a 7x7x3x96 first conv instead of 11x11x3x96
    'vit_tiny_patch16_224': 5_717_416,
    'vit_small_patch16_224': 22_050_664,
    'vit_large_patch16_224': 304_326_632,
    'inception_v4': 42_679_816,
    'inception_resnet_v2': 55_843_464,
    'seresnet50': 28_088_024,
    'resnext50_32x4d': 25_028_904,
    # same layout as timm's resnet152: stochastic depth adds no parameters
    'resnet152_sd': 60_192_808,
}

CIFAR_PARAMS = {  # 10 classes; by hand from the papers' layouts (He et al. Table 6: 0.27M ... 1.7M)
    'lenet5': 61_706,
    'resnet20': 269_722,
    'resnet32': 464_154,
    'resnet44': 658_586,
    'resnet56': 853_018,
    'resnet110': 1_727_962,
    'plain20': 269_722,  # option A shortcuts have no parameters
    'wrn28_10': 36_479_194,  # 36.5M in Zagoruyko & Komodakis
    'wrn40_4': 8_949_210,  # 8.9M
    'squeezenet1_1_cifar': 727_626,
}

APPROX_CIFAR_PARAMS = {  # (reference, relative tolerance): the papers give rounded counts
    'preact_resnet164': (1.7e6, 0.02),
    'resnext29_8x64d': (34.4e6, 0.01),
    'densenet_bc_100_12': (0.8e6, 0.05),  # Huang et al. Table 2
    'densenet_bc_250_24': (15.3e6, 0.01),
    'densenet_bc_190_40': (25.6e6, 0.01),
}


def test_alexnet_two_gpu_split():
    # conv2, conv4, conv5 only see their own GPU's half: the famous 60,965,224
    assert n_params(meta_model('alexnet2012', groups=2)) == 60_965_224


def test_own_classes_match_references_at_imagenet_layout():
    with torch.device('meta'):
        assert n_params(VGG(16, pool_size=7, fc_dim=4096, ceil_mode=False)) == 138_357_544
        assert n_params(VGG(19, batch_norm=True, pool_size=7, fc_dim=4096, ceil_mode=False)) == 143_678_248
        assert n_params(DenseNet((6, 12, 24, 16), 32, stem='imagenet')) == 7_978_856


def test_googlenet_params_match_paper_table():
    # Table 1 of Szegedy et al. lists weights (no biases) per layer, K = 1024, 6,797.7K in total;
    # a few of its rows disagree with its own filter numbers (4c, 5a), hence the 1% tolerance
    model = meta_model('googlenet_v1', aux_logits=False)

    def weights(module):
        return sum(p.numel() for name, p in module.named_parameters() if name.endswith('weight'))

    assert weights(model) == pytest.approx(6_797.7 * 1024, rel=0.01)
    # inception 3a from its filter numbers: 192x64 + 192x96 + 96x128x9 + 192x16 + 16x32x25 + 192x32
    assert weights(model.blocks[0]) == 163_328
    naive = meta_model('googlenet_v1', aux_logits=False, inception='naive')
    assert n_params(naive) > 10 * n_params(model)  # why the 1x1 reductions exist


@pytest.mark.parametrize('name,expected', REFERENCE_PARAMS.items())
def test_reference_param_counts(name, expected):
    assert n_params(meta_model(name)) == expected


@pytest.mark.parametrize('name,expected', CIFAR_PARAMS.items())
def test_cifar_param_counts(name, expected):
    assert n_params(meta_model(name, num_classes=10)) == expected


@pytest.mark.parametrize('name,ref', APPROX_CIFAR_PARAMS.items())
def test_approx_param_counts(name, ref):
    expected, tol = ref
    assert n_params(meta_model(name, num_classes=10)) == pytest.approx(expected, rel=tol)


# ---- forward at native ImageNet size, on the meta device (shapes only, no compute) ----
IMAGENET_MODELS = {
    'alexnet2012': 227,
    'zfnet': 224,
    'nin': 224,
    'googlenet_v1': 224,
    'squeezenet1_0': 224,
    'squeezenet1_1': 224,
    'fractalnet34': 224,
    'resnet152_sd': 224,
    'vit_base_patch16_224': 224,
    'inception_v4': 299,
    'hvt_tiny_1_patch16_224': 224,
    'hvt_small_4_patch16_224': 224,
}


@pytest.mark.parametrize('name,size', IMAGENET_MODELS.items())
def test_imagenet_forward_shape(name, size):
    model = meta_model(name, num_classes=1000).eval()
    x = torch.empty(2, 3, size, size, device='meta')
    assert model(x).shape == (2, 1000)


# ---- timm API on the small variants, Fashion-MNIST (28x28x1) and CIFAR (32x32x3) ----
# one cheap representative per distinct code path (the rest share their class and layouts)
SMALL_MODELS = [
    'lenet5', 'alexnet2012_cifar', 'zfnet_cifar', 'vgg11_bn_cifar', 'nin_cifar', 'googlenet_v1_cifar', 'resnet20',
    'plain20', 'resnet110_sd', 'preact_resnet110', 'preact_resnet164', 'wrn40_4', 'resnext29_8x64d', 'se_resnet20',
    'fractalnet20_cifar', 'densenet_bc_100_12', 'squeezenet1_0_cifar', 'squeezenet1_1_cifar',
    'vit_tiny_patch4_32', 'hvt_tiny_patch4_32', 'inception_v4_cifar', 'inception_resnet_v2_cifar',
]


@pytest.mark.parametrize('name', SMALL_MODELS)
@pytest.mark.parametrize('size,chans', [(28, 1), (32, 3)])
def test_small_model_timm_api(name, size, chans):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, in_chans=chans).eval()
    x = torch.randn(1, chans, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        assert logits.shape == (1, 10) and torch.isfinite(logits).all()
        assert torch.allclose(model(x), logits, atol=1e-5)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        assert model.num_features == feats.shape[1 if feats.ndim == 4 else -1]
        model.reset_classifier(5)
        assert model.forward_head(feats).shape == (1, 5)
        assert torch.allclose(model.forward_head(feats, pre_logits=True), pre)


def test_small_model_trains_one_step():
    model = timm.create_model('resnet20', num_classes=10, in_chans=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    before = [p.detach().clone() for p in model.parameters()]
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))



@pytest.mark.parametrize('name', ['inception_v4', 'inception_resnet_v2'])
def test_small_inception_is_timms_network_with_a_stride_one_stem(name):
    small, full = meta_model(f'{name}_cifar', num_classes=10), meta_model(name, num_classes=10)
    # the same layers with the same weights' shapes: only strides, padding and two poolings differ
    assert [tuple(p.shape) for p in small.parameters()] == [tuple(p.shape) for p in full.parameters()]
    assert small.forward_features(torch.empty(1, 3, 28, 28, device='meta')).shape == (1, 1536, 5, 5)
    assert full.forward_features(torch.empty(1, 3, 299, 299, device='meta')).shape == (1, 1536, 8, 8)
    assert [info['reduction'] for info in small.feature_info] == [1, 1, 1, 2, 4]


@pytest.mark.parametrize('name', ['alexnet2012_cifar', 'zfnet_cifar', 'vgg19_cifar', 'nin_cifar', 'googlenet_v1_cifar',
                                  'squeezenet1_0_cifar'])
def test_families_without_batch_norm_keep_the_signal_at_init(name):
    # He init: the features reaching the classifier keep the input's scale (PyTorch's default init leaves
    # about 1/50 of it after 8-19 conv + ReLU layers, and these nets then do not train)
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        features = model.forward_head(model.forward_features(torch.randn(8, 1, 28, 28)), pre_logits=True)
    assert features.pow(2).mean().sqrt() > 0.3

def test_lenet_pads_28_to_32():
    model = timm.create_model('lenet5').eval()
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), model(F.pad(x, (2, 2, 2, 2))))


def test_cifar_resnet_depth_and_option_a():
    model = timm.create_model('resnet56', num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == 56  # 55 convs + the classifier, no projection convs with option A


def test_plain_has_no_shortcut():
    torch.manual_seed(0)
    plain = timm.create_model('plain20', num_classes=10).eval()
    res = timm.create_model('resnet20', num_classes=10).eval()
    res.load_state_dict(plain.state_dict())  # same parameters, only the additions differ
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain(x), res(x))
        block = res.stages[0][0]
        for p in block.branch.parameters():
            p.zero_()
        y = F.relu(res.stem(x))
        assert torch.allclose(block(y), y)  # zero branch: the residual block is the identity


# ---- stochastic depth ----
def test_stochastic_depth_survival_linear_to_half():
    model = timm.create_model('resnet110_sd', num_classes=10)
    blocks = [b for stage in model.stages for b in stage]
    probs = [b.survival_prob for b in blocks]
    assert len(probs) == 54
    assert probs[-1] == pytest.approx(0.5)
    assert probs[0] == pytest.approx(1 - 0.5 / 54)
    steps = [a - b for a, b in zip(probs, probs[1:])]
    assert all(s == pytest.approx(0.5 / 54) for s in steps)


def test_stochastic_depth_drops_whole_branch_per_batch_and_scales_at_test():
    model = timm.create_model('resnet110_sd', num_classes=10)
    block = model.stages[2][-1]  # survival 0.5
    x = torch.randn(1, 64, 4, 4).abs()
    calls = []
    block.branch.register_forward_hook(lambda m, i, o: calls.append(o.detach()))
    block.train()
    torch.manual_seed(0)
    with torch.no_grad():
        outs = [block(x) for _ in range(100)]
    dropped = [torch.allclose(o, F.relu(x)) for o in outs]
    assert 25 < sum(dropped) < 75  # about half the mini-batches skip the branch
    assert len(calls) == 100 - sum(dropped)  # a dropped branch is not even computed
    block.eval()
    calls.clear()
    with torch.no_grad():
        out = block(x)
    assert torch.allclose(out, F.relu(0.5 * block.se(calls[0]) + x), atol=1e-6)


# ---- attention module ----
def test_sdpa_matches_lecture_formula_and_causal_mask():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 5, 8).unbind(0)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    assert torch.allclose(scaled_dot_product_attention(q, k, v), scores.softmax(-1) @ v, atol=1e-6)
    masked = scores.masked_fill(~causal_mask(5), float('-inf')).softmax(-1) @ v
    assert torch.allclose(scaled_dot_product_attention(q, k, v, causal=True), masked, atol=1e-6)
    assert torch.allclose(scaled_dot_product_attention(q, k, v, mask=causal_mask(5)), masked, atol=1e-6)


def test_mha_causal_ignores_future_and_matches_torch():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, num_heads=4).eval()
    x = torch.randn(2, 6, 16)
    y = x.clone()
    y[:, 4:] = torch.randn(2, 2, 16)
    assert torch.allclose(mha(x, causal=True)[:, :4], mha(y, causal=True)[:, :4], atol=1e-6)
    assert not torch.allclose(mha(x)[:, :4], mha(y)[:, :4], atol=1e-6)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mha.q.weight, mha.kv.weight]))
        ref.in_proj_bias.copy_(torch.cat([mha.q.bias, mha.kv.bias]))
        ref.out_proj.weight.copy_(mha.proj.weight)
        ref.out_proj.bias.copy_(mha.proj.bias)
    assert torch.allclose(mha(x), ref(x, x, x, need_weights=False)[0], atol=1e-5)


def test_sinusoidal_encoding_formula():
    pe = sinusoidal_encoding(10, 6)
    i, j = 7, 1
    assert pe[i, 2 * j].item() == pytest.approx(math.sin(i / 10000 ** (2 * j / 6)), abs=1e-6)
    assert pe[i, 2 * j + 1].item() == pytest.approx(math.cos(i / 10000 ** (2 * j / 6)), abs=1e-6)
    x = torch.zeros(1, 10, 6)
    assert torch.allclose(SinusoidalPositionalEncoding(6)(x)[0], pe)


# ---- HVT ----
def test_hvt_pools_tokens_without_class_token():
    model = timm.create_model('hvt_tiny_patch4_32', num_classes=10).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, 7, 192)  # 64 patches -> 31 -> 15 -> 7 after three max-poolings
    tiny = timm.create_model('hvt_tiny_1_patch16_224')
    assert not any('cls' in name for name, _ in tiny.named_parameters())
    assert tiny.pool_at == {6}


# ---- GoogLeNet auxiliary classifiers ----
def test_googlenet_aux_heads_in_train_only():
    torch.manual_seed(0)
    model = timm.create_model('googlenet_v1_cifar', num_classes=10, in_chans=1)
    assert model.aux_loss_weight == 0.3
    x, y = torch.randn(2, 1, 16, 16), torch.tensor([1, 2])  # small input: the CIFAR stem does not downsample
    out = model.train()(x)
    assert isinstance(out, GoogLeNetOutputs) and all(o.shape == (2, 10) for o in out)
    loss = googlenet_loss(out, y, model.aux_loss_weight)
    expected = F.cross_entropy(out.logits, y) + 0.3 * (F.cross_entropy(out.aux1, y) + F.cross_entropy(out.aux2, y))
    assert torch.allclose(loss, expected)
    loss.backward()
    assert model.aux[0].fc2.weight.grad is not None  # the aux heads are trained
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
    assert torch.allclose(googlenet_loss(logits, y), F.cross_entropy(logits, y))
    model.reset_classifier(4)
    assert all(o.shape == (2, 4) for o in model.train()(x))
    no_aux = timm.create_model('googlenet_v1_cifar', num_classes=10, aux_logits=False).train()
    assert isinstance(no_aux(torch.randn(2, 3, 16, 16)), torch.Tensor)


# ---- FractalNet drop-path ----
def test_fractal_block_structure():
    model = timm.create_model('fractalnet20_cifar', num_classes=10)
    block = model.blocks[0]
    assert [len(c) for c in block.columns] == [1, 2, 4]
    assert sum(b.depth for b in model.blocks) == 20  # convs on the deepest path
    assert sum(len(c) for c in meta_model('fractalnet40_cifar').blocks[0].columns) == 15


def test_fractalnet_global_drop_path_is_one_column():
    torch.manual_seed(0)
    model = timm.create_model('fractalnet20_cifar', num_classes=10).eval()
    x = torch.randn(1, 3, 8, 8)  # ceil-mode pooling takes 8 px to 1 px as it does 32 px
    with torch.no_grad():
        for col in range(3):
            y = x
            for block, pool in zip(model.blocks, model.pools):
                for unit in block.columns[col]:
                    y = unit(y)
                y = pool(y)
            assert torch.allclose(model.forward_features(x, drop=('global', col)), y)
        full = model.forward_features(x)
        assert not torch.allclose(full, model.forward_features(x, drop=('global', 0)))


def test_fractalnet_local_drop_path_keeps_at_least_one():
    block = timm.create_model('fractalnet20_cifar', num_classes=10).blocks[0]
    outs = [torch.full((1,), float(v)) for v in (1, 2, 3)]
    random.seed(0)
    means = [block._join(outs, ('local', 1.0)).item() for _ in range(30)]  # all dropped: one survives
    assert set(means) <= {1.0, 2.0, 3.0} and len(set(means)) > 1
    assert block._join(outs, ('local', 0.0)).item() == 2.0
    assert block._join(outs, None).item() == 2.0
    random.seed(0)
    kept = [block._join(outs, ('local', 0.15)).item() for _ in range(200)]
    assert sum(m != 2.0 for m in kept) > 20  # some inputs get dropped at p = 0.15


def test_fractalnet_samples_drop_mode_per_batch_in_train_only():
    model = timm.create_model('fractalnet20_cifar', num_classes=10)
    random.seed(0)
    modes = [model.sample_drop_path()[0] for _ in range(400)]
    assert 150 < modes.count('global') < 250
    x = torch.randn(1, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # no drop-path at test time


# ---- catalogue ----
def test_catalogue_names_are_registered():
    names = [m for f in FAMILIES for m in f.imagenet_models + f.small_models]
    assert len(names) == len(set(names))
    assert all(timm.is_model(m) for m in names)
    assert set(small_image_models()) == {m for f in FAMILIES for m in f.small_models}
    assert 'lenet5' in small_image_models() and 'resnet50' not in small_image_models()


def test_catalogue_lecture_numbers():
    from pipeline.spec.reference import catalogue

    # the ILSVRC entries' top-5 errors, each checked against its source (AlexNet's 15.3 is the paper's abstract)
    err = {family_of(row.model): row.number for row in catalogue()['ilsvrc-winners']}
    assert err == {'AlexNet': 15.3, 'ZFNet': 11.7, 'VGG': 7.3, 'GoogLeNet': 6.7, 'ResNet': 3.57, 'SENet': 2.251}


@pytest.mark.parametrize('name,family', [
    ('resnet50', 'ResNet'), ('resnet20', 'ResNet'), ('vit_base_patch16_224', 'ViT'),
    ('vit_base_patch16_224.augreg_in21k', 'ViT'), ('seresnext101_32x4d', 'SENet'), ('resnetv2_50', 'Pre-activation ResNet'),
    ('wide_resnet101_2', 'Wide ResNet'), ('hvt_tiny_patch4_32', 'HVT'), ('efficientnet_b0', 'efficientnet'),
    ('not_a_model', 'other'),
])
def test_family_of(name, family):
    assert family_of(name) == family


@pytest.mark.parametrize('name', sorted(small_image_models()))
def test_every_small_model_builds_for_fashion_mnist(name):
    model = meta_model(name, num_classes=10, in_chans=1).eval()
    assert model(torch.empty(2, 1, 28, 28, device='meta')).shape == (2, 10)
