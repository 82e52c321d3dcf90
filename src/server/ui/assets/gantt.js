// The timeline of step attempts, from the events' timestamps: one row per step (steps a replan
// removed included), one bar per attempt, so retries sit side by side; tool calls are ticks.

import { s } from './dom.js';
import { clip, duration } from './format.js';

const LABEL = 150; // width of the step names
const ROW = 24;
const AXIS = 22;

/** Evenly spaced "nice" tick interval for `total` ms over roughly 6 ticks. */
function tickEvery(total) {
  const raw = total / 6;
  const steps = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 15000, 30000, 60000, 120000, 300000, 600000, 1800000, 3600000];
  return steps.find((x) => x >= raw) || 3600000;
}

/**
 * An SVG timeline of `model.records` that have at least one attempt, `width` pixels wide;
 * `onSelect(id)` is called when a row is clicked.
 */
export function renderGantt(model, width, { selected, onSelect } = {}) {
  const rows = model.records.filter((r) => r.attempts.length);
  const t0 = Date.parse(model.createdAt);
  const tEnd = model.finishedAt ? Date.parse(model.finishedAt) : Date.now();
  const total = Math.max(tEnd - t0, 1);
  const plot = Math.max(width - LABEL - 16, 120);
  const x = (iso) => LABEL + ((iso ? Date.parse(iso) : tEnd) - t0) / total * plot;
  const height = AXIS + rows.length * ROW + 6;
  const svg = s('svg', { class: 'gantt', width, height, viewBox: `0 0 ${width} ${height}` });
  const every = tickEvery(total);
  for (let t = 0; t <= total; t += every) {
    const tx = LABEL + (t / total) * plot;
    svg.append(s('line', { class: 'tick', x1: tx, x2: tx, y1: AXIS - 4, y2: height }));
    svg.append(s('text', { class: 'axis', x: tx, y: AXIS - 8, 'text-anchor': 'middle', text: duration(t) }));
  }
  rows.forEach((r, i) => {
    const y = AXIS + i * ROW;
    const row = s('g', {
      class: `grow${r.id === selected && !r.removedIn ? ' selected' : ''}${r.removedIn ? ' removed' : ''}`,
      dataset: { step: r.id },
      onclick: () => !r.removedIn && onSelect?.(r.id),
    });
    row.append(s('rect', { class: 'rowbg', x: 0, y, width, height: ROW }));
    const label = r.removedIn ? `${r.id} (rev ${r.revision})` : r.id;
    row.append(s('text', { class: 'label', x: 6, y: y + 16, text: clip(label, 20) }));
    for (const a of r.attempts) {
      const x1 = x(a.start);
      const x2 = Math.max(x(a.end), x1 + 2);
      row.append(
        s('rect', { class: `attempt at-${a.status}`, x: x1, y: y + 4, width: x2 - x1, height: ROW - 8, rx: 3, dataset: { attempt: a.n } }, [
          s('title', { text: `${r.id} attempt ${a.n}: ${a.status}, ${duration(Date.parse(a.end || model.lastAt) - Date.parse(a.start))}` }),
        ]),
      );
      if (a.n > 1 && x2 - x1 > 18) row.append(s('text', { class: 'retry', x: x1 + 4, y: y + 16, text: `#${a.n}` }));
      for (const t of a.tools) row.append(s('line', { class: `call${t.ok === false ? ' bad' : ''}`, x1: x(t.start), x2: x(t.start), y1: y + 3, y2: y + ROW - 3 }));
    }
    svg.append(row);
  });
  return svg;
}
