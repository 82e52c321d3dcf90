// Model text that tries to run code (a <script>, an <img onerror>, a javascript: link, an image
// that would call out) in the final output, a step's output, a tool's arguments and the task:
// it is shown as text, no dialog opens, nothing runs and no request leaves the page
// (lib.mjs records dialogs, foreign requests and CSP violations, and fails on any).

import { apiCall, expect, run, until } from './lib.mjs';

const base = process.argv[2];

await run('xss', async ({ page }) => {
  const { id } = await apiCall('POST', '/v1/runs', { task: 'Report <img src=x onerror="alert(4);window.__xss=4">' });
  await page.goto(`${base}/#/`);
  await until(page, 'the run in the list', () => document.querySelector(`tr.run-row[data-status="completed"]`), null, 20000);
  expect((await page.textContent('tr.run-row')).includes('<img src=x onerror='), 'the task is shown as text');
  await page.goto(`${base}/#/runs/${id}`);
  await until(page, 'the output', () => document.querySelector('#output'));
  await page.click('svg.dag g.node[data-step="s1"]');
  await until(page, 'the step detail', () => document.querySelector('#detail')?.textContent.includes('Attempt 1'));
  await page.waitForTimeout(800); // time for anything that would fire (onerror, timers)

  const found = await page.evaluate(() => ({
    xss: window.__xss,
    scripts: [...document.scripts].map((s) => s.src),
    imgs: document.querySelectorAll('img, iframe, object, embed').length,
    handlers: [...document.querySelectorAll('*')].filter((e) => [...e.attributes].some((a) => a.name.startsWith('on'))).length,
    jsLinks: document.querySelectorAll('a[href^="javascript"]').length,
    output: document.querySelector('#output').textContent,
    strong: document.querySelectorAll('#output strong').length,
    safeLink: document.querySelector('#output a[href="https://example.com/docs"]')?.rel,
    detail: document.querySelector('#detail').textContent,
  }));
  expect(found.xss === undefined, `injected code ran: window.__xss = ${found.xss}`);
  expect(found.scripts.length === 1 && found.scripts[0].endsWith('/ui/app.js'), `scripts: ${found.scripts}`);
  expect(found.imgs === 0, `${found.imgs} img/iframe/object elements were created`);
  expect(found.handlers === 0, `${found.handlers} elements carry inline event handlers`);
  expect(found.jsLinks === 0, 'a javascript: link was made clickable');
  expect(found.output.includes('<script>alert(1);window.__xss=1</script>'), `script shown as text: ${found.output}`);
  expect(found.output.includes('<img src=x onerror='), 'img shown as text');
  expect(found.strong === 1 && found.safeLink?.includes('noopener'), `Markdown still rendered: ${JSON.stringify(found)}`);
  expect(found.detail.includes('<img src=y onerror=') && found.detail.includes('<script>'), `step output and tool arguments shown as text: ${found.detail}`);
});
