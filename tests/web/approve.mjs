// A run submitted from the page with require_approval: its DAG has one node per step and one
// edge per dependency, all pending; one click on Approve starts it, and the nodes turn running,
// then completed, live, without a reload. Also: retries on the timeline, a step's tool call in
// its detail, the Markdown output, the runs list's counts, and the screenshot of the run page.

import { dag, expect, run, screenshot, until } from './lib.mjs';

await run('approve', async ({ page }) => {
  await page.goto(`${process.argv[2]}/#/new`);
  await page.fill('#task', 'Prepare the release notes');
  await page.check('#require_approval');
  await page.click('#submit-run');
  await until(page, 'the run page', () => location.hash.startsWith('#/runs/'));
  await until(page, 'five DAG nodes', () => document.querySelectorAll('svg.dag g.node').length === 5);
  let d = await dag(page);
  expect(d.edges.length === 5, `expected 5 edges, got ${d.edges}`);
  for (const e of ['s1->s2', 's1->s3', 's2->s4', 's3->s4', 's4->s5']) expect(d.edges.includes(e), `edge ${e} missing: ${d.edges}`);
  expect(d.by.pending === 5, `all pending before approval: ${JSON.stringify(d.by)}`);
  expect(await page.isVisible('#approve'), 'the Approve button is shown');
  const status = await page.textContent('#run-status');
  expect(status === 'awaiting approval', `status badge: ${status}`);

  // A marker that a reload would wipe.
  await page.evaluate(() => (window.__sameDocument = true));
  await page.click('#approve');
  await until(page, 'a running node', () => document.querySelector('svg.dag g.node[data-status="running"]'));
  await until(page, 'a completed node while others are not yet', () => {
    const n = [...document.querySelectorAll('svg.dag g.node')];
    return n.some((x) => x.dataset.status === 'completed') && n.some((x) => x.dataset.status !== 'completed');
  });
  await until(page, 'every node completed', () => {
    const n = [...document.querySelectorAll('svg.dag g.node')];
    return n.length === 5 && n.every((x) => x.dataset.status === 'completed');
  });
  await until(page, 'the final output', () => document.querySelector('#output h1'));
  expect(await page.evaluate(() => window.__sameDocument === true), 'the page was reloaded');
  expect((await page.textContent('#run-status')) === 'completed', 'run status completed');

  // s3 failed once and was retried: two bars on its timeline row, the first failed.
  const s3 = await page.evaluate(() => [...document.querySelectorAll('.gantt .grow[data-step="s3"] rect.attempt')].map((r) => r.getAttribute('class')));
  expect(s3.length === 2 && s3[0].includes('at-failed') && s3[1].includes('at-completed'), `s3 attempts on the timeline: ${s3}`);
  expect((await page.textContent('svg.dag g.node[data-step="s3"] text.id')).includes('×2'), 's3 node shows its two attempts');

  // The detail of s2 shows its tool call with arguments and observation, and its output.
  await page.click('svg.dag g.node[data-step="s2"]');
  await until(page, 'the detail of s2', () => document.querySelector('#detail h2')?.textContent === 'Step s2');
  const detail = await page.textContent('#detail');
  for (const want of ['write_file', 'notes.md', 'wrote notes.md', 'arguments', 'observation']) expect(detail.includes(want), `detail lacks ${want}: ${detail}`);
  const output = await page.textContent('#output');
  expect(output.includes('Release report') && output.includes('five'), `output: ${output}`);
  expect(await page.$('#output table td'), 'the Markdown table is rendered');
  expect((await page.textContent('#revisions')).includes('Revision 1'), 'revision 1 listed');
  // The trace link names the run's trace id: its run id's hex digits.
  const runId = decodeURIComponent(await page.evaluate(() => location.hash.split('/')[2]));
  const href = await page.getAttribute('#trace-link', 'href');
  expect(href === `http://127.0.0.1:9/trace/${runId.replaceAll('-', '')}`, `trace link: ${href} for run ${runId}`);
  await screenshot(page, 'run-page');

  // The runs list shows it completed with its step count and usage.
  await page.click('header nav a[href="#/"]');
  await until(page, 'the run in the list', () => document.querySelector('tr.run-row[data-status="completed"] td.num')?.textContent === '5/5');
  const row = await page.textContent('tr.run-row');
  expect(row.includes('Prepare the release notes'), `row: ${row}`);
  expect(!(await page.textContent('tr.run-row td:nth-child(5)')).includes('…'), 'token usage shown');
  await screenshot(page, 'runs-list');
});
