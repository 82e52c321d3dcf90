// With tokens configured: without a token the page asks for one and shows no run data; a wrong
// token gets a clear message; the right one shows the runs, is kept for the tab only
// (sessionStorage: a reload keeps it, another tab does not have it) and is sent with every
// request, the event stream included.

import { expect, run, until } from './lib.mjs';

const base = process.argv[2];
const token = process.env.TOKEN;
const secret = 'confidential quarterly numbers';

await run('auth', async ({ page, context }) => {
  const streamAuth = [];
  page.on('request', (r) => r.url().includes('/events') && streamAuth.push(r.headers().authorization || ''));

  await page.goto(`${base}/`);
  await until(page, 'the token form', () => document.querySelector('#auth-form'));
  const noRunData = async (when) => {
    const body = await page.textContent('body');
    expect(!body.includes(secret) && !(await page.$('tr.run-row')) && !(await page.$('table.runs')), `run data shown ${when}`);
  };
  await noRunData('without a token');
  expect(!(await page.$('#auth-error')), 'no error before a token was tried');

  await page.fill('#token', 'not-the-token');
  await page.click('#auth-form button[type="submit"]');
  await until(page, 'the refusal message', () => document.querySelector('#auth-error'));
  const msg = await page.textContent('#auth-error');
  expect(/refused this token/.test(msg) && msg.includes('STEPWISE_API_TOKENS'), `message: ${msg}`);
  await noRunData('with a wrong token');
  expect((await page.evaluate(() => sessionStorage.length)) === 0, 'a refused token is not kept');

  await page.fill('#token', token);
  await page.click('#auth-form button[type="submit"]');
  await until(page, 'the run in the list', () => document.querySelector('tr.run-row'));
  expect((await page.textContent('tr.run-row')).includes(secret), 'the run is listed');
  expect((await page.evaluate(() => sessionStorage.getItem('stepwise.token'))) === token, 'token kept in sessionStorage');
  expect((await page.evaluate(() => localStorage.length)) === 0, 'nothing in localStorage');

  await page.reload();
  await until(page, 'the list after a reload', () => document.querySelector('tr.run-row'));
  await page.click('tr.run-row a');
  await until(page, 'the DAG over the authenticated event stream', () => document.querySelectorAll('svg.dag g.node').length === 1);
  expect(streamAuth.length > 0 && streamAuth.every((a) => a === `Bearer ${token}`), `event stream Authorization: ${streamAuth}`);

  const other = await context.newPage();
  await other.goto(`${base}/`);
  await until(other, 'the token form in another tab', () => document.querySelector('#auth-form'));
  expect(!(await other.textContent('body')).includes(secret), 'another tab shows no run data');
  await other.close();
});
