// @ts-check
/** The sessions panel: the key's sessions as table rows (cards on a phone) and the KV budget bar. */

/** @param {number} bytes */
export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = -1;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** @param {number} unixSeconds */
function formatAgo(unixSeconds) {
  const seconds = Math.max(0, Math.round(Date.now() / 1000 - unixSeconds));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

/**
 * @param {HTMLElement} body the table's tbody
 * @param {Array<Record<string, any>>} sessions as GET /v1/sessions lists them
 * @param {string} currentId the conversation's session, marked
 * @param {(id: string) => void} onDelete
 */
export function renderSessions(body, sessions, currentId, onDelete) {
  if (sessions.length === 0) {
    const row = document.createElement('tr');
    const cell = document.createElement('td');
    cell.colSpan = 7;
    cell.className = 'empty';
    cell.textContent = 'No sessions yet.';
    row.append(cell);
    body.replaceChildren(row);
    return;
  }
  body.replaceChildren(
    ...sessions.map((session) => {
      const row = document.createElement('tr');
      row.dataset.sessionId = session.id;
      if (session.id === currentId) row.classList.add('current');
      /** @type {Array<[string, string, string]>} */
      const cells = [
        ['Session', session.id, 'id'],
        ['Tier', session.tier, `tier tier-${session.tier}`],
        ['Cached', String(session.cached_tokens), 'cached'],
        ['Bytes', formatBytes(session.bytes), 'bytes'],
        ['Drops', String(session.window_drops), 'drops'],
        ['Last use', formatAgo(session.last_used_at), 'last-use'],
      ];
      for (const [label, value, className] of cells) {
        const cell = document.createElement('td');
        // The label the phone layout shows beside each value (the header row is hidden there).
        cell.dataset.label = label;
        cell.className = className;
        cell.textContent = value;
        if (className === 'id') cell.title = value;
        row.append(cell);
      }
      const actions = document.createElement('td');
      actions.className = 'actions';
      const remove = document.createElement('button');
      remove.type = 'button';
      remove.textContent = 'Delete';
      remove.setAttribute('aria-label', `Delete session ${session.id}`);
      remove.addEventListener('click', () => onDelete(session.id));
      actions.append(remove);
      row.append(actions);
      return row;
    }),
  );
}

/**
 * @param {{ used: HTMLElement, reserved: HTMLElement, text: HTMLElement }} bar
 * @param {{ capacity_bytes: number, reserved_bytes: number, used_bytes: number }} kv as GET /v1/stats gives it
 */
export function renderBudget(bar, kv) {
  const share = (/** @type {number} */ bytes) => `${Math.min(100, (bytes / kv.capacity_bytes) * 100).toFixed(2)}%`;
  bar.used.style.width = share(kv.used_bytes);
  bar.reserved.style.width = share(Math.max(0, kv.reserved_bytes - kv.used_bytes));
  bar.text.textContent = `KV budget: ${formatBytes(kv.used_bytes)} used, ${formatBytes(kv.reserved_bytes)} reserved of ${formatBytes(kv.capacity_bytes)}`;
}
