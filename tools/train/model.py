"""Llama-style decoder: RoPE (HF rotate_half layout), RMSNorm, SwiGLU, grouped-query attention,
tied embeddings, no biases. One forward serves training (no cache) and the ONNX export (Optimum
text-generation-with-past: attention_mask over past+new slots, explicit position_ids, KV in/out)."""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int = 32
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    dropout: float = 0.0

    def to_dict(self):
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.h = cfg.num_attention_heads
        self.kvh = cfg.num_key_value_heads
        self.hd = cfg.head_dim
        self.rep = self.h // self.kvh
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.h * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.kvh * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.kvh * self.hd, bias=False)
        self.o_proj = nn.Linear(self.h * self.hd, d, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin, mask, past_k=None, past_v=None):
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, self.h, self.hd).transpose(1, 2)  # B,H,S,hd
        k = self.k_proj(x).view(B, S, self.kvh, self.hd).transpose(1, 2)  # B,KVH,S,hd
        v = self.v_proj(x).view(B, S, self.kvh, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        present = (k, v)
        # grouped-query attention without repeating K/V: queries grouped as [B, KVH, rep*S, hd]
        qg = q.reshape(B, self.kvh, self.rep * S, self.hd)
        if mask.dtype == torch.bool:
            # export / inference path: boolean mask [B or 1, 1, 1, S, T], masked scores set to a large
            # finite negative value (never -inf, so a fully masked padding row gives no NaN)
            scores = torch.matmul(qg, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.hd))  # B,KVH,rep*S,T
            scores = scores.view(B, self.kvh, self.rep, S, -1)
            scores = torch.where(mask, scores, torch.tensor(torch.finfo(torch.float32).min, dtype=scores.dtype))
        else:
            # training fast path: additive causal bias [S, T] fused into the batched matmul
            T = k.shape[2]
            bias = mask.view(1, S, T).expand(B * self.kvh * self.rep, S, T)
            scores = torch.baddbmm(bias, qg.reshape(B * self.kvh * self.rep, S, self.hd),
                                   k.unsqueeze(2).expand(B, self.kvh, self.rep, T, self.hd)
                                   .reshape(B * self.kvh * self.rep, T, self.hd).transpose(1, 2),
                                   alpha=1.0 / math.sqrt(self.hd))
            scores = scores.view(B, self.kvh, self.rep, S, T)
        probs = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            probs = F.dropout(probs, self.dropout)
        out = torch.matmul(probs.view(B, self.kvh, self.rep * S, -1), v)  # B,KVH,rep*S,hd
        out = out.view(B, self.h, S, self.hd).transpose(1, 2).reshape(B, S, self.h * self.hd)
        return self.o_proj(out), present


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin, mask, past_k=None, past_v=None):
        a, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, past_k, past_v)
        if self.training and self.dropout > 0:
            a = F.dropout(a, self.dropout)
        x = x + a
        m = self.mlp(self.post_attention_layernorm(x))
        if self.training and self.dropout > 0:
            m = F.dropout(m, self.dropout)
        return x + m, present


class LlamaLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.apply(self._init)
        # GPT-2 style scaled init of the residual output projections
        for name, p in self.named_parameters():
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.num_hidden_layers))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids, attention_mask=None, position_ids=None, past=None):
        """input_ids [B,S]; attention_mask [B,past+S] (1 real, 0 pad) or None (all real);
        position_ids [B,S] or None (past+arange); past: list of (k, v) [B,KVH,P,hd] or None.
        Returns logits [B,S,V] and the list of present (k, v) [B,KVH,P+S,hd]."""
        B, S = input_ids.shape
        P = past[0][0].shape[2] if past is not None else 0
        T = P + S
        if position_ids is None:
            position_ids = (torch.arange(S, dtype=torch.long) + P).unsqueeze(0).expand(B, S)
        freqs = position_ids.to(torch.float32).unsqueeze(-1) * self.inv_freq  # B,S,hd/2
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # B,1,S,hd
        cos, sin = emb.cos(), emb.sin()
        # query s sits at key slot P+s; it sees slot t iff t <= P+s and attention_mask[b,t] == 1
        q_slot = torch.arange(S, dtype=torch.long).unsqueeze(1) + P  # S,1
        k_slot = torch.arange(T, dtype=torch.long).unsqueeze(0)  # 1,T
        if attention_mask is None and past is None and self.training:
            # training: causal additive bias (same result as the boolean path below)
            allowed = torch.zeros(S, T).masked_fill(k_slot > q_slot, torch.finfo(torch.float32).min)
        else:
            allowed = (k_slot <= q_slot).view(1, 1, 1, S, T)
            if attention_mask is not None:
                allowed = allowed & (attention_mask == 1).view(B, 1, 1, 1, T)
        x = self.embed_tokens(input_ids)
        presents = []
        for i, layer in enumerate(self.layers):
            pk, pv = past[i] if past is not None else (None, None)
            x, present = layer(x, cos, sin, allowed, pk, pv)
            presents.append(present)
        x = self.norm(x)
        logits = F.linear(x, self.embed_tokens.weight)
        return logits, presents
