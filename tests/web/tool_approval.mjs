// Two parallel steps each want to call write_file, which this run says needs approval: the run
// page shows one card per pending call; approving s2's and rejecting s1's (with a reason) from
// the page answers each call, the cards go away, and the run completes. The event log shows each
// answer reached its own call: only the approved one ran.

import { apiCall, base, expect, run, screenshot, until } from './lib.mjs';

await run('tool_approval', async ({ page }) => {
  const { id } = await apiCall('POST', '/v1/runs', { task: 'Write two notes', policy: { approve_tools: ['write_file'] } });
  await page.goto(`${base}/#/runs/${encodeURIComponent(id)}`);
  await until(page, 'two pending tool calls', () => document.querySelectorAll('section.tool-approval').length === 2);
  const heads = await page.$$eval('section.tool-approval h2', (hs) => hs.map((h) => h.textContent).sort());
  expect(heads[0] === 'Step s1 wants to call write_file' && heads[1] === 'Step s2 wants to call write_file', `cards: ${heads}`);
  const ids = await page.$$eval('section.tool-approval', (cs) => cs.map((c) => c.dataset.approvalId));
  expect(new Set(ids).size === 2, `each call has its own id: ${ids}`);
  await screenshot(page, 'tool-approvals');

  const card = (step) => `section.tool-approval:has(h2:text("Step ${step} wants"))`;
  await page.click(`${card('s2')} button.approve-call`);
  await until(page, "s2's card gone", () => ![...document.querySelectorAll('section.tool-approval h2')].some((h) => h.textContent.startsWith('Step s2')));
  await page.fill(`${card('s1')} input.tool-reject-reason`, 'not this file');
  await page.click(`${card('s1')} button.reject-call`);
  await until(page, 'no card left', () => document.querySelectorAll('section.tool-approval').length === 0);
  await until(page, 'the run completed', () => document.querySelector('#run-status')?.textContent === 'completed');

  // The whole log (the stream ends after the run's last event).
  const log = await (await fetch(`${base}/v1/runs/${encodeURIComponent(id)}/events`)).text();
  const events = log.split('\n').filter((l) => l.startsWith('data: ')).map((l) => JSON.parse(l.slice(6)));
  const resolved = events.filter((e) => e.type === 'ToolApprovalResolved');
  expect(resolved.length === 2, `two answers: ${JSON.stringify(resolved)}`);
  const answer = (step) => JSON.stringify(resolved.find((e) => e.step === step));
  expect(answer('s1').includes('reject') && answer('s1').includes('not this file'), `s1 rejected with the reason: ${answer('s1')}`);
  expect(answer('s2').includes('approve'), `s2 approved: ${answer('s2')}`);
  const returned = events.filter((e) => e.type === 'ToolReturned');
  expect(returned.length === 1 && returned[0].step === 's2' && returned[0].ok, `only s2's call ran: ${JSON.stringify(returned)}`);
});
