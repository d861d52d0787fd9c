"""Step 3: train the Llama-style model on the Brown training stream (CPU, 2 threads).

The number of steps comes from a short timing trial on a throwaway copy of the model
(`--budget-minutes`), unless `--steps` is given. Checkpoints go to the work folder (not committed)."""
import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine a spinning thread that waits for
# a preempted one made steps up to 5x slower. Must be set before torch initialises OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from model import Config, LlamaLM


def get_batch(data, bs, ctx, gen):
    ix = torch.randint(0, len(data) - ctx - 1, (bs,), generator=gen)
    x = torch.stack([torch.from_numpy(data[i:i + ctx + 1].astype(np.int64)) for i in ix.tolist()])
    return x[:, :-1], x[:, 1:]


@torch.no_grad()
def evaluate(model, data, ctx, bs=8, max_windows=None):
    """Mean next-token loss over non-overlapping windows of ctx+1 tokens covering the stream."""
    model.eval()
    n = (len(data) - 1) // ctx
    if max_windows is not None:
        n = min(n, max_windows)
    starts = [i * ctx for i in range(n)]
    tot, cnt = 0.0, 0
    for j in range(0, n, bs):
        xs = torch.stack([torch.from_numpy(data[s:s + ctx + 1].astype(np.int64)) for s in starts[j:j + bs]])
        logits, _ = model(xs[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), xs[:, 1:].reshape(-1), reduction="sum")
        tot += loss.item()
        cnt += xs[:, 1:].numel()
    model.train()
    return tot / cnt


def make_optimizer(model, lr, wd):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


def lr_at(step, progress, peak, warmup, min_ratio):
    """Linear warmup over `warmup` steps, then cosine decay to min_ratio*peak as progress goes 0 -> 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/warmkv-train")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=0, help="0: derive from --budget-minutes and a timing trial")
    ap.add_argument("--budget-minutes", type=float, default=50.0,
                    help="wall time for the optimisation loop (steps + periodic evals); the schedule follows "
                         "max(step/steps, elapsed/budget), so a slowed-down machine ends the run on time")
    ap.add_argument("--adapt-threads", type=int, default=1,
                    help="every 100 steps time 3 steps with 1 thread and 3 with --threads, keep the faster")
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    train = np.load(os.path.join(args.work, "train.npy"))
    held = np.load(os.path.join(args.work, "heldout.npy"))
    vocab_size = 4096
    cfg = Config(vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
                 num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                 head_dim=args.hidden // args.heads, dropout=args.dropout)
    model = LlamaLM(cfg)
    n_params = model.num_params()
    print(f"params {n_params} ({n_params / 1e6:.2f}M); train tokens {len(train)}, held-out tokens {len(held)}",
          flush=True)
    eval_windows = (len(held) - 1) // args.ctx

    steps = args.steps
    if steps <= 0:
        # timing trial on a throwaway copy: 3 warm-up steps, then 4 timed steps with --threads and 4 with
        # 1 thread (the loop keeps whichever is faster), plus the cost of the evals
        trial = copy.deepcopy(model)
        opt = make_optimizer(trial, args.lr, args.wd)
        g = torch.Generator().manual_seed(0)
        times = []
        for i in range(11):
            if i in (3, 7):
                torch.set_num_threads(args.threads if i == 3 else 1)
                t0 = time.time()
            x, y = get_batch(train, args.batch, args.ctx, g)
            logits, _ = trial(x)
            loss = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i in (6, 10):
                times.append((time.time() - t0) / 4)
        torch.set_num_threads(args.threads)
        step_s = min(times)
        print(f"trial s/step: {args.threads} threads {times[0]:.3f}, 1 thread {times[1]:.3f}", flush=True)
        t0 = time.time()
        evaluate(trial, held, args.ctx, max_windows=16)
        eval_s = (time.time() - t0) * eval_windows / 16
        del trial, opt
        budget = args.budget_minutes * 60
        # steps s.t. steps*step_s + (steps/eval_every + 2)*eval_s <= budget, with a 5% margin
        steps = int(0.95 * (budget - 2 * eval_s) / (step_s + eval_s / args.eval_every))
        print(f"trial: {step_s:.3f} s/step = {args.batch * args.ctx / step_s:.0f} tok/s, held-out eval {eval_s:.1f}s "
              f"-> {steps} steps for a {args.budget_minutes} min budget", flush=True)

    gen = torch.Generator().manual_seed(args.seed)
    opt = make_optimizer(model, args.lr, args.wd)
    log_path = os.path.join(args.work, "train_log.jsonl")
    logf = open(log_path, "w")
    best = float("inf")
    ema = None
    t_train = time.time()
    budget_s = args.budget_minutes * 60
    threads = args.threads
    adapt = args.adapt_threads and args.threads > 1
    probe = {}
    step = 0
    progress = 0.0
    while progress < 1.0:
        if adapt:
            # shared machine: while another process holds a core, 1 thread can beat 2 by a wide margin.
            # Steps 0-2 of every 100 run with 1 thread, 3-5 with --threads; the faster count is kept.
            phase = step % 100
            if phase == 0:
                torch.set_num_threads(1)
                threads = 1
                t_probe = time.time()
            elif phase == 3:
                t_one = time.time() - t_probe
                torch.set_num_threads(args.threads)
                threads = args.threads
                t_probe = time.time()
            elif phase == 6:
                t_many = time.time() - t_probe
                threads = 1 if t_one < t_many else args.threads
                torch.set_num_threads(threads)
                probe = {"1": round(t_one, 2), str(args.threads): round(t_many, 2)}
        lr = lr_at(step, progress, args.lr, args.warmup, args.min_lr_ratio)
        for gparam in opt.param_groups:
            gparam["lr"] = lr
        x, y = get_batch(train, args.batch, args.ctx, gen)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip).item()
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 20 == 0:
            el = time.time() - t_train
            print(f"step {step}/{steps} loss {loss.item():.4f} ema {ema:.4f} lr {lr:.2e} gnorm {gnorm:.2f} "
                  f"{(step + 1) * args.batch * args.ctx / el:.0f} tok/s elapsed {el / 60:.1f} min "
                  f"progress {progress:.3f} threads {threads} probe(s/3 steps) {probe}", flush=True)
        step += 1
        progress = max(step / steps, (time.time() - t_train) / budget_s)
        if step % args.eval_every == 0 or progress >= 1.0:
            hl = evaluate(model, held, args.ctx)
            rec = {"step": step, "tokens": step * args.batch * args.ctx, "train_loss_ema": ema,
                   "heldout_loss": hl, "heldout_ppl": math.exp(hl), "lr": lr,
                   "elapsed_s": time.time() - t_train}
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            print(f"EVAL step {step} held-out loss {hl:.4f} ppl {math.exp(hl):.2f} (train ema {ema:.4f})",
                  flush=True)
            state = {"config": cfg.to_dict(), "model": model.state_dict(), "step": step, "heldout_loss": hl,
                     "args": vars(args)}
            torch.save(state, os.path.join(args.work, "ckpt_last.pt"))
            if hl < best:
                best = hl
                torch.save(state, os.path.join(args.work, "ckpt_best.pt"))
            progress = max(step / steps, (time.time() - t_train) / budget_s)
    steps_done = step
    train_s = time.time() - t_train
    # like-for-like train loss: same windowing as held-out, over as many training windows
    tl = evaluate(model, train, args.ctx, max_windows=eval_windows)
    hl = evaluate(model, held, args.ctx)
    summary = {
        "params": n_params, "config": cfg.to_dict(), "args": vars(args), "planned_steps": steps,
        "steps": steps_done, "tokens_seen": steps_done * args.batch * args.ctx,
        "epochs": steps_done * args.batch * args.ctx / len(train),
        "train_tokens": int(len(train)), "heldout_tokens": int(len(held)),
        "train_wall_s": train_s, "total_wall_s": time.time() - t_start,
        "final_train_loss": tl, "final_train_ppl": math.exp(tl),
        "final_heldout_loss": hl, "final_heldout_ppl": math.exp(hl), "best_heldout_loss": best,
    }
    with open(os.path.join(args.work, "train_summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    print("SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
