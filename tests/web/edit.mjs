// Editing a plan awaiting approval: an edit that makes a cycle is refused by the server, and its
// message appears on the row of the step it names; an edit into a valid plan (a dependency
// dropped, a step added) is approved and runs to the end.

import { apiCall, dag, expect, run, until } from './lib.mjs';

const base = process.argv[2];

async function setField(page, stepId, name, value) {
  for (const r of await page.locator('tr.edit-step').all()) {
    if ((await r.locator('input[name="id"]').inputValue()) === stepId) {
      await r.locator(`[name="${name}"]`).fill(value);
      return;
    }
  }
  throw new Error(`no editor row for step ${stepId}`);
}

await run('edit', async ({ page }) => {
  const { id } = await apiCall('POST', '/v1/runs', { task: 'Edit me', require_approval: true });
  await page.goto(`${base}/#/runs/${id}`);
  await until(page, 'two nodes', () => document.querySelectorAll('svg.dag g.node').length === 2);
  await page.click('#edit');
  await until(page, 'the editor', () => document.querySelectorAll('tr.edit-step').length === 2);

  // s1 → s2 → s1: a cycle.
  await setField(page, 's1', 'depends_on', 's2');
  await page.click('#approve-edited');
  await until(page, 'the error on a step row', () => document.querySelector('tr.edit-step.has-error .row-error:not([hidden])'));
  const err = await page.evaluate(() => {
    const tr = document.querySelector('tr.edit-step.has-error');
    return { step: tr.querySelector('input[name="id"]').value, text: tr.querySelector('.row-error').textContent };
  });
  expect(['s1', 's2'].includes(err.step) && /cycle/.test(err.text) && err.text.includes(`step ${err.step}`), `error placed at ${JSON.stringify(err)}`);
  console.log(`server's error at step ${err.step}: ${err.text}`);
  expect((await page.textContent('#run-status')) === 'awaiting approval', 'still awaiting approval after a refused edit');

  // Valid: no cycle, plus a new step `mine` after s2.
  await setField(page, 's1', 'depends_on', '');
  await page.click('#add-step');
  await page.locator('tr.edit-step').last().locator('input[name="id"]').fill('mine');
  await page.locator('tr.edit-step').last().locator('[name="description"]').fill('My own step');
  await page.locator('tr.edit-step').last().locator('[name="depends_on"]').fill('s2');
  await page.click('#approve-edited');
  await until(page, 'the edited plan to run to the end', () => {
    const n = [...document.querySelectorAll('svg.dag g.node')];
    return n.length === 3 && n.every((x) => x.dataset.status === 'completed') && document.querySelector('#output');
  });
  const d = await dag(page);
  expect(d.ids.includes('mine') && d.edges.includes('s1->s2') && d.edges.includes('s2->mine') && d.edges.length === 2, `DAG after the edit: ${JSON.stringify(d)}`);
  expect(!(await page.$('tr.edit-step')), 'the editor is gone once the run started');
  const rev = await page.textContent('#revisions');
  expect(rev.includes('edited on approval') && /added\s*mine/.test(rev), `revision shows the edit: ${rev}`);
  await page.click('svg.dag g.node[data-step="mine"]');
  await until(page, 'the output of mine', () => document.querySelector('#detail')?.textContent.includes('edited step ran'));
});
