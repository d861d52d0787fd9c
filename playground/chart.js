// @ts-check
/**
 * The per-step latency chart of one turn, as inline SVG: a bar per prefill chunk (its duration), then
 * one point per decode step (its latency), on a shared millisecond axis that grows with the data.
 */

const SVG = 'http://www.w3.org/2000/svg';
const HEIGHT = 180;
const PAD = { left: 44, right: 8, top: 10, bottom: 22 };

/** @typedef {import('./api.js').StepStat} StepStat */

/**
 * @param {string} name
 * @param {Record<string, string | number>} attributes
 * @returns {SVGElement}
 */
function element(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

/**
 * A round axis maximum at or above `value` (1, 2, 5 x 10^n).
 * @param {number} value
 */
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

export class StepChart {
  /** @param {SVGSVGElement} svg */
  constructor(svg) {
    this.svg = svg;
    // Drawn in CSS pixels at the chart's own width, so text and points keep their size on a phone.
    new ResizeObserver(() => this.draw()).observe(svg);
    /** @type {StepStat[]} */
    this.steps = [];
    this.pendingFrame = 0;
    this.draw();
  }

  reset() {
    this.steps = [];
    this.draw();
  }

  /** @param {StepStat[]} steps */
  add(steps) {
    this.steps.push(...steps);
    // Many steps can arrive within one frame; draw once per frame.
    if (!this.pendingFrame) this.pendingFrame = requestAnimationFrame(() => {
      this.pendingFrame = 0;
      this.draw();
    });
  }

  get decodeSteps() {
    return this.steps.filter((s) => s.type === 'decode').length;
  }

  draw() {
    const svg = this.svg;
    const WIDTH = Math.max(240, Math.round(svg.getBoundingClientRect().width) || 600);
    svg.setAttribute('viewBox', `0 0 ${WIDTH} ${HEIGHT}`);
    svg.setAttribute('height', String(HEIGHT));
    svg.replaceChildren();
    const steps = this.steps;
    const decode = steps.filter((s) => s.type === 'decode');
    const prefill = steps.filter((s) => s.type === 'prefill');
    const top = niceMax(Math.max(0, ...steps.map((s) => s.ms)));
    const plotWidth = WIDTH - PAD.left - PAD.right;
    const plotHeight = HEIGHT - PAD.top - PAD.bottom;
    const slots = Math.max(steps.length, 10);
    const x = (/** @type {number} */ i) => PAD.left + ((i + 0.5) / slots) * plotWidth;
    const y = (/** @type {number} */ ms) => PAD.top + plotHeight - (ms / top) * plotHeight;

    for (const fraction of [0, 0.5, 1]) {
      const yy = y(top * fraction);
      svg.append(element('line', { x1: PAD.left, x2: WIDTH - PAD.right, y1: yy, y2: yy, class: 'grid' }));
      const label = element('text', { x: PAD.left - 6, y: yy + 4, class: 'axis', 'text-anchor': 'end' });
      label.textContent = `${+(top * fraction).toPrecision(3)} ms`;
      svg.append(label);
    }
    const xLabel = element('text', { x: WIDTH - PAD.right, y: HEIGHT - 6, class: 'axis', 'text-anchor': 'end' });
    xLabel.textContent = `${prefill.length} prefill chunk${prefill.length === 1 ? '' : 's'}, ${decode.length} decode step${decode.length === 1 ? '' : 's'}`;
    svg.append(xLabel);

    const barWidth = Math.max(2, (plotWidth / slots) * 0.7);
    /** @type {string[]} */
    const points = [];
    steps.forEach((step, i) => {
      if (step.type === 'prefill') {
        const bar = element('rect', { x: x(i) - barWidth / 2, y: y(step.ms), width: barWidth, height: Math.max(1, y(0) - y(step.ms)), class: 'prefill' });
        const title = element('title', {});
        title.textContent = `prefill chunk: ${step.tokens} tokens in ${step.ms} ms`;
        bar.append(title);
        svg.append(bar);
      } else {
        points.push(`${x(i).toFixed(1)},${y(step.ms).toFixed(1)}`);
      }
    });
    if (points.length > 1) svg.append(element('polyline', { points: points.join(' '), class: 'decode-line' }));
    const radius = steps.length > 120 ? 1.5 : 3;
    steps.forEach((step, i) => {
      if (step.type !== 'decode') return;
      const point = element('circle', { cx: x(i), cy: y(step.ms), r: radius, class: 'decode-step' });
      const title = element('title', {});
      title.textContent = `decode step: ${step.ms} ms, batch of ${step.batch}`;
      point.append(title);
      svg.append(point);
    });
    svg.dataset.decodeSteps = String(decode.length);
    svg.dataset.prefillChunks = String(prefill.length);
    const mean = decode.length ? decode.reduce((sum, s) => sum + s.ms, 0) / decode.length : 0;
    svg.setAttribute(
      'aria-label',
      decode.length || prefill.length
        ? `Step latency: ${prefill.length} prefill chunks, ${decode.length} decode steps, mean decode step ${mean.toFixed(2)} ms.`
        : 'Step latency: no steps yet.',
    );
  }
}
