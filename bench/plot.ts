/**
 * A small SVG line-plot writer for benchmark results, without dependencies: side-by-side panels, each
 * with its own axes, any number of series, an optional log2 x axis (concurrency levels) and dashed
 * reference lines (goals).
 */

export interface Series {
  name: string;
  points: ReadonlyArray<readonly [number, number]>;
  color?: string;
  dashed?: boolean;
}

export interface Panel {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** Ticks on the x axis; default the x values of the points. */
  xTicks?: number[];
  /** Log2 x axis (for 1, 4, 8, 16, 32). */
  xLog2?: boolean;
  /** Horizontal reference lines with a label, drawn dashed. */
  references?: Array<{ y: number; label: string }>;
}

export interface PlotOptions {
  title?: string;
  /** A line of small print under the panels (model, machine). */
  note?: string;
  panelWidth?: number;
  panelHeight?: number;
}

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b'];

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** 1, 2 or 5 times a power of ten, so that about `count` steps cover `max`. */
export function niceStep(max: number, count = 5): number {
  if (!(max > 0)) return 1;
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const scaled = raw / power;
  return (scaled <= 1 ? 1 : scaled <= 2 ? 2 : scaled <= 5 ? 5 : 10) * power;
}

function formatTick(value: number): string {
  if (value === 0) return '0';
  if (Math.abs(value) >= 1000) return `${Math.round(value / 100) / 10}k`.replace('.0k', 'k');
  return String(Math.round(value * 1000) / 1000);
}

function panelSvg(panel: Panel, x0: number, y0: number, width: number, height: number, colorOffset: number): string {
  const margin = { left: 62, right: 16, top: 30, bottom: 64 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const all = panel.series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]);
  const ticksX = panel.xTicks ?? [...new Set(xs)].sort((a, b) => a - b);
  const fx = panel.xLog2 ? (v: number) => Math.log2(Math.max(v, 1e-9)) : (v: number) => v;
  const xMin = Math.min(...ticksX.map(fx), ...xs.map(fx));
  const xMax = Math.max(...ticksX.map(fx), ...xs.map(fx));
  const yValues = [...all.map((p) => p[1]), ...(panel.references ?? []).map((r) => r.y)].filter(Number.isFinite);
  const step = niceStep(Math.max(...yValues, 0) * 1.08);
  const yMax = Math.max(step, Math.ceil((Math.max(...yValues, 0) * 1.05) / step) * step);
  const px = (v: number) => x0 + margin.left + (xMax === xMin ? plotW / 2 : ((fx(v) - xMin) / (xMax - xMin)) * plotW);
  const py = (v: number) => y0 + margin.top + plotH - (v / yMax) * plotH;
  const out: string[] = [];
  out.push(`<text x="${x0 + margin.left + plotW / 2}" y="${y0 + 18}" text-anchor="middle" font-size="14" font-weight="bold">${escapeXml(panel.title)}</text>`);
  for (let v = 0; v <= yMax + step / 2; v += step) {
    const y = py(v).toFixed(1);
    out.push(`<line x1="${x0 + margin.left}" x2="${x0 + margin.left + plotW}" y1="${y}" y2="${y}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${x0 + margin.left - 6}" y="${y}" dy="4" text-anchor="end" font-size="11">${formatTick(v)}</text>`);
  }
  for (const t of ticksX) {
    const x = px(t).toFixed(1);
    out.push(`<line x1="${x}" x2="${x}" y1="${y0 + margin.top}" y2="${y0 + margin.top + plotH}" stroke="#f0f0f0"/>`);
    out.push(`<text x="${x}" y="${y0 + margin.top + plotH + 16}" text-anchor="middle" font-size="11">${formatTick(t)}</text>`);
  }
  out.push(`<rect x="${x0 + margin.left}" y="${y0 + margin.top}" width="${plotW}" height="${plotH}" fill="none" stroke="#444"/>`);
  out.push(`<text x="${x0 + margin.left + plotW / 2}" y="${y0 + margin.top + plotH + 34}" text-anchor="middle" font-size="12">${escapeXml(panel.xLabel)}</text>`);
  const yLabelX = x0 + 16;
  const yLabelY = y0 + margin.top + plotH / 2;
  out.push(`<text x="${yLabelX}" y="${yLabelY}" text-anchor="middle" font-size="12" transform="rotate(-90 ${yLabelX} ${yLabelY})">${escapeXml(panel.yLabel)}</text>`);
  for (const ref of panel.references ?? []) {
    const y = py(ref.y).toFixed(1);
    out.push(`<line x1="${x0 + margin.left}" x2="${x0 + margin.left + plotW}" y1="${y}" y2="${y}" stroke="#888" stroke-dasharray="5 4"/>`);
    out.push(`<text x="${x0 + margin.left + 4}" y="${y}" dy="-4" font-size="10" fill="#555">${escapeXml(ref.label)}</text>`);
  }
  const legend: string[] = [];
  panel.series.forEach((series, i) => {
    const color = series.color ?? PALETTE[(i + colorOffset) % PALETTE.length];
    const points = series.points.filter((p) => Number.isFinite(p[1]));
    const dash = series.dashed ? ' stroke-dasharray="6 4"' : '';
    if (points.length > 1) {
      const d = points.map((p, k) => `${k === 0 ? 'M' : 'L'}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(' ');
      out.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="2"${dash}/>`);
    }
    for (const p of points) out.push(`<circle cx="${px(p[0]).toFixed(1)}" cy="${py(p[1]).toFixed(1)}" r="3.5" fill="${color}"><title>${escapeXml(`${series.name}: ${formatTick(p[0])} -> ${formatTick(p[1])}`)}</title></circle>`);
    const lx = x0 + margin.left + 4 + (i % 2) * (plotW / 2);
    const ly = y0 + margin.top + plotH + 50 + Math.floor(i / 2) * 14;
    legend.push(`<line x1="${lx}" x2="${lx + 18}" y1="${ly - 4}" y2="${ly - 4}" stroke="${color}" stroke-width="2"${dash}/>`);
    legend.push(`<text x="${lx + 22}" y="${ly}" font-size="11">${escapeXml(series.name)}</text>`);
  });
  return [...out, ...legend].join('\n');
}

/** An SVG document with the panels side by side. */
export function plotSvg(panels: Panel[], options: PlotOptions = {}): string {
  const panelWidth = options.panelWidth ?? 400;
  const panelHeight = options.panelHeight ?? 320;
  const legendRows = Math.max(...panels.map((p) => Math.ceil(p.series.length / 2)), 1);
  const top = options.title ? 30 : 0;
  const bottom = (options.note ? 22 : 0) + (legendRows - 1) * 14;
  const width = panelWidth * panels.length;
  const height = top + panelHeight + bottom;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
  ];
  if (options.title) parts.push(`<text x="${width / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">${escapeXml(options.title)}</text>`);
  let offset = 0;
  panels.forEach((panel, i) => {
    parts.push(panelSvg(panel, i * panelWidth, top, panelWidth, panelHeight, offset));
    offset += panel.series.length;
  });
  if (options.note) parts.push(`<text x="8" y="${height - 8}" font-size="10" fill="#555">${escapeXml(options.note)}</text>`);
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
