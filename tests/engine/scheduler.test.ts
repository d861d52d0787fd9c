import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { StepCostModel } from '../../src/engine/cost-model.ts';
import { Scheduler, type Schedulable, type SchedulerOptions } from '../../src/engine/scheduler.ts';
import { FULL_CAPABILITIES, type ModelCapabilities } from '../../src/model/types.ts';

class Member implements Schedulable {
  state: Schedulable['state'] = 'queued';
  inLane = false;
  constructor(
    readonly name: string,
    public remainingPending: number,
    public cacheLength = 0,
    readonly enqueuedAt = 0,
  ) {}
}

const options = (overrides: Partial<SchedulerOptions> = {}): SchedulerOptions => ({
  maxBatchSize: 4, maxQueue: 8, prefillChunkTokens: 512, queueTimeoutMs: 1000, ...overrides,
});

function schedulerWith(members: Member[], overrides: Partial<SchedulerOptions> = {}, capabilities: ModelCapabilities = FULL_CAPABILITIES) {
  const scheduler = new Scheduler<Member>(options(overrides), () => capabilities);
  for (const m of members) {
    scheduler.enqueue(m);
    if (m.state !== 'queued') {
      const next = scheduler.nextAdmission();
      assert.equal(next?.kind, 'admit');
      assert.ok(scheduler.decideRoom(m, 'reserved'));
    }
  }
  return scheduler;
}

const running = (name: string, state: 'prefill' | 'decode', remaining: number, cacheLength = 0) => {
  const m = new Member(name, remaining, cacheLength);
  m.state = state;
  return m;
};

/** Feeds the cost model calls that cost `cost(tokens, past)` ms, as the engine's observer does. */
function measure(model: StepCostModel, cost: (tokens: number, past: number) => number) {
  for (const [tokens, past] of [[128, 0], [256, 128], [128, 384], [512, 512], [128, 1024], [256, 1152], [384, 1408], [128, 1792], [512, 1920], [200, 2432]]) {
    model.recordPrefill(tokens, past, cost(tokens, past));
  }
}

describe('scheduler step plans', () => {
  test('alone, a prefill gets a full chunk; the plan has no decodes', () => {
    const scheduler = schedulerWith([running('long', 'prefill', 4096)]);
    const plan = scheduler.plan(1);
    assert.deepEqual(plan.decode, []);
    assert.equal(plan.prefill?.sequence.name, 'long');
    assert.equal(plan.prefill?.tokens, 512);
  });

  test('decodes are never starved: every decoding sequence is in each plan, with the prefill chunk', () => {
    const members = [running('a', 'decode', 0, 40), running('long', 'prefill', 4096), running('b', 'decode', 0, 9)];
    const scheduler = schedulerWith(members);
    scheduler.cost.recordDecode(10);
    for (let i = 0; i < 5; i++) {
      const plan = scheduler.plan(2);
      assert.deepEqual(plan.decode.map((m) => m.name), ['a', 'b']);
      assert.equal(plan.prefill?.sequence.name, 'long');
      members[1].remainingPending -= plan.prefill!.tokens;
    }
  });

  test('prefill order: shortest remaining first by default, the earliest admitted with arrival', () => {
    const members = () => [running('long', 'prefill', 3000), running('short', 'prefill', 16), running('mid', 'prefill', 500)];
    assert.equal(schedulerWith(members()).plan(1).prefill?.sequence.name, 'short');
    assert.equal(schedulerWith(members(), { prefillOrder: 'arrival' }).plan(1).prefill?.sequence.name, 'long');
  });

  test('the chunk budget: share x decode step x (prefilling + decoding) / decoding, at the measured cost', () => {
    const scheduler = schedulerWith([running('s', 'decode', 0, 10), running('p', 'prefill', 4096)], { minPrefillChunkTokens: 8 });
    scheduler.cost.recordDecode(20);
    // 0.1 ms per prompt token, no past term: the 40 ms budget (2 sequences / 1 decoding) fits 400 tokens.
    measure(scheduler.cost, (tokens) => 0.1 * tokens);
    assert.ok(Math.abs(scheduler.plan(1).prefill!.tokens - 400) <= 2, String(scheduler.plan(1).prefill!.tokens));
    scheduler.options.prefillStepShare = 0.5;
    assert.ok(Math.abs(scheduler.plan(1).prefill!.tokens - 200) <= 2);
    scheduler.options.prefillStepShare = Infinity;
    assert.equal(scheduler.plan(1).prefill!.tokens, 512, 'an infinite share: full chunks');
  });

  test('a chunk late in a long prompt is smaller: its cost grows with the past before it', () => {
    const late = running('late', 'prefill', 1000, 3000);
    const scheduler = schedulerWith([running('s', 'decode', 0, 10), late], { minPrefillChunkTokens: 8 });
    scheduler.cost.recordDecode(20);
    // 2 ms per call, 0.02 ms per token, and 0.00005 ms per token per past token (attention).
    const cost = (tokens: number, past: number) => 2 + 0.02 * tokens + 0.00005 * tokens * past;
    measure(scheduler.cost, cost);
    const atStart = schedulerWith([running('s', 'decode', 0, 10), running('early', 'prefill', 4000, 0)], { minPrefillChunkTokens: 8 });
    atStart.cost.recordDecode(20);
    measure(atStart.cost, cost);
    const early = atStart.plan(1).prefill!.tokens;
    const lateTokens = scheduler.plan(1).prefill!.tokens;
    assert.ok(lateTokens < early / 2, `late ${lateTokens} vs early ${early}`);
    // Each chunk fits the 40 ms budget at its own past (to within the fit).
    assert.ok(cost(lateTokens, 3000) <= 40 * 1.05 && cost(lateTokens + 20, 3000) > 40, String(lateTokens));
    assert.ok(cost(early, 0) <= 40 * 1.05 || early === 512, String(early));
  });

  test('the smallest chunk while streams decode is minPrefillChunkTokens; exports without multi-token steps over a past get 1', () => {
    const scheduler = schedulerWith([running('s', 'decode', 0, 10), running('p', 'prefill', 900, 300)], { minPrefillChunkTokens: 64 });
    scheduler.cost.recordDecode(1);
    measure(scheduler.cost, (tokens) => 1 * tokens);
    assert.equal(scheduler.plan(1).prefill!.tokens, 64);
    const limited = schedulerWith([running('p', 'prefill', 900, 300)], {}, { ...FULL_CAPABILITIES, multiTokenOverPast: false });
    assert.equal(limited.plan(1).prefill!.tokens, 1);
  });
});

describe('scheduler plans for the prefill lane', () => {
  test('the lane takes the longest prompt in a full chunk, only while streams decode and when one budgeted chunk would not finish it', () => {
    const stream = running('s', 'decode', 0, 10);
    const scheduler = schedulerWith([stream, running('short', 'prefill', 30), running('long', 'prefill', 4096), running('mid', 'prefill', 900)], { minPrefillChunkTokens: 16 });
    scheduler.cost.recordDecode(1);
    // 0.1 ms per prompt token: the budget, 1 ms x 4 / 1, fits 40 tokens inline.
    measure(scheduler.cost, (tokens) => 0.1 * tokens);
    const lane = scheduler.lanePlan(1)!;
    assert.equal((lane.sequence as Member).name, 'long');
    assert.equal(lane.tokens, 512, 'a full chunk: it holds no stream back');

    // Alone with the stream its budget is 1 ms x 2 / 1: about 20 tokens inline.
    const shortOnly = schedulerWith([running('s', 'decode', 0, 10), running('short', 'prefill', 16)], { minPrefillChunkTokens: 16 });
    shortOnly.cost.recordDecode(1);
    measure(shortOnly.cost, (tokens) => 0.1 * tokens);
    assert.equal(shortOnly.lanePlan(1), null, 'one inline chunk finishes it: it stays on the loop');
    assert.equal(schedulerWith([running('long', 'prefill', 4096)]).lanePlan(1), null, 'nothing decodes: full chunks inline');
    const oneTokenSteps = schedulerWith([running('s', 'decode', 0, 10), running('long', 'prefill', 4096, 100)], {}, { ...FULL_CAPABILITIES, multiTokenOverPast: false });
    assert.equal(oneTokenSteps.lanePlan(1), null, 'an export that steps one token over a past has no chunk to move');
  });

  test('a sequence in the lane gets no other chunk; the inline chunk goes to the shortest of the rest', () => {
    const long = running('long', 'prefill', 4096);
    const mid = running('mid', 'prefill', 900);
    const scheduler = schedulerWith([running('s', 'decode', 0, 10), long, mid]);
    long.inLane = true;
    assert.equal((scheduler.lanePlan(1)!.sequence as Member).name, 'mid');
    mid.inLane = true;
    assert.equal(scheduler.lanePlan(1), null);
    assert.equal(scheduler.plan(1).prefill, null, 'both are in flight: no inline chunk either');
    long.inLane = false;
    assert.equal((scheduler.plan(1).prefill!.sequence as Member).name, 'long');
  });
});

describe('scheduler admission and queue timeouts', () => {
  test('no room is a value: the head stays queued and the pass stops; a timeout then says cache_full', () => {
    const scheduler = schedulerWith([]);
    const head = new Member('head', 40, 0, 0);
    const behind = new Member('behind', 4, 0, 10);
    scheduler.enqueue(head);
    scheduler.enqueue(behind);
    scheduler.beginAdmission();
    const next = scheduler.nextAdmission();
    assert.deepEqual(next, { kind: 'admit', sequence: head });
    assert.equal(scheduler.decideRoom(head, 'no_room'), false);
    assert.deepEqual(scheduler.waiting.map((m) => m.name), ['head', 'behind'], 'first come first served: nobody overtakes');
    assert.deepEqual(scheduler.expired(999), []);
    assert.equal(scheduler.nextTimeoutAt(), 1000);
    const expired = scheduler.expired(1000);
    assert.deepEqual(expired.map((e) => [e.sequence.name, e.error.kind]), [['head', 'cache_full']]);
    assert.match(expired[0].error.message, /no KV cache room/);
  });

  test('a full batch: admission waits for a slot, and a timeout says batch_full', () => {
    const scheduler = schedulerWith([running('a', 'decode', 0), running('b', 'decode', 0)], { maxBatchSize: 2 });
    scheduler.enqueue(new Member('late', 4, 0, 0));
    scheduler.beginAdmission();
    assert.deepEqual(scheduler.nextAdmission(), { kind: 'wait', blockedBy: 'batch_slot' });
    const [expired] = scheduler.expired(5000);
    assert.equal(expired.error.kind, 'batch_full');
    assert.match(expired.error.message, /no batch slot became free within 1 s \(all 2 are generating\)/);
  });

  test('reserved moves the head into the running set; the queue-full check counts the waiting', () => {
    const scheduler = schedulerWith([], { maxQueue: 2 });
    const a = new Member('a', 4);
    scheduler.enqueue(a);
    assert.equal(scheduler.queueFull, false);
    scheduler.enqueue(new Member('b', 4));
    assert.equal(scheduler.queueFull, true);
    assert.ok(scheduler.decideRoom(a, 'reserved'));
    assert.deepEqual([scheduler.waiting.length, scheduler.running.length], [1, 1]);
    a.state = 'decode';
    scheduler.remove(a);
    assert.equal(scheduler.running.length, 0);
  });
});

describe('step cost model', () => {
  test('recovers a + b*tokens + c*past + d*tokens*past from measured calls', () => {
    const model = new StepCostModel();
    measure(model, (tokens, past) => 3 + 0.05 * tokens + 0.002 * past + 0.00004 * tokens * past);
    const fit = model.prefillCost()!;
    assert.ok(Math.abs(fit.overheadMs - 3) < 0.3, JSON.stringify(fit));
    assert.ok(Math.abs(fit.perTokenMs - 0.05) < 0.005, JSON.stringify(fit));
    assert.ok(Math.abs(fit.perTokenPastMs - 0.00004) < 0.000004, JSON.stringify(fit));
    assert.ok(Math.abs(model.predictPrefill(300, 3000, 1) - (3 + 15 + 6 + 36)) < 3);
  });

  test('when a call over a long past costs more than the budget whatever its size, the chunk amortizes that fixed cost', () => {
    const model = new StepCostModel();
    // 0.05 ms per past token per call (the past copied in and out), 0.1 ms per prompt token.
    const cost = (tokens: number, past: number) => 1 + 0.1 * tokens + 0.05 * past;
    measure(model, cost);
    assert.ok(Math.abs(model.tokensWithin(30, 0, 1) - 290) <= 3, 'short past: the budget rules');
    // At past 4000 a call costs 201 ms before any prompt work: a 30 ms budget cannot be met, and
    // 1-token chunks would pay 201 ms per token; the chunk does as much prompt work as the fixed cost.
    const tokens = model.tokensWithin(30, 4000, 1);
    assert.ok(Math.abs(tokens - 2010) <= 20, String(tokens));
  });

  test('before enough calls, a cost per prompt token (or the fallback) sizes chunks', () => {
    const model = new StepCostModel();
    assert.equal(model.tokensWithin(100, 0, 0.5), 200, 'nothing measured: the fallback cost');
    model.recordPrefill(100, 0, 20);
    assert.equal(model.prefillCost(), null);
    assert.equal(model.tokensWithin(100, 5000, 0.5), 500, 'one call: 0.2 ms per token, past ignored');
  });
});
