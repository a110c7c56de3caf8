"""The lecture's attention blocks, on torch's fused `F.scaled_dot_product_attention`.

Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V; multi-head attention runs h of these in parallel
on learned projections and mixes the concatenated heads with W^O. Self-attention is permutation
invariant, so order enters through positional encodings (sinusoidal or learned) added to the tokens.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import DropPath, Mlp


def causal_mask(n, device=None):
    """Boolean (n, n) mask, True where attention is allowed: token i sees tokens 0..i only."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def scaled_dot_product_attention(q, k, v, mask=None, causal=False, dropout_p=0.0):
    """softmax(q k^T / sqrt(d)) v over the last two dims; `mask` is boolean (True = attend)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)


class MultiHeadAttention(nn.Module):
    """Multi-head attention: self-attention by default, cross-attention when `context` is given."""

    def __init__(self, dim, num_heads=8, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        assert dim % num_heads == 0, 'dim must be divisible by num_heads'
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)  # W^O
        self.proj_drop = nn.Dropout(proj_drop)

    def _split_heads(self, x):  # (B, N, D) -> (B, h, N, D / h)
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, x, context=None, mask=None, causal=False):
        context = x if context is None else context
        q = self._split_heads(self.q(x))
        k, v = map(self._split_heads, self.kv(context).chunk(2, dim=-1))
        drop = self.attn_drop if self.training else 0.0
        out = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, dropout_p=drop)
        return self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))


def sinusoidal_encoding(n, dim):
    """P[i, 2j] = sin(i / 10000^(2j/d)), P[i, 2j+1] = cos(i / 10000^(2j/d)), shape (n, dim)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    pe = torch.zeros(n, dim)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq)[:, : dim // 2]
    return pe


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed encoding of the original Transformer, added to (B, N, D) tokens; any N works."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return x + sinusoidal_encoding(x.shape[1], self.dim).to(x)


class LearnedPositionalEncoding(nn.Module):
    """One learned vector per position (a plain nn.Parameter), as in ViT."""

    def __init__(self, num_positions, dim):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, num_positions, dim) * 0.02)

    def forward(self, x):
        return x + self.pos[:, : x.shape[1]]


class TransformerBlock(nn.Module):
    """Pre-norm encoder block (as ViT): x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, mask=None, causal=False):
        x = x + self.drop_path(self.attn(self.norm1(x), mask=mask, causal=causal))
        return x + self.drop_path(self.mlp(self.norm2(x)))
