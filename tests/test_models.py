"""Model zoo: registration, timm API, parameter counts against references, training behaviours."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import models  # noqa: F401  (registers the zoo)
from models.attention import (MultiHeadAttention, SinusoidalPositionalEncoding, causal_mask,
                              scaled_dot_product_attention, sinusoidal_encoding)


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
}

APPROX_CIFAR_PARAMS = {  # (reference, relative tolerance): the papers give rounded counts
    'preact_resnet164': (1.7e6, 0.02),
    'resnext29_8x64d': (34.4e6, 0.01),
}


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
    'resnet152_sd': 224,
    'hvt_tiny_1_patch16_224': 224,
    'hvt_small_4_patch16_224': 224,
}


@pytest.mark.parametrize('name,size', IMAGENET_MODELS.items())
def test_imagenet_forward_shape(name, size):
    model = meta_model(name, num_classes=1000).eval()
    x = torch.empty(2, 3, size, size, device='meta')
    assert model(x).shape == (2, 1000)


# ---- timm API on the small variants, Fashion-MNIST (28x28x1) and CIFAR (32x32x3) ----
SMALL_MODELS = [
    'lenet5', 'resnet20', 'plain20', 'resnet110_sd', 'preact_resnet110', 'preact_resnet164', 'wrn40_4',
    'resnext29_8x64d', 'se_resnet20', 'vit_tiny_patch4_32', 'hvt_tiny_patch4_32',
]


@pytest.mark.parametrize('name', SMALL_MODELS)
@pytest.mark.parametrize('size,chans', [(28, 1), (32, 3)])
def test_small_model_timm_api(name, size, chans):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, in_chans=chans).eval()
    x = torch.randn(2, chans, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        assert logits.shape == (2, 10)
        assert torch.allclose(model(x), logits)
        assert pre.shape == (2, model.num_features) or pre.shape == (2, model.head_hidden_size)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
        assert torch.isfinite(model(x)).all()


def test_small_model_trains_one_step():
    model = timm.create_model('resnet20', num_classes=10, in_chans=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


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
    x = torch.randn(4, 64, 8, 8).abs()
    calls = []
    block.branch.register_forward_hook(lambda m, i, o: calls.append(o.detach()))
    block.train()
    torch.manual_seed(0)
    outs = [block(x) for _ in range(200)]
    dropped = [torch.allclose(o, F.relu(x)) for o in outs]
    assert 60 < sum(dropped) < 140  # about half the mini-batches skip the branch
    assert len(calls) == 200 - sum(dropped)  # a dropped branch is not even computed
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
