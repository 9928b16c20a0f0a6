// The status page in Debian's headless Chromium, driven by playwright-core
// (tests/system/status.sh runs it). Checks, printing one PASS/FAIL line each:
//   1. the page renders, lists the upstreams named in UPSTREAMS, and loads
//      nothing from anywhere but the mirror (no CSP violation either);
//   2. after PULL_CMD pulls IMAGE through the mirror, the open page shows
//      the pull by itself (its live refresh), with the cache's counts;
//   3. with JavaScript off, the page still renders the same data;
// and saves screenshots to SHOT_DIR (status-before.png, status.png).
//
// Environment: MIRROR (http://host:port), UPSTREAMS (comma-separated),
// IMAGE (the recent-pull row's data-image, e.g. docker.io/library/small:latest),
// PULL_CMD (a shell command), SHOT_DIR, CHROMIUM (default /usr/bin/chromium).
import { execSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const env = (k) => {
  const v = process.env[k];
  if (!v) { console.error(`status-page.mjs: ${k} is not set`); process.exit(2); }
  return v;
};
const mirror = env('MIRROR');
const upstreams = env('UPSTREAMS').split(',');
const image = env('IMAGE');
const pullCmd = env('PULL_CMD');
const shots = env('SHOT_DIR');
mkdirSync(shots, { recursive: true });

let failed = 0;
const ok = (name) => console.log(`PASS: ${name}`);
const bad = (name, why) => { console.log(`FAIL: ${name}: ${why}`); failed++; };
const check = (name, cond, why) => (cond ? ok(name) : bad(name, why));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // Without these, Chromium reaches for Google's hosts at start.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const foreign = [];
  const problems = [];
  page.on('request', (r) => { if (!r.url().startsWith(mirror)) foreign.push(r.url()); });
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(String(e)));

  const resp = await page.goto(`${mirror}/`, { waitUntil: 'load' });
  check('1a the page answers 200 as HTML', resp.status() === 200
    && (resp.headers()['content-type'] || '').startsWith('text/html'),
    `${resp.status()} ${resp.headers()['content-type']}`);
  check('1b its title', (await page.title()) === 'mirrorgate status', await page.title());
  const shown = await page.$$eval('#upstreams tr[data-upstream]', (rows) => rows.map((r) => r.dataset.upstream));
  check('1c every upstream is listed', upstreams.every((u) => shown.includes(u)),
    `want ${upstreams}, page lists ${shown}`);
  const breakers = await page.$$eval('#upstreams tr[data-upstream]', (rows) => rows.map((r) => r.dataset.breaker));
  check('1d every breaker closed', breakers.every((b) => b === 'closed'), `${breakers}`);
  await page.screenshot({ path: `${shots}/status-before.png`, fullPage: true });

  // The pull happens while the page is open; it must show up by itself.
  const before = await page.$eval('#last-hour [data-requests-upstream]', (e) => e.textContent);
  execSync(pullCmd, { stdio: 'inherit', shell: '/bin/bash' });
  let row = null;
  try {
    row = await page.waitForSelector(`#pulls tr[data-image="${image}"]`, { timeout: 30000 });
  } catch (e) {
    bad('2a the pull appears without a reload', `no row for ${image} within 30 s`);
  }
  if (row) {
    ok('2a the pull appears without a reload');
    const live = await page.$eval('#live', (e) => e.textContent);
    check('2b the page says it is live', live === 'live', live);
    const after = await page.$eval('#last-hour [data-requests-upstream]', (e) => e.textContent);
    check('2c the last hour counts the fetches', Number(after) > Number(before), `${before} -> ${after}`);
    const cells = await row.$$eval('td', (tds) => tds.map((t) => t.textContent));
    check('2d the pull row has its manifests and blobs', Number(cells[3]) >= 1 && Number(cells[4]) >= 1,
      JSON.stringify(cells));
  }
  // The store's count follows (recounted once the store's size changed).
  const repo = image.replace(/[:@][^/]*$/, '');
  try {
    await page.waitForFunction((r) => [...document.querySelectorAll('#largest code')]
      .some((c) => c.textContent === r), repo, { timeout: 30000 });
    ok('2e the largest repositories list the pulled one');
  } catch (e) {
    bad('2e the largest repositories list the pulled one', `no ${repo} within 30 s`);
  }
  await page.screenshot({ path: `${shots}/status.png`, fullPage: true });
  check('1e nothing loaded from elsewhere', foreign.length === 0, foreign.join(' '));
  check('1f no script errors or CSP violations', problems.length === 0, problems.join(' | '));

  // Without JavaScript: the same data, server-rendered.
  const ctx = await browser.newContext({ javaScriptEnabled: false });
  const plain = await ctx.newPage();
  await plain.goto(`${mirror}/status`, { waitUntil: 'load' });
  const rows = await plain.$$(`#pulls tr[data-image="${image}"]`);
  const ups = await plain.$$eval('#upstreams tr[data-upstream]', (r) => r.length);
  check('3 without JavaScript the page shows the upstreams and the pull',
    rows.length === 1 && ups === upstreams.length, `${rows.length} pull rows, ${ups} upstreams`);
  await ctx.close();
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
