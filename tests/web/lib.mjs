// Shared harness of the browser scenarios: the system Chromium driven by playwright-core, with a
// fresh profile, a watchdog so nothing hangs, and a record of everything that must never happen
// on the page (a dialog, a request to another origin, an uncaught error, a CSP violation).
// Usage: node tests/web/<scenario>.mjs <base url>; exit 0 on success, 1 with the reason otherwise.

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const base = process.argv[2];
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const artifacts = process.env.ARTIFACTS || join(tmpdir(), 'stepwise-web-artifacts');

/** Throws with `message` unless `cond`. */
export function expect(cond, message) {
  if (!cond) throw new Error(message);
}

/** Calls the API from node (setting up a scenario, not what is tested). */
export async function apiCall(method, path, body, token) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await r.json();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

/** Waits until `fn(arg)` is truthy in the page; the message says what was awaited. */
export async function until(page, what, fn, arg, timeout = 20000) {
  try {
    return await page.waitForFunction(fn, arg, { timeout, polling: 50 });
  } catch (e) {
    throw new Error(`timed out waiting for ${what}: ${e.message.split('\n')[0]}`);
  }
}

/** Saves a screenshot under $ARTIFACTS and returns its path. */
export async function screenshot(page, name, fullPage = true) {
  mkdirSync(artifacts, { recursive: true });
  const path = join(artifacts, `${name}.png`);
  await page.screenshot({ path, fullPage });
  return path;
}

/**
 * Runs `scenario({page, context, problems})` in a fresh browser; fails the process on any
 * exception or recorded problem, or after `timeoutMs`.
 */
export async function run(name, scenario, { timeoutMs = 90000 } = {}) {
  expect(base && /^http:\/\/127\.0\.0\.1:\d+$/.test(base), `usage: node ${name}.mjs http://127.0.0.1:PORT (got ${base})`);
  const watchdog = setTimeout(() => {
    console.error(`${name}: FAILED: timed out after ${timeoutMs} ms`);
    process.exit(3);
  }, timeoutMs);
  const profile = mkdtempSync(join(tmpdir(), 'stepwise-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 1440, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const problems = [];
  const watch = (page) => {
    page.on('pageerror', (e) => problems.push(`uncaught error in the page: ${e.message}`));
    page.on('dialog', (d) => {
      problems.push(`a ${d.type()} dialog opened: ${d.message()}`);
      d.dismiss().catch(() => {});
    });
    page.on('console', (m) => {
      // Failed API answers (401, 422) are logged by Chromium as errors and are expected;
      // a Content-Security-Policy violation never is.
      if (/Content Security Policy|Refused to/i.test(m.text())) problems.push(`CSP violation: ${m.text()}`);
    });
  };
  context.on('page', watch);
  context.on('request', (r) => {
    if (!r.url().startsWith(`${base}/`)) problems.push(`a request left the page: ${r.method()} ${r.url()}`);
  });
  const page = context.pages()[0] || (await context.newPage());
  watch(page);
  let failed = null;
  try {
    await scenario({ page, context, problems });
    if (problems.length) failed = problems.join('\n');
  } catch (e) {
    failed = `${e.stack || e}${problems.length ? `\nalso:\n${problems.join('\n')}` : ''}`;
    await screenshot(page, `${name}-failure`).then((p) => console.error(`screenshot: ${p}`)).catch(() => {});
  }
  clearTimeout(watchdog);
  await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  if (failed) {
    console.error(`${name}: FAILED: ${failed}`);
    process.exit(1);
  }
  console.log(`${name}: ok`);
  process.exit(0);
}

/** Counts of the DAG's nodes, edges, and nodes per status. */
export async function dag(page) {
  return page.evaluate(() => {
    const nodes = [...document.querySelectorAll('svg.dag g.node')];
    const by = {};
    for (const n of nodes) by[n.dataset.status] = (by[n.dataset.status] || 0) + 1;
    return {
      nodes: nodes.length,
      ids: nodes.map((n) => n.dataset.step),
      edges: [...document.querySelectorAll('svg.dag path.edge')].map((e) => `${e.dataset.from}->${e.dataset.to}`),
      by,
    };
  });
}
