/**
 * The playground in a real browser: Debian's chromium, headless, driven by playwright-core (which
 * downloads nothing here: it launches /usr/bin/chromium), against a listening server with a builder
 * model and API keys on. Screenshots go to tests/.artifacts/ (gitignored).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { keyId } from '../../src/server/auth.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';
import { listen, type Listening } from './helpers.ts';

// The callbacks given to page.waitForFunction / evaluate run in the page; the project's types have no DOM.
declare const document: any;
declare const sessionStorage: any;

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = join(import.meta.dirname, '..', '.artifacts');
const KEY = 'playground-browser-key-0123456789';
const present = existsSync(CHROMIUM);
if (!present && process.env.CI) throw new Error(`${CHROMIUM} is missing; CI must install Debian's chromium (.ci/run does)`);
const skip = present ? false : `${CHROMIUM} is absent (apt-get install -y chromium); the browser test runs only where it is, and always in CI`;

/** Elements that must neither overlap one another nor leave the viewport horizontally. */
const LAYOUT_CHECK = `(() => {
  const selector = 'h1, h2, button, input, textarea, label, p, dt, dd, th, td, code, svg, figcaption, .message .text, .bar';
  const nodes = [...document.querySelectorAll(selector)].filter((node) => {
    const rect = node.getBoundingClientRect();
    return rect.width > 1 && rect.height > 1 && getComputedStyle(node).visibility !== 'hidden';
  });
  const problems = [];
  const name = (node) => node.tagName.toLowerCase() + (node.id ? '#' + node.id : '') + (node.className && typeof node.className === 'string' ? '.' + node.className.split(' ').join('.') : '') + ' "' + (node.textContent || '').trim().slice(0, 20) + '"';
  const width = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth > width) problems.push('page scrolls horizontally: ' + document.documentElement.scrollWidth + ' > ' + width);
  for (const node of nodes) {
    const r = node.getBoundingClientRect();
    if (r.left < -0.5 || r.right > width + 0.5) problems.push('off-screen: ' + name(node) + ' [' + Math.round(r.left) + ', ' + Math.round(r.right) + ']');
  }
  for (let i = 0; i < nodes.length; i++) {
    for (let j = i + 1; j < nodes.length; j++) {
      const a = nodes[i], b = nodes[j];
      if (a.contains(b) || b.contains(a)) continue;
      const p = a.getBoundingClientRect(), q = b.getBoundingClientRect();
      const overlapX = Math.min(p.right, q.right) - Math.max(p.left, q.left);
      const overlapY = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
      if (overlapX > 1 && overlapY > 1) problems.push('overlap: ' + name(a) + ' / ' + name(b));
    }
  }
  return problems;
})()`;

describe('playground in chromium', { skip }, () => {
  let server: Listening;
  let slow: TestDecoder;
  let context: BrowserContext;
  let page: Page;
  let profile: string;

  before(async () => {
    server = await listen({
      // Sessions idle for a second go to int8, so the panel shows a tier change between turns.
      settings: { 'api-keys': KEY, 'int8-after-seconds': '1' },
      wrapDecoder: (d) => (slow = wrapDecoder(d)),
    });
    profile = mkdtempSync(join(tmpdir(), 'warmkv-chromium-'));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 900 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(15_000);
  });
  after(async () => {
    await context?.close();
    await server?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  const status = () => page.locator('#status').textContent();
  const sessionRow = () => page.locator('#sessions-body tr.current');
  const send = async (text: string) => {
    await page.fill('#prompt', text);
    await page.press('#prompt', 'Enter');
  };
  const waitDone = () => page.waitForFunction(() => /^Done: \d+ tokens\.$/.test(document.getElementById('status')!.textContent ?? ''));

  test('key, streamed chat, step chart, sessions panel, stop and send again, layout at 1280 and 375 px', async () => {
    const pageErrors: string[] = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    await page.goto(`${server.url}/`);
    assert.equal(new URL(page.url()).pathname, '/playground');
    // Keys are on: the page loads, but the API asks for one.
    await page.waitForFunction(() => /API key/.test(document.getElementById('status')!.textContent ?? ''));
    assert.equal(await page.locator('#model-name').textContent(), 'not connected');
    await page.fill('#api-key', KEY);
    await page.getByRole('button', { name: 'Use key' }).click();
    const modelId = server.runtime.serving!.model.id;
    await page.waitForFunction((id) => document.getElementById('model-name')!.textContent === id, modelId);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('warmkv.apiKey')), KEY);

    // Turn 1: streamed text appears while the reply is still running.
    await page.fill('#max-tokens', '16');
    await page.fill('#temperature', '0');
    const engine = server.runtime.serving!.engine;
    const stepsBefore = engine.counters().decodeSteps;
    slow.decodeDelayMs = 40;
    await send('Once upon a time');
    await page.waitForFunction(() => {
      const text = document.querySelector('#messages li.assistant .text')?.textContent ?? '';
      return text.length > 0 && !document.getElementById('stop').disabled;
    });
    await waitDone();
    const reply1 = await page.locator('#messages li.assistant .text').last().textContent();
    assert.ok(reply1 && reply1.length > 0);
    // One chart point per decode step the engine ran for this turn.
    const decodeSteps = engine.counters().decodeSteps - stepsBefore;
    assert.ok(decodeSteps > 0);
    await page.waitForFunction((n) => document.querySelectorAll('#step-chart circle.decode-step').length === n, decodeSteps);
    assert.equal(await page.locator('#step-chart').getAttribute('data-decode-steps'), String(decodeSteps));
    assert.ok(Number(await page.locator('#step-chart').getAttribute('data-prefill-chunks')) >= 1);
    assert.match((await page.locator('#ttft').textContent()) ?? '', /^\d+ ms$/);
    assert.match((await page.locator('#tps').textContent()) ?? '', /^\d+(\.\d)?$/);
    assert.equal(await page.locator('#cached').textContent(), '0');

    await page.waitForFunction(() => document.querySelector('#sessions-body tr.current td.tier')?.textContent === 'hot');
    const cached1 = Number(await sessionRow().locator('td.cached').textContent());
    assert.ok(cached1 > 0);
    assert.match((await page.locator('#budget-text').textContent()) ?? '', /KV budget: .+ used, .+ reserved of 64 MiB$/);

    // Idle, the session goes to int8; the panel shows it after a refresh.
    for (let tries = 0; ; tries++) {
      await page.getByRole('button', { name: 'Refresh' }).click();
      await page.waitForTimeout(300);
      if ((await sessionRow().locator('td.tier').textContent()) === 'int8') break;
      assert.ok(tries < 30, 'the session never went to int8');
    }

    // Turn 2: warm (cached tokens for the turn), and the session is hot again with more tokens cached.
    slow.decodeDelayMs = 0;
    await send('And then?');
    await waitDone();
    assert.ok(Number(await page.locator('#cached').textContent()) > 0, 'the second turn reuses the cache');
    await page.waitForFunction(
      (before) => {
        const row = document.querySelector('#sessions-body tr.current');
        return row?.querySelector('td.tier')?.textContent === 'hot' && Number(row.querySelector('td.cached')?.textContent) > before;
      },
      cached1,
    );

    // Turn 3 is stopped mid-reply; turn 4 then runs without error.
    slow.decodeDelayMs = 60;
    await page.fill('#max-tokens', '200');
    await send('Tell me more');
    await page.waitForFunction(() => (document.querySelectorAll('#messages li.assistant .text')[2]?.textContent ?? '').length > 0);
    await page.getByRole('button', { name: 'Stop' }).click();
    await page.waitForFunction(() => /^Stopped after/.test(document.getElementById('status')!.textContent ?? ''));
    assert.equal(engine.stats().running, 0, 'Stop ended the generation on the server');
    slow.decodeDelayMs = 0;
    await page.fill('#max-tokens', '8');
    await send('Go on');
    await waitDone();
    assert.equal(await page.locator('#messages li.assistant').count(), 4);
    assert.equal(await page.locator('#status.error').count(), 0, String(await status()));

    // Regenerate replaces the last reply; edit-and-resend cuts the conversation at the edited message.
    await page.getByRole('button', { name: 'Regenerate' }).click();
    await waitDone();
    assert.equal(await page.locator('#messages li.assistant').count(), 4);
    await page.getByRole('button', { name: 'Edit message 3 and resend' }).click();
    await page.fill('#edit-2', 'A different question');
    await page.getByRole('button', { name: 'Resend', exact: true }).click();
    await waitDone();
    assert.equal(await page.locator('#messages li').count(), 4);
    assert.equal(await page.locator('#messages li.user .text').nth(1).textContent(), 'A different question');

    mkdirSync(ARTIFACTS, { recursive: true });
    for (const width of [1280, 375]) {
      await page.setViewportSize({ width, height: width === 375 ? 812 : 900 });
      await page.waitForTimeout(200);
      await page.screenshot({ path: join(ARTIFACTS, `playground-${width}.png`), fullPage: true });
      const problems = (await page.evaluate(LAYOUT_CHECK)) as string[];
      assert.deepEqual(problems, [], `layout at ${width} px`);
    }

    // A new conversation gets a new session; deleting the old one removes it from the panel.
    const oldSession = (await page.locator('#session-id').textContent())!;
    await page.getByRole('button', { name: 'New conversation' }).click();
    assert.notEqual(await page.locator('#session-id').textContent(), oldSession);
    assert.equal(await page.locator('#messages li').count(), 0);
    await page.getByRole('button', { name: `Delete session ${oldSession}` }).click();
    await page.waitForFunction((id) => !document.querySelector(`#sessions-body tr[data-session-id="${id}"]`), oldSession);
    assert.equal(server.runtime.serving!.store.get(keyId(KEY), oldSession), undefined);
    assert.deepEqual(pageErrors, []);
  });
});
