"""Chat step 2: train models/warmkv-chat on CPU, starting from warmkv-brown's weights (read back from its
ONNX file), on the synthetic dialogues (loss on assistant replies only) mixed with Brown windows (loss on
every token), so that language quality does not collapse.

Dialogues are not packed: each one starts at position 0, as a conversation does in the server. Batches
group dialogues of similar length (right padding, masked out of the loss; causal attention means real tokens
never see the padding), so a short dialogue costs little attention and the long tool dialogues still train
positions up to the 1,024-token context. The schedule follows max(step/steps, elapsed/budget), as train.py."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import time

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from model import Config, LlamaLM
from train import evaluate, lr_at, make_optimizer


def load_onnx_weights(model, path):
    """warmkv-brown's export stores each Linear as a transposed float16 MatMul initializer, in graph order
    q, k, v, o, gate, up, down per layer, and the tied embedding as the last one (the lm_head's transpose)."""
    g = onnx.load(path).graph
    arrays = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in g.initializer}
    mats = [n for n in arrays if n.startswith("onnx::MatMul_")]
    mats.sort(key=lambda n: int(n.split("_")[-2]) if n.endswith("_fp16") else int(n.split("_")[-1]))
    sd = model.state_dict()
    new = {}
    order = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj"]
    n_layers = model.cfg.num_hidden_layers
    assert len(mats) == 7 * n_layers + 1, len(mats)
    for i in range(n_layers):
        for j, name in enumerate(order):
            new[f"layers.{i}.{name}.weight"] = arrays[mats[7 * i + j]].T
        for ln in ("input_layernorm", "post_attention_layernorm"):
            new[f"layers.{i}.{ln}.weight"] = arrays[f"model.layers.{i}.{ln}.weight_fp16"]
    new["norm.weight"] = arrays["model.norm.weight_fp16"]
    new["embed_tokens.weight"] = arrays[mats[-1]].T
    for k, v in new.items():
        assert tuple(sd[k].shape) == v.shape, (k, sd[k].shape, v.shape)
        sd[k] = torch.from_numpy(np.ascontiguousarray(v))
    model.load_state_dict(sd)


def make_batches(starts, lengths, tokens_per_batch, max_rows, rng):
    """Shuffle dialogues, sort chunks of 512 by length, cut into batches of at most tokens_per_batch
    (rows x longest) tokens. Returns a list of index arrays."""
    order = rng.permutation(len(starts))
    batches = []
    for c in range(0, len(order), 512):
        chunk = order[c:c + 512]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        cur = []
        for idx in chunk:
            longest = max([lengths[i] for i in cur] + [lengths[idx]])
            if cur and (longest * (len(cur) + 1) > tokens_per_batch or len(cur) >= max_rows):
                batches.append(np.array(cur))
                cur = []
            cur.append(idx)
        if cur:
            batches.append(np.array(cur))
    rng.shuffle(batches)
    return batches


def chat_batch(ids, mask, starts, lengths, rows):
    L = int(max(lengths[r] for r in rows))
    x = np.zeros((len(rows), L + 1), dtype=np.int64)
    m = np.zeros((len(rows), L + 1), dtype=np.float32)
    for k, r in enumerate(rows):
        s, n = starts[r], lengths[r]
        x[k, :n + 1] = ids[s:s + n + 1]  # the dialogue and the <|endoftext|> after it (masked)
        m[k, :n + 1] = mask[s:s + n + 1]
    return torch.from_numpy(x[:, :-1]), torch.from_numpy(x[:, 1:]), torch.from_numpy(m[:, 1:])


def masked_loss(model, x, y, m):
    logits, _ = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
    return (loss * m.reshape(-1)).sum() / m.sum().clamp(min=1)


@torch.no_grad()
def chat_eval(model, ids, mask, starts, lengths, sel):
    model.eval()
    tot, cnt = 0.0, 0.0
    for j in range(0, len(sel), 16):
        x, y, m = chat_batch(ids, mask, starts, lengths, sel[j:j + 16])
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        tot += (loss * m.reshape(-1)).sum().item()
        cnt += m.sum().item()
    model.train()
    return tot / cnt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/warmkv-chat")
    ap.add_argument("--base", default="models/warmkv-brown/onnx/model.onnx")
    ap.add_argument("--tokens-per-batch", type=int, default=4096)
    ap.add_argument("--max-rows", type=int, default=32)
    ap.add_argument("--brown-share", type=float, default=0.15, help="share of steps that are Brown windows")
    ap.add_argument("--brown-ctx", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=3000, help="planned steps; the time budget may end it earlier")
    ap.add_argument("--budget-minutes", type=float, default=50.0)
    ap.add_argument("--eval-every-minutes", type=float, default=10.0)
    ap.add_argument("--save-every-minutes", type=float, default=5.0, help="checkpoint (no evaluation) this often")
    ap.add_argument("--resume", default="", help="start from this checkpoint's weights (fresh optimizer state)")
    ap.add_argument("--progress-offset", type=float, default=0.0,
                    help="with --resume: the schedule position the checkpoint had reached (0..1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    ids = np.load(os.path.join(args.work, "chat_ids.npy"))
    mask = np.load(os.path.join(args.work, "chat_mask.npy"))
    starts = np.load(os.path.join(args.work, "chat_starts.npy"))
    ends = np.append(starts[1:], len(ids))
    lengths = ends - starts - 1  # without the <|endoftext|> separator
    brown = np.load(os.path.join(args.work, "brown_train.npy"))
    brown_held = np.load(os.path.join(args.work, "brown_heldout.npy"))
    # the last 400 dialogues are a validation set for the chat loss (same generator, never trained on)
    val = np.arange(len(starts) - 400, len(starts))
    train_idx = np.arange(len(starts) - 400)

    cfg = Config()
    model = LlamaLM(cfg)
    if args.resume:
        model.load_state_dict(torch.load(os.path.join(args.work, args.resume), map_location="cpu")["model"])
    else:
        load_onnx_weights(model, args.base)
    t0 = time.time()
    # a short check that the weights were read back right (the full held-out set gives warmkv-brown's 94.2)
    base_brown = None if args.resume else evaluate(model, brown_held, 512, max_windows=16)
    base_chat = None if args.resume else chat_eval(model, ids, mask, starts, lengths, val[:150])
    if base_brown is not None:
        print(f"base (warmkv-brown weights): brown held-out loss {base_brown:.4f} ppl {math.exp(base_brown):.1f}; "
          f"chat val loss {base_chat:.4f}; evals took {time.time() - t0:.0f}s", flush=True)

    batches = []
    opt = make_optimizer(model, args.lr, args.wd)
    log = open(os.path.join(args.work, "chat_train_log.jsonl"), "w")
    gen = torch.Generator().manual_seed(args.seed)
    budget_s = args.budget_minutes * 60
    t_train = time.time()
    last_eval = t_train
    last_save = t_train
    offset = args.progress_offset

    def schedule(step_now, elapsed):
        return offset + (1 - offset) * max(step_now / args.steps, elapsed / budget_s)
    step, progress, ema, tokens, trained_tokens, best = 0, 0.0, None, 0, 0, float("inf")
    brown_steps = 0

    def do_eval():
        nonlocal best
        cl = chat_eval(model, ids, mask, starts, lengths, val[:150])
        bl = evaluate(model, brown_held, 512, max_windows=16)
        rec = {"step": step, "tokens": tokens, "trained_tokens": trained_tokens, "chat_val_loss": cl,
               "brown_heldout_loss_16w": bl, "brown_heldout_ppl_16w": math.exp(bl), "lr": lr,
               "elapsed_s": time.time() - t_train, "ema": ema}
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print("EVAL " + json.dumps(rec), flush=True)
        state = {"config": cfg.to_dict(), "model": model.state_dict(), "step": step, "chat_val_loss": cl}
        torch.save(state, os.path.join(args.work, "ckpt_last.pt"))
        if cl < best:
            best = cl
            torch.save(state, os.path.join(args.work, "ckpt_best.pt"))

    lr = args.lr
    while progress < 1.0:
        lr = lr_at(step, progress, args.lr, args.warmup, args.min_lr_ratio)
        if args.resume and step < args.warmup:
            # fresh Adam moments: a short linear warmup to where the schedule is
            lr = lr_at(args.warmup, progress, args.lr, args.warmup, args.min_lr_ratio) * (step + 1) / args.warmup
        for gp in opt.param_groups:
            gp["lr"] = lr
        if rng.random() < args.brown_share:
            ix = torch.randint(0, len(brown) - args.brown_ctx - 1, (args.tokens_per_batch // args.brown_ctx,),
                               generator=gen)
            xy = torch.stack([torch.from_numpy(brown[i:i + args.brown_ctx + 1].astype(np.int64))
                              for i in ix.tolist()])
            x, y = xy[:, :-1], xy[:, 1:]
            m = torch.ones_like(y, dtype=torch.float32)
            brown_steps += 1
        else:
            if not batches:
                batches = make_batches(train_idx, lengths[train_idx], args.tokens_per_batch, args.max_rows, rng)
                batches = [train_idx[b] for b in batches]
            x, y, m = chat_batch(ids, mask, starts, lengths, batches.pop())
        loss = masked_loss(model, x, y, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip).item()
        opt.step()
        tokens += x.numel()
        trained_tokens += int(m.sum().item())
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        step += 1
        el = time.time() - t_train
        progress = schedule(step, el)
        if step % 20 == 0:
            print(f"step {step}/{args.steps} loss {loss.item():.4f} ema {ema:.4f} lr {lr:.2e} gnorm {gnorm:.2f} "
                  f"shape {tuple(x.shape)} {tokens / el:.0f} tok/s elapsed {el / 60:.1f} min progress {progress:.3f}",
                  flush=True)
        if time.time() - last_eval > args.eval_every_minutes * 60 or progress >= 1.0:
            do_eval()
            last_eval = last_save = time.time()
            progress = schedule(step, time.time() - t_train)
        elif time.time() - last_save > args.save_every_minutes * 60:
            torch.save({"config": cfg.to_dict(), "model": model.state_dict(), "step": step},
                       os.path.join(args.work, "ckpt_last.pt"))
            last_save = time.time()
    train_s = time.time() - t_train
    # the full Brown held-out perplexity is measured on the ONNX export (npm run eval); 48 windows here
    hl = evaluate(model, brown_held, 512, max_windows=48)
    cl = chat_eval(model, ids, mask, starts, lengths, val)
    summary = {"params": model.num_params(), "config": cfg.to_dict(), "args": vars(args), "steps": step,
               "brown_steps": brown_steps, "tokens_seen": tokens, "trained_tokens": trained_tokens,
               "chat_dialogues": int(len(train_idx)), "chat_tokens": int(len(ids)),
               "train_wall_s": train_s, "total_wall_s": time.time() - t_start,
               "base_brown_heldout_loss_16w": base_brown, "base_chat_val_loss": base_chat,
               "final_brown_heldout_loss_48w": hl, "final_brown_heldout_ppl_48w": math.exp(hl),
               "final_chat_val_loss": cl, "best_chat_val_loss": min(best, cl)}
    torch.save({"config": cfg.to_dict(), "model": model.state_dict(), "step": step, "chat_val_loss": cl},
               os.path.join(args.work, "ckpt_final.pt"))
    with open(os.path.join(args.work, "train_summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    print("SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
