"""Step 4-6: export the trained model to ONNX (Optimum text-generation-with-past names), store the weights
as float16 initializers followed by Cast to float32, write config.json / generation_config.json, and check
the ONNX file with onnxruntime-node against PyTorch (tools/train/check_onnx.mjs). Fails loudly."""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch

from bpe import ByteBPE
from model import Config, LlamaLM


class OnnxWrapper(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.n = model.cfg.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(self.n)]
        logits, presents = self.model(input_ids, attention_mask, position_ids, past)
        out = [logits]
        for k, v in presents:
            out += [k, v]
        return tuple(out)


def load_model(ckpt_path):
    state = torch.load(ckpt_path, map_location="cpu")
    cfg = Config(**state["config"])
    cfg.dropout = 0.0
    model = LlamaLM(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def round_to_fp16(model):
    """The shipped weights are float16: make the PyTorch reference use exactly those values."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def export_onnx(model, path):
    cfg = model.cfg
    n = cfg.num_hidden_layers
    wrapper = OnnxWrapper(model).eval()
    B, S, P = 2, 3, 4
    ids = torch.randint(0, cfg.vocab_size, (B, S))
    mask = torch.ones(B, P + S, dtype=torch.long)
    pos = torch.arange(P, P + S).unsqueeze(0).expand(B, S).contiguous()
    past = []
    for _ in range(n):
        past += [torch.randn(B, cfg.num_key_value_heads, P, cfg.head_dim),
                 torch.randn(B, cfg.num_key_value_heads, P, cfg.head_dim)]
    in_names = ["input_ids", "attention_mask", "position_ids"]
    out_names = ["logits"]
    dyn = {"input_ids": {0: "batch_size", 1: "sequence_length"},
           "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
           "position_ids": {0: "batch_size", 1: "sequence_length"},
           "logits": {0: "batch_size", 1: "sequence_length"}}
    for i in range(n):
        for kv in ("key", "value"):
            a, b = f"past_key_values.{i}.{kv}", f"present.{i}.{kv}"
            in_names.append(a)
            out_names.append(b)
            dyn[a] = {0: "batch_size", 2: "past_sequence_length"}
            dyn[b] = {0: "batch_size", 2: "total_sequence_length"}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(wrapper, (ids, mask, pos, *past), path, input_names=in_names, output_names=out_names,
                          dynamic_axes=dyn, opset_version=17, do_constant_folding=True)


def weights_to_fp16(path):
    """Float initializers that are exactly representable in float16 (the rounded weights) become float16
    initializers followed by Cast(to=float); a folded transpose of the tied embedding becomes a Transpose
    node. Graph inputs, outputs, KV and all compute stay float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(path)
    g = m.graph
    arrays = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    keep, new_inits, new_nodes = [], [], []
    fp16_names = {}
    for t in g.initializer:
        a = arrays[t.name]
        if a.dtype == np.float32 and a.size >= 256 and np.array_equal(a.astype(np.float16).astype(np.float32), a):
            fp16_names[t.name] = a
        else:
            keep.append(t)
    # de-duplicate transposed copies (tied embeddings: Gather(W) and MatMul(x, W^T))
    transposed = {}
    names = sorted(fp16_names, key=lambda k: (-fp16_names[k].size, k))
    for i, x in enumerate(names):
        for y in names:
            if y == x or y in transposed or x in transposed:
                continue
            ax, ay = fp16_names[x], fp16_names[y]
            if ax.ndim == 2 and ay.ndim == 2 and ax.shape == ay.shape[::-1] and np.array_equal(ax, ay.T):
                transposed[x] = y
    for name, a in fp16_names.items():
        if name in transposed:
            new_nodes.append(helper.make_node("Transpose", [transposed[name]], [name], perm=[1, 0],
                                              name=f"{name}_transpose"))
            continue
        h = numpy_helper.from_array(a.astype(np.float16), name=f"{name}_fp16")
        new_inits.append(h)
        new_nodes.append(helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT,
                                          name=f"{name}_cast"))
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    # Cast nodes first, then the Transposes that read their outputs, then the original graph
    casts = [n for n in new_nodes if n.op_type == "Cast"]
    trans = [n for n in new_nodes if n.op_type == "Transpose"]
    old = list(g.node)
    del g.node[:]
    g.node.extend(casts + trans + old)
    onnx.checker.check_model(m)
    onnx.save(m, path)
    return {"fp16_initializers": len(new_inits), "transposed_copies_removed": len(transposed),
            "fp32_initializers": len(keep)}


def write_configs(model, out, ctx, vocab, chat=False):
    """chat: EOS is <|im_end|> (the end of an assistant turn) and sampling is cooler, for short answers."""
    cfg = model.cfg
    eot, im_end = vocab["<|endoftext|>"], vocab["<|im_end|>"]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": ctx,
        "warmkv_trained_context": ctx,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": cfg.rms_norm_eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": im_end if chat else eot,
        "pad_token_id": eot,
        "torch_dtype": "float32",
        "warmkv_onnx_weights_dtype": "float16",
        "use_cache": True,
    }
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
        fh.write("\n")
    gen = {
        "bos_token_id": eot,
        "eos_token_id": [im_end, eot] if chat else [eot, im_end],
        "pad_token_id": eot,
        "do_sample": True,
        "temperature": 0.3 if chat else 0.8,
        "top_p": 0.9 if chat else 0.95,
        "max_new_tokens": 128,
    }
    with open(os.path.join(out, "generation_config.json"), "w") as fh:
        json.dump(gen, fh, indent=2)
        fh.write("\n")


# ---------------------------------------------------------------- export check against onnxruntime-node

def _past_empty(cfg, B):
    return [(torch.zeros(B, cfg.num_key_value_heads, 0, cfg.head_dim),
             torch.zeros(B, cfg.num_key_value_heads, 0, cfg.head_dim)) for _ in range(cfg.num_hidden_layers)]


class CaseWriter:
    """Writes calls as raw little-endian binaries + a JSON index for check_onnx.mjs."""

    def __init__(self, folder):
        self.folder = folder
        self.n = 0
        os.makedirs(folder, exist_ok=True)

    def arr(self, a, dtype):
        name = f"t{self.n}.bin"
        self.n += 1
        np.ascontiguousarray(a.detach().numpy().astype(dtype)).tofile(os.path.join(self.folder, name))
        return {"file": name, "shape": list(a.shape)}


@torch.no_grad()
def build_check_cases(model, tok, folder, decode_steps=12):
    cfg = model.cfg
    w = CaseWriter(folder)
    cases = []

    def call(ids, mask, pos, past, past_from):
        logits, presents = model(ids, mask, pos, past)
        rec = {"input_ids": w.arr(ids, np.int64), "attention_mask": w.arr(mask, np.int64),
               "position_ids": w.arr(pos, np.int64), "past_from": past_from,
               "logits": w.arr(logits, np.float32), "greedy": logits[:, -1].argmax(-1).tolist()}
        return rec, logits, presents

    prompts = [
        "The jury said it did not find",
        "In American romance, almost nothing rates higher than what the movie men have called \"meeting cute\""
        " -- that is, boy-meets-girl seems more adorable if it doesn't take place in an atmosphere of correct",
        "\"Come on,\" he said. \"Let's",
    ]
    # 1) uncached full sequence (past length 0)
    for pi, text in enumerate(prompts):
        ids = torch.tensor([tok.encode(text)])
        S = ids.shape[1]
        rec, _, _ = call(ids, torch.ones(1, S, dtype=torch.long), torch.arange(S).unsqueeze(0), _past_empty(cfg, 1),
                         "empty")
        cases.append({"name": f"full_uncached_p{pi}", "calls": [rec]})
    # 2) prefill + token-by-token cached greedy decoding, two different prefill (past) lengths,
    #    then the uncached recomputation of the whole sequence for comparison
    for pi in (0, 1):
        ids = torch.tensor([tok.encode(prompts[pi])])
        S = ids.shape[1]
        calls = []
        rec, logits, past = call(ids, torch.ones(1, S, dtype=torch.long), torch.arange(S).unsqueeze(0),
                                 _past_empty(cfg, 1), "empty")
        calls.append(rec)
        cached = [logits[0]]
        seq = ids[0].tolist()
        nxt = int(logits[0, -1].argmax())
        for _ in range(decode_steps):
            seq.append(nxt)
            T = len(seq)
            rec, logits, past = call(torch.tensor([[nxt]]), torch.ones(1, T, dtype=torch.long),
                                     torch.tensor([[T - 1]]), past, "previous")
            calls.append(rec)
            cached.append(logits[0])
            nxt = int(logits[0, -1].argmax())
        # chunked: 4 more tokens at once on top of the cache (sequence_length > 1 with past > 0)
        chunk = tok.encode(" and the")[:4]
        T0 = len(seq)
        seq += chunk
        rec, logits, past = call(torch.tensor([chunk]), torch.ones(1, len(seq), dtype=torch.long),
                                 torch.arange(T0, len(seq)).unsqueeze(0), past, "previous")
        calls.append(rec)
        cached.append(logits[0])
        full = torch.tensor([seq])
        logits_full, _ = model(full, torch.ones_like(full), torch.arange(len(seq)).unsqueeze(0), _past_empty(cfg, 1))
        diff = float((logits_full[0] - torch.cat(cached)).abs().max())
        cases.append({"name": f"cached_decode_prefill{S}", "calls": calls, "torch_cached_vs_full_max_diff": diff})
    # 3) batch of two rows, the shorter one LEFT-padded, then batched greedy decoding
    a = tok.encode(prompts[0])
    b = tok.encode(prompts[2] + " go home now, before the")
    L = max(len(a), len(b))
    pad = 0
    rows = [[pad] * (L - len(r)) + r for r in (a, b)]
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in (a, b)])
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    calls = []
    rec, logits, past = call(torch.tensor(rows), mask, pos, _past_empty(cfg, 2), "empty")
    calls.append(rec)
    # reference: each row alone, unpadded
    solo = []
    for r in (a, b):
        lg, _ = model(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long), torch.arange(len(r)).unsqueeze(0),
                      _past_empty(cfg, 1))
        solo.append(lg[0])
    pad_vs_solo = max(float((logits[i, L - len(r):] - solo[i]).abs().max()) for i, r in enumerate((a, b)))
    nxt = logits[:, -1].argmax(-1)
    for _ in range(decode_steps):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        pos = pos[:, -1:] + 1
        rec, logits, past = call(nxt.view(2, 1), mask, pos, past, "previous")
        calls.append(rec)
        nxt = logits[:, -1].argmax(-1)
    cases.append({"name": "batch2_left_padded", "calls": calls, "torch_padded_vs_unpadded_max_diff": pad_vs_solo})
    with open(os.path.join(folder, "cases.json"), "w") as fh:
        json.dump({"num_layers": cfg.num_hidden_layers, "num_kv_heads": cfg.num_key_value_heads,
                   "head_dim": cfg.head_dim, "cases": cases}, fh)
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/warmkv-train")
    ap.add_argument("--ckpt", default="ckpt_last.pt")
    ap.add_argument("--out", default="models/warmkv-brown")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--ctx", type=int, default=0, help="trained context; 0: the checkpoint's training ctx")
    ap.add_argument("--chat", action="store_true", help="EOS <|im_end|> and chat sampling defaults")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    model, state = load_model(os.path.join(args.work, args.ckpt))
    ctx = args.ctx or state["args"]["ctx"]
    round_to_fp16(model)
    tok = ByteBPE.from_tokenizer_json(os.path.join(args.out, "tokenizer.json"))
    onnx_path = os.path.join(args.out, "onnx", "model.onnx")
    export_onnx(model, onnx_path)
    info = weights_to_fp16(onnx_path)
    info["onnx_bytes"] = os.path.getsize(onnx_path)
    print("export:", json.dumps(info), flush=True)
    write_configs(model, args.out, ctx, tok.vocab, chat=args.chat)

    folder = os.path.join(args.work, "onnx_check")
    cases = build_check_cases(model, tok, folder)
    for c in cases:
        for k in ("torch_cached_vs_full_max_diff", "torch_padded_vs_unpadded_max_diff"):
            if k in c:
                print(f"{c['name']}: {k} = {c[k]:.3g}")
    r = subprocess.run(["node", os.path.join(root, "tools/train/check_onnx.mjs"), onnx_path, folder,
                        str(args.tol)], cwd=root, capture_output=True, text=True)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    if r.returncode != 0:
        raise SystemExit("ONNX CHECK FAILED")
    print("ONNX check passed")


if __name__ == "__main__":
    main()
