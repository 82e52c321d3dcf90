// The plan as a DAG in SVG: steps are placed in layers left to right by their longest path from
// a step without dependencies, ordered within a layer by where their dependencies sit (fewer
// crossings), and edges run from a dependency to its dependent.

import { s } from './dom.js';
import { clip } from './format.js';

const W = 196; // node width
const H = 58; // node height
const COL = 64; // gap between layers
const ROW = 14; // gap between nodes of a layer
const PAD = 12;

/** Layer of each step: 0 without dependencies, else 1 + the deepest dependency (cycles cut). */
export function layers(steps) {
  const byId = new Map(steps.map((st) => [st.id, st]));
  const depth = new Map();
  const visiting = new Set();
  const visit = (id) => {
    if (depth.has(id)) return depth.get(id);
    if (visiting.has(id)) return 0;
    visiting.add(id);
    let d = 0;
    for (const dep of byId.get(id).depends_on) if (byId.has(dep)) d = Math.max(d, visit(dep) + 1);
    visiting.delete(id);
    depth.set(id, d);
    return d;
  };
  for (const st of steps) visit(st.id);
  return depth;
}

/** Positions {id → {x, y}} and the drawing's size. */
export function layout(steps) {
  const depth = layers(steps);
  const columns = [];
  for (const st of steps) (columns[depth.get(st.id)] ||= []).push(st);
  const row = new Map();
  columns.forEach((col, c) => {
    if (c > 0) {
      // Barycentre of the dependencies' rows; ties keep plan order.
      const key = (st) => {
        const rows = st.depends_on.filter((d) => row.has(d)).map((d) => row.get(d));
        return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : Infinity;
      };
      col.sort((a, b) => key(a) - key(b));
    }
    col.forEach((st, r) => row.set(st.id, r));
  });
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  const pos = new Map();
  columns.forEach((col, c) => {
    // Centre short columns against the tallest one.
    const offset = ((tallest - col.length) * (H + ROW)) / 2;
    col.forEach((st, r) => pos.set(st.id, { x: PAD + c * (W + COL), y: PAD + offset + r * (H + ROW) }));
  });
  return { pos, width: PAD * 2 + columns.length * (W + COL) - COL, height: PAD * 2 + tallest * (H + ROW) - ROW };
}

/**
 * The SVG of `nodes` ([{id, description, tool, depends_on, status, attempts}]); `selected` is
 * highlighted and `onSelect(id)` called on a click.
 */
export function renderDag(nodes, { selected, onSelect } = {}) {
  const { pos, width, height } = layout(nodes);
  const w = Math.max(width, 200);
  const ht = Math.max(height, 80);
  const svg = s('svg', { class: 'dag', viewBox: `0 0 ${w} ${ht}`, role: 'img', 'aria-label': `plan with ${nodes.length} steps` });
  // Fit the box when that costs at most a third of the size; beyond that keep text readable and scroll.
  svg.style.width = '100%';
  svg.style.maxWidth = `${w}px`;
  svg.style.minWidth = `${Math.round(w * 0.67)}px`;
  svg.append(
    s('defs', {}, [
      s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, [
        s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' }),
      ]),
    ]),
  );
  const status = new Map(nodes.map((n) => [n.id, n.status]));
  const edges = s('g', { class: 'edges' });
  for (const n of nodes) {
    const to = pos.get(n.id);
    for (const dep of n.depends_on) {
      const from = pos.get(dep);
      if (!from) continue;
      const x1 = from.x + W;
      const y1 = from.y + H / 2;
      const x2 = to.x;
      const y2 = to.y + H / 2;
      const mid = (x1 + x2) / 2;
      edges.append(
        s('path', {
          class: `edge from-${status.get(dep)}`,
          d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2 - 1},${y2}`,
          'marker-end': 'url(#arrow)',
          dataset: { from: dep, to: n.id },
        }),
      );
    }
  }
  svg.append(edges);
  for (const n of nodes) {
    const { x, y } = pos.get(n.id);
    const retries = n.attempts > 1 ? ` ×${n.attempts}` : '';
    const g = s(
      'g',
      {
        class: `node st-${n.status}${n.id === selected ? ' selected' : ''}`,
        transform: `translate(${x},${y})`,
        tabindex: 0,
        role: 'button',
        dataset: { step: n.id, status: n.status },
        onclick: () => onSelect?.(n.id),
        onkeydown: (ev) => (ev.key === 'Enter' || ev.key === ' ') && onSelect?.(n.id),
      },
      [
        s('title', { text: `${n.id} (${n.status}${retries})\n${n.description}${n.tool ? `\ntool: ${n.tool}` : ''}` }),
        s('rect', { class: 'box', width: W, height: H, rx: 7 }),
        s('rect', { class: 'bar', width: 5, height: H, rx: 2 }),
        s('text', { class: 'id', x: 13, y: 20, text: clip(n.id, 18) + retries }),
        s('text', { class: 'tool', x: W - 9, y: 20, 'text-anchor': 'end', text: clip(n.tool || '', 14) }),
        s('text', { class: 'desc', x: 13, y: 42, text: clip(n.description, 29) }),
      ],
    );
    svg.append(g);
  }
  return svg;
}
