// A run whose step s2 keeps failing: after its retry the replanner replaces it. Both revisions
// are listed with the replanner's reason and what changed (s2 removed, s2b added, s3 changed,
// s1 kept), the DAG shows the new plan, and the timeline keeps s2's two failed attempts.

import { apiCall, dag, expect, run, screenshot, until } from './lib.mjs';

const base = process.argv[2];

await run('replan', async ({ page }) => {
  const { id } = await apiCall('POST', '/v1/runs', { task: 'Fetch and publish the dataset' });
  await page.goto(`${base}/#/runs/${id}`);
  await until(page, 'two revisions', () => document.querySelectorAll('#revisions article.revision').length === 2);
  await until(page, 'the run to complete', () => document.querySelector('#run-status')?.textContent === 'completed');
  const revs = await page.evaluate(() =>
    [...document.querySelectorAll('#revisions article.revision')].map((a) => ({
      n: a.dataset.revision,
      reason: a.querySelector('.reason').textContent,
      change: Object.fromEntries([...a.querySelectorAll('.change')].map((c) => [c.dataset.kind, [...c.querySelectorAll('code')].map((x) => x.textContent)])),
    })),
  );
  expect(revs[0].n === '1' && revs[1].n === '2', `revisions: ${JSON.stringify(revs)}`);
  expect(revs[1].reason.includes('the primary mirror keeps timing out'), `reason: ${revs[1].reason}`);
  const c = revs[1].change;
  expect(JSON.stringify(c.removed) === '["s2"]', `removed: ${JSON.stringify(c)}`);
  expect(JSON.stringify(c.added) === '["s2b"]', `added: ${JSON.stringify(c)}`);
  expect(JSON.stringify(c.changed) === '["s3"]', `changed: ${JSON.stringify(c)}`);
  expect(JSON.stringify(c.kept) === '["s1"]', `kept: ${JSON.stringify(c)}`);

  const d = await dag(page);
  expect(JSON.stringify(d.ids.sort()) === '["s1","s2b","s3"]' && d.by.completed === 3, `DAG: ${JSON.stringify(d)}`);
  const removed = await page.evaluate(() => [...document.querySelectorAll('.gantt .grow.removed[data-step="s2"] rect.attempt')].map((r) => r.getAttribute('class')));
  expect(removed.length === 2 && removed.every((k) => k.includes('at-failed')), `s2 on the timeline: ${removed}`);
  await screenshot(page, 'replan-page');
});
