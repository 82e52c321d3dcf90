// A 50-step run (10 layers of 5, each step depending on the whole layer before it): every node
// is drawn, no two nodes overlap and no label is cut off by its neighbour, and the time from
// opening the run's page to its whole DAG, timeline and output being shown is printed (a
// figure, not a timed assertion).

import { dag, expect, run, screenshot, until, apiCall } from './lib.mjs';

await run('large', async ({ page }) => {
  const { id } = await apiCall('POST', '/v1/runs', { task: 'A wide and deep plan' });
  for (let i = 0; i < 200; i++) {
    const r = await apiCall('GET', `/v1/runs/${id}`);
    if (r.status === 'completed') break;
    expect(!['failed', 'cancelled'].includes(r.status), `the run ended ${r.status}: ${r.error}`);
    await new Promise((res) => setTimeout(res, 100));
  }
  const t0 = Date.now();
  await page.goto(`${process.argv[2]}/#/runs/${id}`);
  await until(page, 'fifty completed nodes', () => {
    const n = [...document.querySelectorAll('svg.dag g.node')];
    return n.length === 50 && n.every((x) => x.dataset.status === 'completed');
  });
  await until(page, 'the timeline and the output', () =>
    document.querySelectorAll('.gantt rect.attempt').length === 50 && document.querySelector('#output p'));
  const shown = Date.now() - t0;
  const d = await dag(page);
  expect(d.edges.length === 9 * 25, `expected 225 edges, got ${d.edges.length}`);
  const boxes = await page.evaluate(() =>
    [...document.querySelectorAll('svg.dag g.node')].map((n) => {
      const r = n.getBoundingClientRect();
      return { id: n.dataset.step, x: r.x, y: r.y, w: r.width, h: r.height };
    }));
  for (const a of boxes) {
    expect(a.w > 40 && a.h > 16, `node ${a.id} is too small to read: ${a.w}×${a.h}`);
    for (const b of boxes) {
      if (a.id >= b.id) continue;
      const apart = a.x + a.w <= b.x || b.x + b.w <= a.x || a.y + a.h <= b.y || b.y + b.h <= a.y;
      expect(apart, `nodes ${a.id} and ${b.id} overlap`);
    }
  }
  await screenshot(page, 'run-page-50-steps');
  console.log(`large: a 50-step run's page shown in ${shown} ms`);
});
