// @ts-check
/**
 * The playground page: a chat that streams through /v1/chat/completions with a session_id (so the
 * server keeps the conversation's KV cache warm between turns), the turn's per-step latency, and the
 * key's sessions with the KV budget.
 */
import { ApiError, Client } from './api.js';
import { StepChart } from './chart.js';
import { renderBudget, renderSessions } from './sessions.js';

/** @typedef {import('./api.js').ChatMessage} ChatMessage */
/** @typedef {import('./api.js').Usage} Usage */

const KEY_STORAGE = 'warmkv.apiKey';

/**
 * @template {HTMLElement} T
 * @param {string} id
 * @returns {T}
 */
function $(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`#${id} is missing`);
  return /** @type {T} */ (node);
}

const ui = {
  model: $('model-name'),
  keyForm: /** @type {HTMLFormElement} */ ($('key-form')),
  key: /** @type {HTMLInputElement} */ ($('api-key')),
  sessionId: $('session-id'),
  messages: $('messages'),
  status: $('status'),
  composer: /** @type {HTMLFormElement} */ ($('composer')),
  prompt: /** @type {HTMLTextAreaElement} */ ($('prompt')),
  maxTokens: /** @type {HTMLInputElement} */ ($('max-tokens')),
  temperature: /** @type {HTMLInputElement} */ ($('temperature')),
  send: /** @type {HTMLButtonElement} */ ($('send')),
  stop: /** @type {HTMLButtonElement} */ ($('stop')),
  regenerate: /** @type {HTMLButtonElement} */ ($('regenerate')),
  newChat: /** @type {HTMLButtonElement} */ ($('new-chat')),
  refresh: /** @type {HTMLButtonElement} */ ($('refresh')),
  ttft: $('ttft'),
  tps: $('tps'),
  cached: $('cached'),
  promptTokens: $('prompt-tokens'),
  sessionsBody: $('sessions-body'),
  budgetUsed: $('budget-used'),
  budgetReserved: $('budget-reserved'),
  budgetText: $('budget-text'),
};

const client = new Client(() => sessionStorage.getItem(KEY_STORAGE) ?? '');
const chart = new StepChart(/** @type {SVGSVGElement} */ (/** @type {unknown} */ ($('step-chart'))));

/**
 * The turn in flight: `stopped` settles once a Stop has also cancelled the generation on the server.
 * @typedef {{ abort: AbortController, streamId: string | null, done: Promise<void>, stopped: Promise<void> | null }} Turn
 */
/** @type {{ messages: ChatMessage[], sessionId: string, turn: Turn | null }} */
const state = { messages: [], sessionId: newSessionId(), turn: null };

function newSessionId() {
  return `pg-${crypto.randomUUID()}`;
}

/** @param {string} text @param {boolean} [error] */
function setStatus(text, error = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle('error', error);
}

/** @param {unknown} error */
function explain(error) {
  if (error instanceof ApiError) {
    if (error.status === 401) {
      ui.key.focus();
      return `${error.message} Enter a key above.`;
    }
    return error.message;
  }
  return error instanceof Error ? error.message : String(error);
}

// --- the conversation ------------------------------------------------------------------------

function renderMessages() {
  const busy = state.turn !== null;
  ui.messages.replaceChildren(
    ...state.messages.map((message, index) => {
      const item = document.createElement('li');
      item.className = `message ${message.role}`;
      const who = document.createElement('span');
      who.className = 'who';
      who.textContent = message.role === 'user' ? 'You' : 'Assistant';
      const text = document.createElement('div');
      text.className = 'text';
      text.textContent = message.content;
      item.append(who, text);
      if (message.role === 'user' && !busy) {
        const edit = document.createElement('button');
        edit.type = 'button';
        edit.className = 'link';
        edit.textContent = 'Edit';
        edit.setAttribute('aria-label', `Edit message ${index + 1} and resend`);
        edit.addEventListener('click', () => startEdit(item, index));
        item.append(edit);
      }
      return item;
    }),
  );
  ui.messages.scrollTop = ui.messages.scrollHeight;
  const last = state.messages.at(-1);
  ui.regenerate.disabled = busy || last?.role !== 'assistant';
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  ui.sessionId.textContent = state.sessionId;
}

/**
 * Turns a user message into an editor; resending drops everything after it.
 * @param {HTMLLIElement} item
 * @param {number} index
 */
function startEdit(item, index) {
  const editor = document.createElement('form');
  editor.className = 'editor';
  const label = document.createElement('label');
  label.className = 'visually-hidden';
  label.htmlFor = `edit-${index}`;
  label.textContent = 'Edited message';
  const area = document.createElement('textarea');
  area.id = `edit-${index}`;
  area.rows = 3;
  area.value = state.messages[index].content;
  const resend = document.createElement('button');
  resend.type = 'submit';
  resend.className = 'primary';
  resend.textContent = 'Resend';
  const cancel = document.createElement('button');
  cancel.type = 'button';
  cancel.textContent = 'Cancel';
  cancel.addEventListener('click', renderMessages);
  editor.addEventListener('submit', (event) => {
    event.preventDefault();
    const content = area.value.trim();
    if (!content || state.turn) return;
    state.messages = state.messages.slice(0, index);
    state.messages.push({ role: 'user', content });
    void runTurn();
  });
  area.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') renderMessages();
  });
  editor.append(label, area, resend, cancel);
  item.replaceChildren(editor);
  area.focus();
}

/** Streams the assistant's reply to the conversation so far. */
async function runTurn() {
  const abort = new AbortController();
  /** @type {() => void} */
  let finish = () => {};
  /** @type {Turn} */
  const current = { abort, streamId: null, done: new Promise((resolve) => (finish = resolve)), stopped: null };
  state.turn = current;
  const reply = { role: /** @type {const} */ ('assistant'), content: '' };
  const history = state.messages.slice();
  state.messages.push(reply);
  renderMessages();
  const replyText = /** @type {HTMLElement} */ (ui.messages.lastElementChild?.querySelector('.text'));
  ui.messages.setAttribute('aria-busy', 'true');
  chart.reset();
  for (const node of [ui.ttft, ui.tps, ui.cached, ui.promptTokens]) node.textContent = '…';
  setStatus('Generating…');

  const started = performance.now();
  let firstToken = 0;
  let lastToken = 0;
  let tokens = 0;
  /** @type {{ usage: Usage | null }} */
  const result = { usage: null };
  const turn = {
    messages: history,
    sessionId: state.sessionId,
    maxTokens: Number(ui.maxTokens.value) || 128,
    temperature: Number(ui.temperature.value),
    signal: abort.signal,
    onStart: (/** @type {string | null} */ streamId) => {
      if (state.turn) state.turn.streamId = streamId;
    },
    onText: (/** @type {string} */ text) => {
      const now = performance.now();
      if (!firstToken) {
        firstToken = now;
        ui.ttft.textContent = `${Math.round(now - started)} ms`;
      }
      lastToken = now;
      tokens++;
      reply.content += text;
      replyText.textContent = reply.content;
      ui.messages.scrollTop = ui.messages.scrollHeight;
    },
    onSteps: (/** @type {import('./api.js').StepStat[]} */ steps) => chart.add(steps),
    onUsage: (/** @type {Usage} */ u) => {
      result.usage = u;
    },
  };
  try {
    await withBusyRetry(() => client.chat(turn), abort.signal);
    setStatus(`Done: ${result.usage?.completion_tokens ?? tokens} tokens.`);
  } catch (error) {
    if (error instanceof DOMException && error.name === 'AbortError') {
      // The next turn may start only once the server has let go of the session.
      await current.stopped;
      setStatus(`Stopped after ${tokens} chunks.`);
    }
    else {
      setStatus(explain(error), true);
      // A turn that failed before any text leaves no empty reply behind.
      if (reply.content === '') state.messages.pop();
    }
  }
  const final = result.usage;
  const completion = final?.completion_tokens ?? tokens;
  ui.tps.textContent = completion > 1 && lastToken > firstToken ? `${((completion - 1) / ((lastToken - firstToken) / 1000)).toFixed(1)}` : '–';
  if (!firstToken) ui.ttft.textContent = '–';
  ui.cached.textContent = final ? String(final.prompt_tokens_details?.cached_tokens ?? 0) : '–';
  ui.promptTokens.textContent = final ? String(final.prompt_tokens) : '–';
  ui.messages.setAttribute('aria-busy', 'false');
  state.turn = null;
  finish();
  renderMessages();
  void refreshSessions();
  ui.prompt.focus();
}

/**
 * A session stays busy for a moment after a stopped turn (until the engine notices): retry briefly.
 * @param {() => Promise<void>} attempt
 * @param {AbortSignal} signal
 */
async function withBusyRetry(attempt, signal) {
  for (let delay = 50; ; delay *= 2) {
    try {
      return await attempt();
    } catch (error) {
      if (!(error instanceof ApiError && error.code === 'session_busy' && delay < 2000) || signal.aborted) throw error;
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}

/** Stops the reply: aborts the fetch, and cancels the server-side stream, which outlives its connection when resumable. */
async function stopTurn() {
  const turn = state.turn;
  if (!turn) return;
  ui.stop.disabled = true;
  const streamId = turn.streamId;
  turn.stopped ??= (async () => {
    if (!streamId) return;
    try {
      await client.fetch(`/v1/streams/${encodeURIComponent(streamId)}`, { method: 'DELETE' });
    } catch (error) {
      // Already ended: nothing to stop.
      if (!(error instanceof ApiError && error.status === 404)) setStatus(explain(error), true);
    }
  })();
  turn.abort.abort();
  await turn.done;
}

ui.composer.addEventListener('submit', (event) => {
  event.preventDefault();
  const content = ui.prompt.value.trim();
  if (!content || state.turn) return;
  ui.prompt.value = '';
  state.messages.push({ role: 'user', content });
  void runTurn();
});

ui.prompt.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

ui.stop.addEventListener('click', () => void stopTurn());

ui.regenerate.addEventListener('click', () => {
  if (state.turn || state.messages.at(-1)?.role !== 'assistant') return;
  state.messages.pop();
  void runTurn();
});

ui.newChat.addEventListener('click', async () => {
  await stopTurn();
  state.messages = [];
  state.sessionId = newSessionId();
  chart.reset();
  for (const node of [ui.ttft, ui.tps, ui.cached, ui.promptTokens]) node.textContent = '–';
  setStatus('New conversation.');
  renderMessages();
  ui.prompt.focus();
});

// --- sessions and budget ---------------------------------------------------------------------

async function refreshSessions() {
  try {
    const [list, stats] = await Promise.all([client.json('/v1/sessions?limit=100&order=desc'), client.json('/v1/stats')]);
    renderSessions(ui.sessionsBody, list.data, state.sessionId, (id) => void deleteSession(id));
    renderBudget({ used: ui.budgetUsed, reserved: ui.budgetReserved, text: ui.budgetText }, stats.kv_cache);
  } catch (error) {
    setStatus(explain(error), true);
  }
}

/** @param {string} id */
async function deleteSession(id) {
  if (state.turn && id === state.sessionId) await stopTurn();
  try {
    await client.fetch(`/v1/sessions/${encodeURIComponent(id)}`, { method: 'DELETE' });
    setStatus(`Deleted session ${id}.`);
  } catch (error) {
    setStatus(explain(error), true);
  }
  await refreshSessions();
}

ui.refresh.addEventListener('click', () => void refreshSessions());

// --- the key and the model -------------------------------------------------------------------

ui.keyForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const key = ui.key.value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  void connect();
});

async function connect() {
  try {
    const models = await client.json('/v1/models');
    const model = models.data[0];
    ui.model.textContent = `${model.id}${model.ready ? '' : ' (loading)'}`;
    ui.key.placeholder = sessionStorage.getItem(KEY_STORAGE) ? 'key saved for this tab' : 'not needed';
    setStatus('');
    await refreshSessions();
  } catch (error) {
    ui.model.textContent = 'not connected';
    if (error instanceof ApiError && error.status === 401) ui.key.placeholder = 'this server needs a key';
    setStatus(explain(error), true);
  }
}

ui.key.value = sessionStorage.getItem(KEY_STORAGE) ?? '';
renderMessages();
void connect();
