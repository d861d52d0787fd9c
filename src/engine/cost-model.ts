/**
 * What a model call costs, learnt from the calls the engine makes, so the scheduler can size a prefill
 * chunk to a time budget.
 *
 * A prefill chunk of `tokens` over a cache of `past` tokens costs about
 *   ms ≈ a + b·tokens + c·past + d·tokens·past
 * a: the call's fixed overhead; b: the per-token work (the weights, the MLP); c: copying the past into the
 * call and back out of it (present = past + new); d: attention of every new token over the past. A cost per
 * prompt token alone (the model before this one) cannot tell a chunk at the start of a 4,096-token prompt
 * from one at its end, which costs several times more. The four coefficients are fitted by least squares
 * with exponential forgetting (recent calls weigh most: the machine's load changes) and a small ridge
 * term, so a fit from chunks that all had one size still predicts sensibly near those sizes.
 */

const FEATURES = 4;
/** Each new call's weight against the history: about the last 50 calls matter. */
const FORGETTING = 0.98;
/** Calls needed before the fit is used; until then, a plain cost per prompt token. */
const MIN_SAMPLES = 6;
/** Feature scales (tokens per 100, past per 1,000), so the normal equations are well conditioned. */
const TOKEN_SCALE = 100;
const PAST_SCALE = 1000;
const RIDGE = 1e-4;

export interface PrefillCost {
  /** ms per call, per prompt token, per past token, per token × past token. */
  overheadMs: number;
  perTokenMs: number;
  perPastMs: number;
  perTokenPastMs: number;
}

export class StepCostModel {
  /** Moving average of a decode step's time (ms); 0 until one was measured. */
  decodeStepMs = 0;
  private readonly xtx = new Float64Array(FEATURES * FEATURES);
  private readonly xty = new Float64Array(FEATURES);
  private samples = 0;
  private fitted: PrefillCost | null = null;
  /** Moving average of ms per prompt token, the fallback before the fit has enough calls. */
  private msPerToken = 0;

  recordDecode(durationMs: number): void {
    this.decodeStepMs = this.decodeStepMs === 0 ? durationMs : 0.8 * this.decodeStepMs + 0.2 * durationMs;
  }

  recordPrefill(tokens: number, past: number, durationMs: number): void {
    if (tokens <= 0) return;
    // Chunks of a few tokens are mostly per-call overhead; they would inflate a per-token average.
    if (tokens >= 8) this.msPerToken = this.msPerToken === 0 ? durationMs / tokens : 0.7 * this.msPerToken + 0.3 * (durationMs / tokens);
    const x = features(tokens, past);
    for (let i = 0; i < FEATURES; i++) {
      this.xty[i] = FORGETTING * this.xty[i] + x[i] * durationMs;
      for (let j = 0; j < FEATURES; j++) this.xtx[i * FEATURES + j] = FORGETTING * this.xtx[i * FEATURES + j] + x[i] * x[j];
    }
    this.samples++;
    this.fitted = this.samples >= MIN_SAMPLES ? solve(this.xtx, this.xty) : null;
  }

  /** The fitted coefficients (null before enough calls), for logs and tests. */
  prefillCost(): PrefillCost | null {
    return this.fitted;
  }

  /** Predicted ms of a prefill chunk; `fallbackPerTokenMs` is used while nothing was measured. */
  predictPrefill(tokens: number, past: number, fallbackPerTokenMs: number): number {
    const fit = this.fitted;
    if (!fit) return tokens * (this.msPerToken || fallbackPerTokenMs);
    return fit.overheadMs + fit.perTokenMs * tokens + fit.perPastMs * past + fit.perTokenPastMs * tokens * past;
  }

  /**
   * Most prompt tokens over a cache of `past` that fit in `budgetMs`. When a call's fixed cost at this
   * past (overhead and the copy of the past) is over half the budget, no chunk can meet the budget, and
   * smaller chunks would only add calls, each paying that cost again: the chunk then costs up to twice
   * the fixed cost (at least half of each call does prompt work), which bounds both the pause and the
   * waste.
   */
  tokensWithin(budgetMs: number, past: number, fallbackPerTokenMs: number): number {
    const fit = this.fitted;
    if (!fit) return Math.floor(budgetMs / (this.msPerToken || fallbackPerTokenMs));
    const marginal = fit.perTokenMs + fit.perTokenPastMs * past;
    // A degenerate fit (no per-token cost) falls back to the average, which is never zero once measured.
    if (!(marginal > 0)) return Math.floor(budgetMs / (this.msPerToken || fallbackPerTokenMs));
    const fixed = fit.overheadMs + fit.perPastMs * past;
    return Math.floor((Math.max(budgetMs, 2 * fixed) - fixed) / marginal);
  }
}

function features(tokens: number, past: number): number[] {
  const t = tokens / TOKEN_SCALE;
  const p = past / PAST_SCALE;
  return [1, t, p, t * p];
}

/** Ridge least squares on the (scaled) normal equations; coefficients below zero are clamped to zero. */
function solve(xtx: Float64Array, xty: Float64Array): PrefillCost | null {
  const n = FEATURES;
  const a: number[][] = [];
  for (let i = 0; i < n; i++) {
    a.push([]);
    // The ridge is relative to each feature's own scale, so it never favours one coefficient.
    for (let j = 0; j < n; j++) a[i].push(xtx[i * n + j] * (i === j ? 1 + RIDGE : 1) + (i === j ? 1e-9 : 0));
    a[i].push(xty[i]);
  }
  // Gaussian elimination with partial pivoting.
  for (let col = 0; col < n; col++) {
    let pivot = col;
    for (let r = col + 1; r < n; r++) if (Math.abs(a[r][col]) > Math.abs(a[pivot][col])) pivot = r;
    if (Math.abs(a[pivot][col]) < 1e-12) return null;
    [a[col], a[pivot]] = [a[pivot], a[col]];
    for (let r = 0; r < n; r++) {
      if (r === col) continue;
      const factor = a[r][col] / a[col][col];
      for (let k = col; k <= n; k++) a[r][k] -= factor * a[col][k];
    }
  }
  const beta = a.map((row, i) => Math.max(0, row[n] / row[i]));
  return {
    overheadMs: beta[0],
    perTokenMs: beta[1] / TOKEN_SCALE,
    perPastMs: beta[2] / PAST_SCALE,
    perTokenPastMs: beta[3] / (TOKEN_SCALE * PAST_SCALE),
  };
}
