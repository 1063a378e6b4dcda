"""Small attention modules for the pass tests, each with a switch to the reference op.

Every module here computes its attention in one of the ways the passes must recognise and, when
``module.reference`` is set to a dict of Delta Attention parameters, computes the same attention
with :func:`delta_attention_reference` on the un-repeated K/V instead. That second path is the
oracle for "the converted program equals the model with the reference op substituted"; it is
written here, independently of the passes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from delta_opt.ops import delta_attention_reference


class HandAttention(nn.Module):
    """Self-attention written out as products and a softmax, in a chosen spelling.

    Args:
        mask: ``none`` (bidirectional), ``buffer`` (additive causal mask sliced from a buffer),
            ``masked_fill`` / ``where`` (causal, from ``triu``/``tril`` of ones), ``alibi``
            (additive per-head linear bias plus the causal -inf: a mask that is not plainly causal),
            ``window`` (causal sliding window of ``window`` keys, built from ``arange``: causal at
            lengths up to ``window``, not beyond).
        gqa: how K/V heads are repeated: ``expand`` (transformers' repeat_kv) or ``repeat_interleave``.
        scale: ``after`` (scores * s), ``div`` (scores / sqrt(d)), ``q`` (q * s first), ``split``
            (q and k each * sqrt(s)), ``after_mask`` (mask first, then * s).
        product: ``matmul``, ``einsum`` or ``bmm`` (3-D [B*H, N, D] views).
        kt: ``transpose`` or ``permute`` for k^T.
        softmax: ``softmax``, ``upcast`` (fp32 softmax, cast back) or ``safe`` (``aten._safe_softmax``).
    """

    def __init__(
        self,
        dim: int = 32,
        heads: int = 4,
        kv_heads: int = 2,
        *,
        mask: str = "buffer",
        gqa: str = "expand",
        scale: str = "after",
        product: str = "matmul",
        kt: str = "transpose",
        softmax: str = "softmax",
        max_len: int = 64,
        window: int = 100,
    ):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.window = heads, kv_heads, dim // heads, window
        self.mask, self.gqa, self.scale, self.product, self.kt, self.softmax = mask, gqa, scale, product, kt, softmax
        self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, dim, bias=False)
        self.register_buffer("causal_bias", torch.full((max_len, max_len), float("-inf")).triu(1))
        self.register_buffer("slopes", 2.0 ** -torch.arange(1, heads + 1, dtype=torch.float32))
        self.reference: dict[str, Any] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.reference is not None:
            causal = self.mask in ("buffer", "masked_fill", "where", "window")
            out = delta_attention_reference(
                q, k, v, self._reference_mask(n), causal=causal, scale=self.head_dim**-0.5, **self.reference
            )
        else:
            out = self._attend(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))

    def _alibi(self, n: int) -> torch.Tensor:
        pos = torch.arange(n, device=self.slopes.device)
        distance = (pos.view(1, -1) - pos.view(-1, 1)).abs().to(self.slopes.dtype)
        return -self.slopes.view(-1, 1, 1) * distance + self.causal_bias[:n, :n]  # [H, N, N]

    def _window_mask(self, n: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(n, device=device)
        distance = pos.view(-1, 1) - pos.view(1, -1)
        return (distance >= 0) & (distance < self.window)

    def _reference_mask(self, n: int) -> torch.Tensor | None:
        if self.mask == "window":
            return self._window_mask(n, self.slopes.device)
        if self.mask != "alibi":
            return None
        mask = self._alibi(n).unsqueeze(0)
        return mask * self.head_dim**-0.5 if self.scale == "after_mask" else mask

    def _repeat(self, t: torch.Tensor) -> torch.Tensor:
        g = self.heads // self.kv_heads
        if g == 1:
            return t
        if self.gqa == "repeat_interleave":
            return t.repeat_interleave(g, dim=1)
        b, h, n, d = t.shape
        return t[:, :, None, :, :].expand(b, h, g, n, d).reshape(b, h * g, n, d)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, n, d = q.shape
        k, v = self._repeat(k), self._repeat(v)
        s = d**-0.5
        if self.scale == "q":
            q = q * s
        elif self.scale == "split":
            q, k = q * math.sqrt(s), k * math.sqrt(s)
        kt = k.transpose(-1, -2) if self.kt == "transpose" else k.permute(0, 1, 3, 2)
        if self.product == "einsum":
            scores = torch.einsum("bhqd,bhkd->bhqk", q, k)
        elif self.product == "bmm":
            scores = torch.bmm(q.reshape(b * h, n, d), kt.reshape(b * h, d, n)).view(b, h, n, n)
        else:
            scores = q @ kt
        if self.scale == "after":
            scores = scores * s
        elif self.scale == "div":
            scores = scores / math.sqrt(d)
        scores = self._apply_mask(scores, n)
        if self.scale == "after_mask":
            scores = scores * s
        if self.softmax == "upcast":
            weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        elif self.softmax == "safe":
            weights = torch.ops.aten._safe_softmax(scores, -1)
        else:
            weights = F.softmax(scores, dim=-1)
        weights = F.dropout(weights, p=0.1, training=self.training)
        if self.product == "einsum":
            return torch.einsum("bhqk,bhkd->bhqd", weights, v)
        if self.product == "bmm":
            return torch.bmm(weights.reshape(b * h, n, n), v.reshape(b * h, n, d)).view(b, h, n, d)
        return weights @ v

    def _apply_mask(self, scores: torch.Tensor, n: int) -> torch.Tensor:
        if self.mask == "buffer":
            return scores + self.causal_bias[:n, :n]
        if self.mask == "masked_fill":
            future = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
            return scores.masked_fill(future, float("-inf"))
        if self.mask == "where":
            past = torch.ones(n, n, dtype=torch.bool, device=scores.device).tril()
            return torch.where(past, scores, float("-inf"))
        if self.mask == "alibi":
            return scores + self._alibi(n)
        if self.mask == "window":
            return scores.masked_fill(~self._window_mask(n, scores.device), float("-inf"))
        return scores


class SdpaAttention(nn.Module):
    """Self-attention through SDPA or one of its backend overloads.

    Args:
        form: ``sdpa``, ``flash_cpu``, ``efficient``, ``flash``, ``cudnn`` (the last three are
            CUDA kernels: exportable on the CPU, runnable only once converted).
        gqa: ``enable_gqa`` (K/V handed over un-repeated), ``expand`` or ``repeat_interleave``.
        mask: ``causal`` (is_causal), ``bool`` (a tril mask), ``additive`` (a random bias from a
            buffer), ``none``.
        scale: SDPA's ``scale`` argument (None = 1/sqrt(D)).
    """

    def __init__(self, dim=32, heads=4, kv_heads=2, *, form="sdpa", gqa="enable_gqa", mask="causal", scale=None, max_len=64):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.form, self.gqa, self.mask, self.scale = form, gqa, mask, scale
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim)
        self.out = nn.Linear(dim, dim)
        self.register_buffer("bias", torch.randn(1, heads, max_len, max_len, generator=torch.Generator().manual_seed(3)))
        self.reference: dict[str, Any] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        d = self.head_dim
        q, k, v = self.qkv(x).split([self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
        q = q.view(b, n, self.heads, d).transpose(1, 2)
        k = k.view(b, n, self.kv_heads, d).transpose(1, 2)
        v = v.view(b, n, self.kv_heads, d).transpose(1, 2)
        mask = self._mask(n, x.device)
        causal = self.mask == "causal"
        if self.reference is not None:
            out = delta_attention_reference(q, k, v, mask, causal=causal, scale=self.scale, **self.reference)
        else:
            out = self._sdpa(q, k, v, mask, causal)
        return self.out(out.transpose(1, 2).reshape(b, n, -1))

    def _mask(self, n: int, device: torch.device) -> torch.Tensor | None:
        if self.mask == "bool":
            return torch.ones(n, n, dtype=torch.bool, device=device).tril()
        if self.mask == "additive":
            return self.bias[:, :, :n, :n]
        return None

    def _sdpa(self, q, k, v, mask, causal):
        g = self.heads // self.kv_heads
        if self.gqa == "expand" and g > 1:
            b, h, n, d = k.shape
            k = k[:, :, None].expand(b, h, g, n, d).reshape(b, h * g, n, d)
            v = v[:, :, None].expand(b, h, g, n, d).reshape(b, h * g, n, d)
        elif self.gqa == "repeat_interleave":
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        aten = torch.ops.aten
        if self.form == "sdpa":
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale, enable_gqa=self.gqa == "enable_gqa"
            )
        if self.form == "flash_cpu":
            return aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, attn_mask=mask, scale=self.scale)[0]
        if self.form == "efficient":
            return aten._scaled_dot_product_efficient_attention(q, k, v, mask, False, 0.0, causal, scale=self.scale)[0]
        if self.form == "flash":
            return aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=self.scale)[0]
        if self.form == "cudnn":
            return aten._scaled_dot_product_cudnn_attention(q, k, v, mask, False, 0.0, causal, False, scale=self.scale)[0]
        raise ValueError(self.form)


class Block(nn.Module):
    """Pre-norm transformer block around an attention module."""

    def __init__(self, attn: nn.Module, dim: int = 32):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = attn
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Stack(nn.Module):
    """``layers`` blocks, each around a fresh attention module from ``make``."""

    def __init__(self, make, layers: int = 2, dim: int = 32):
        super().__init__()
        self.layers = nn.ModuleList(Block(make(), dim) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ClassifierWithRouter(nn.Module):
    """One attention block, an MoE-style router softmax, and a classifier-head softmax."""

    def __init__(self, dim: int = 32, experts: int = 4, classes: int = 5):
        super().__init__()
        self.block = Block(HandAttention(dim, 4, 4, mask="none"), dim)
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(nn.Linear(dim, dim) for _ in range(experts))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        gate = torch.softmax(self.router(x), dim=-1)  # [B, N, E]
        top, idx = gate.topk(2, dim=-1)
        mixed = torch.stack([e(x) for e in self.experts], dim=-2)  # [B, N, E, D]
        chosen = mixed.gather(-2, idx.unsqueeze(-1).expand(*idx.shape, x.shape[-1]))
        x = x + (top.unsqueeze(-1) * chosen).sum(-2)
        return torch.softmax(self.head(x.mean(1)), dim=-1)


class CrossAttention(nn.Module):
    """Queries from x, keys/values from another input (SDPA)."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.q_proj, self.kv_proj, self.o_proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        m = memory.shape[1]
        q = self.q_proj(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv_proj(memory).view(b, m, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, c))


class DecoderWithCrossAttention(nn.Module):
    """Causal self-attention (convertible) then cross-attention over ``memory`` (must stay dense)."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.self_attn = HandAttention(dim, 4, 4, mask="buffer")
        self.cross_attn = CrossAttention(dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm(x))
        return x + self.cross_attn(x, memory)


def set_reference(model: nn.Module, params: dict[str, Any] | None) -> nn.Module:
    """Switch every hand-written attention in ``model`` to the reference op (None: back to the model's own)."""
    for module in model.modules():
        if isinstance(module, (HandAttention, SdpaAttention)):
            module.reference = params
    return model
