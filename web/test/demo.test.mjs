// Browser test of the demo page (web/demo): a real Chromium drives /demo/ against a
// running infergate server. It builds and starts nothing itself: run.sh beside it does,
// and passes the server's URL and an API key in INFERGATE_URL and INFERGATE_API_KEY.
//
//   INFERGATE_URL=http://127.0.0.1:8080 INFERGATE_API_KEY=ig_... node --test web/test/
//
// INFERGATE_SLOW_API_KEY, if set, is a key with a low frames-per-second limit for the
// webcam test (otherwise INFERGATE_API_KEY is used there too).
//
// Screenshots go to out/screenshots/ at the top of the checkout.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const DOG = path.resolve(here, '../../assets/images/dog.jpg');
const SHOTS = path.resolve(here, '../../out/screenshots');
const BASE = (process.env.INFERGATE_URL || '').replace(/\/+$/, '');
const KEY = process.env.INFERGATE_API_KEY || '';
// Optional: a key with a low frames-per-second limit, so that the webcam test is sure
// to go over it however slowly this machine grabs frames (run.sh makes one).
const SLOW_KEY = process.env.INFERGATE_SLOW_API_KEY || KEY;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

// The photo is an Alaskan malamute; the model's top answer is one of its look-alikes.
const DOG_LABEL = /malamute|Eskimo dog|Siberian husky/;
const WAIT = 60_000; // the machine has two cores, and the first inference warms up
const TEST_TIMEOUT = 180_000;

const LAUNCH_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  // A name for the server that is neither loopback nor its own address, for the
  // cross-origin test: a page there is of an origin the default list does not allow.
  '--host-resolver-rules=MAP elsewhere.test 127.0.0.1',
];
// The webcam test adds a fake camera that needs no permission prompt.
const FAKE_CAMERA_ARGS = ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'];

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

function checkEnv() {
  assert.ok(BASE, 'set INFERGATE_URL to the server, e.g. http://127.0.0.1:8080 (web/test/run.sh does)');
  assert.ok(KEY, 'set INFERGATE_API_KEY to a key of that server (web/test/run.sh does)');
  assert.ok(fs.existsSync(DOG), `missing ${DOG}: run scripts/setup.sh`);
  assert.ok(fs.existsSync(CHROMIUM), `missing ${CHROMIUM}: apt-get install chromium`);
}

async function launch(extraArgs = []) {
  return chromium.launch({ executablePath: CHROMIUM, args: [...LAUNCH_ARGS, ...extraArgs] });
}

// openDemo opens the page in a fresh context and types the key, if given. Uncaught
// page errors are collected; every test asserts there were none.
async function openDemo(browser, { query = '', key = KEY, viewport = DESKTOP, colorScheme = 'light', mobile = false } = {}) {
  const context = await browser.newContext({
    viewport,
    colorScheme,
    deviceScaleFactor: mobile ? 2 : 1,
    isMobile: mobile,
    hasTouch: mobile,
  });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const errors = [];
  page.on('pageerror', (err) => errors.push(err.message));
  const res = await page.goto(`${BASE}/demo/${query}`);
  assert.equal(res.status(), 200, 'GET /demo/');
  if (key) await page.getByTestId('api-key').pressSequentially(key); // typed, as a person would
  return { context, page, errors };
}

async function close({ context, page, errors }) {
  // Navigating away fires pagehide, where the page ends its stream or SSE session,
  // so the key's connection slots are free for the next test.
  await page.goto('about:blank').catch(() => {});
  await context.close();
  assert.deepEqual(errors, [], 'uncaught errors in the page');
}

async function pickDog(page) {
  await page.getByTestId('file-input').setInputFiles(DOG);
}

async function waitForDog(page) {
  await page.getByTestId('predictions').filter({ hasText: DOG_LABEL }).waitFor();
  const items = await page.getByTestId('predictions').locator('li').allTextContents();
  assert.equal(items.length, 5, 'five predictions');
  assert.match(items[0], DOG_LABEL, 'the top prediction is the dog');
  for (const text of items) assert.match(text, /\S.*\d+(\.\d)?%/, `a label and a percentage in "${text}"`);
}

async function waitForText(page, testid, pattern) {
  const loc = page.getByTestId(testid);
  await loc.filter({ hasText: pattern }).waitFor();
  return loc.textContent();
}

async function transport(page) {
  return (await page.getByTestId('transport').textContent()).trim();
}

// openStreams reads the server's count of open streams of one transport (ws or sse).
async function openStreams(transport) {
  const text = await (await fetch(`${BASE}/metrics`)).text();
  const m = text.match(new RegExp(`^infergate_streams_open\\{transport="${transport}"\\} (\\S+)$`, 'm'));
  return m ? Number(m[1]) : 0;
}

async function eventually(what, fn, timeout = 10_000) {
  const end = Date.now() + timeout;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > end) assert.fail(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function shot(page, name, fullPage = false) {
  await page.waitForTimeout(400); // let the bars finish growing
  await page.screenshot({ path: path.join(SHOTS, name), fullPage });
}

describe('demo page', { timeout: 15 * 60_000 }, () => {
  let browser;

  before(async () => {
    checkEnv();
    fs.mkdirSync(SHOTS, { recursive: true });
    browser = await launch();
  });

  after(async () => {
    if (browser) await browser.close();
  });

  test('/demo redirects to /demo/', { timeout: TEST_TIMEOUT }, async () => {
    const res = await fetch(`${BASE}/demo`, { redirect: 'manual' });
    assert.ok([301, 302, 307, 308].includes(res.status), `status ${res.status}`);
    assert.equal(new URL(res.headers.get('location'), BASE).pathname, '/demo/');
    // The query, which forces a transport, survives the redirect.
    const forced = await fetch(`${BASE}/demo?transport=sse`, { redirect: 'manual' });
    const to = new URL(forced.headers.get('location'), BASE);
    assert.equal(to.pathname + to.search, '/demo/?transport=sse');
  });

  test('pages of other origins: loopback ones may use the API, others are refused', { timeout: TEST_TIMEOUT }, async () => {
    const context = await browser.newContext({ viewport: DESKTOP });
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT);
    const errors = [];
    page.on('pageerror', (err) => errors.push(err.message));
    // From a page, call the server at BASE with a key (a preflighted fetch) and open
    // its WebSocket.
    const probe = () => page.evaluate(async ({ base, key }) => {
      const out = {};
      try {
        const r = await fetch(`${base}/v1/usage`, { headers: { Authorization: `Bearer ${key}` } });
        out.fetch = r.status;
        out.remaining = r.headers.get('RateLimit-Remaining');
      } catch (e) {
        out.fetch = e.name;
      }
      out.ws = await new Promise((resolve) => {
        const ws = new WebSocket(base.replace(/^http/, 'ws') + '/v1/stream');
        ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', api_key: key }));
        ws.onmessage = (ev) => { resolve(JSON.parse(ev.data).type); ws.close(); };
        ws.onerror = () => resolve('error');
      });
      return out;
    }, { base: BASE, key: KEY });
    const port = new URL(BASE).port;

    await page.goto(`http://localhost:${port}/demo/`);
    const allowed = await probe();
    assert.equal(allowed.fetch, 200, 'a localhost page may call the API by default');
    assert.match(allowed.remaining ?? '', /^\d+$/, 'and read the exposed RateLimit headers');
    assert.equal(allowed.ws, 'ready', 'and open a stream');

    await page.goto(`http://elsewhere.test:${port}/demo/`);
    assert.deepEqual(await probe(), { fetch: 'TypeError', ws: 'error' }, 'a page of another origin is refused');
    // The demo page served under that name is same-origin with itself, and works.
    await page.getByTestId('api-key').pressSequentially(KEY);
    await pickDog(page);
    await waitForDog(page);
    assert.equal(await transport(page), 'websocket');
    await close({ context, page, errors });
  });

  test('a picked photo is classified over the WebSocket', { timeout: TEST_TIMEOUT }, async () => {
    const s = await openDemo(browser);
    const { page } = s;
    await pickDog(page);
    await waitForDog(page);
    assert.equal(await transport(page), 'websocket');
    assert.equal((await page.getByTestId('conn-state').textContent()).trim(), 'ready');
    assert.match(await page.getByTestId('latency').textContent(), /\d+(\.\d)? ms/);
    assert.match(await page.getByTestId('status').textContent(), DOG_LABEL);

    // The key lives in sessionStorage only, and never in the URL.
    const stored = await page.evaluate(() => ({
      session: sessionStorage.getItem('infergate.apiKey'),
      local: Object.keys(localStorage).map((k) => localStorage.getItem(k)),
      url: location.href,
    }));
    assert.equal(stored.session, KEY);
    assert.ok(!stored.local.includes(KEY), 'the key is not in localStorage');
    assert.ok(!stored.url.includes(KEY), 'the key is not in the URL');
    await shot(page, 'desktop.png');

    // A file that is not an image gets a clear error, and the stream stays usable.
    await page.getByTestId('file-input').setInputFiles({
      name: 'not-a-picture.jpg', mimeType: 'image/jpeg', buffer: Buffer.from('these bytes are not a JPEG'),
    });
    await waitForText(page, 'status', /Invalid image/);
    await pickDog(page);
    await waitForText(page, 'status', DOG_LABEL);
    assert.equal(await transport(page), 'websocket');
    await close(s);
  });

  test('?transport=sse classifies over an SSE session', { timeout: TEST_TIMEOUT }, async () => {
    const s = await openDemo(browser, { query: '?transport=sse' });
    const { page } = s;
    await pickDog(page);
    await waitForDog(page);
    assert.equal(await transport(page), 'sse');
    assert.equal((await page.getByTestId('conn-state').textContent()).trim(), 'ready');
    // The same session takes the next file.
    await pickDog(page);
    await page.waitForFunction(() => Number(document.getElementById('answered').textContent) >= 2);
    assert.equal(await transport(page), 'sse');
    assert.equal(await openStreams('sse'), 1, 'one SSE session for both files');
    // Leaving the page deletes the session rather than leaving it to expire.
    await close(s);
    await eventually('the SSE session is deleted', async () => (await openStreams('sse')) === 0);
  });

  test('falls back to SSE by itself when the WebSocket closes before "ready"', { timeout: TEST_TIMEOUT }, async () => {
    const context = await browser.newContext({ viewport: DESKTOP });
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT);
    const errors = [];
    page.on('pageerror', (err) => errors.push(err.message));
    let authSeen = false;
    // Stand in for a proxy that accepts the upgrade and then drops the stream.
    await page.routeWebSocket(/\/v1\/stream$/, (ws) => {
      ws.onMessage(() => {
        authSeen = true;
        ws.close({ code: 1011, reason: 'no streams here' });
      });
    });
    await page.goto(`${BASE}/demo/`);
    await page.getByTestId('api-key').fill(KEY);
    await pickDog(page);
    await waitForDog(page);
    assert.ok(authSeen, 'the page tried the WebSocket first');
    assert.equal(await transport(page), 'sse');
    assert.match(await page.getByTestId('status').textContent(), DOG_LABEL);
    await close({ context, page, errors });
  });

  test('"Send by POST" classifies the current image with POST /v1/classify', { timeout: TEST_TIMEOUT }, async () => {
    const s = await openDemo(browser);
    const { page } = s;
    await pickDog(page);
    await waitForDog(page);
    await page.getByTestId('post-button').click();
    await waitForText(page, 'status', /over post\./);
    await waitForDog(page);
    assert.equal(await transport(page), 'post');
    assert.equal(await page.locator('#answered').textContent(), '2');
    await close(s);
  });

  test('a wrong key shows an unauthorized message', { timeout: TEST_TIMEOUT }, async () => {
    const s = await openDemo(browser, { key: 'ig_' + 'x'.repeat(40) });
    const { page } = s;
    await pickDog(page);
    await waitForText(page, 'status', /unauthorized/i);
    assert.match(await page.getByTestId('status').textContent(), /invalid api key/i);
    assert.equal((await page.getByTestId('conn-state').textContent()).trim(), 'invalid key');
    assert.equal(await transport(page), 'websocket', 'a refused key is not a reason to fall back to SSE');
    await shot(page, 'unauthorized.png');
    // POST with the same key is refused the same way.
    await page.getByTestId('post-button').click();
    await waitForText(page, 'transport', /^post$/);
    await page.locator('#stage-badge').filter({ hasText: 'unauthorized' }).waitFor();
    assert.match(await page.getByTestId('status').textContent(), /unauthorized/i);
    await close(s);
  });

  test('a client token in place of a key opens one stream, once', { timeout: TEST_TIMEOUT }, async () => {
    // What a web app's backend does: mint a short-lived token with its key, and hand
    // the token, never the key, to the browser.
    const res = await fetch(`${BASE}/v1/client_tokens`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ ttl_seconds: 120 }),
    });
    assert.equal(res.status, 201, 'POST /v1/client_tokens');
    const { token } = await res.json();
    assert.match(token, /^ct_/);

    const s = await openDemo(browser, { key: token });
    const { page } = s;
    await pickDog(page);
    await waitForDog(page);
    assert.equal(await transport(page), 'websocket');
    // POST /v1/classify takes API keys only: the page says so rather than send it.
    await page.getByTestId('post-button').click();
    await waitForText(page, 'status', /client token opens one stream only/);
    assert.equal(await transport(page), 'websocket');
    await close(s);

    // Spent: a second page with the same token is refused, and says why.
    const again = await openDemo(browser, { key: token });
    await pickDog(again.page);
    await waitForText(again.page, 'status', /Client token refused/);
    assert.equal((await again.page.getByTestId('conn-state').textContent()).trim(), 'invalid key');
    await close(again);
  });

  test('phone and dark layouts', { timeout: TEST_TIMEOUT }, async () => {
    const phone = await openDemo(browser, { viewport: PHONE, mobile: true });
    await pickDog(phone.page);
    await waitForDog(phone.page);
    const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone screen`);
    await shot(phone.page, 'phone.png');
    await shot(phone.page, 'phone-full.png', true);
    // A small phone: still no sideways scrolling.
    await phone.page.setViewportSize({ width: 360, height: 740 });
    const narrow = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(narrow <= 0, `the page is ${narrow}px wider than a 360px screen`);
    await close(phone);

    const start = await openDemo(browser, { key: '' });
    await waitForText(start.page, 'status', /Paste an API key/);
    await shot(start.page, 'start.png');
    await close(start);

    const dark = await openDemo(browser, { colorScheme: 'dark' });
    await pickDog(dark.page);
    await waitForDog(dark.page);
    await shot(dark.page, 'desktop-dark.png');
    await close(dark);
  });

  test('the webcam streams frames, and frames over the limit are counted as refused', { timeout: TEST_TIMEOUT }, async () => {
    const camBrowser = await launch(FAKE_CAMERA_ARGS);
    try {
      const s = await openDemo(camBrowser, { key: SLOW_KEY });
      const { page } = s;
      await waitForText(page, 'conn-state', /^ready$/);
      // 30 frames per second is over the server's default of 10 per second, and far
      // over the slow key's limit.
      await page.getByTestId('fps').fill('30');
      await page.getByTestId('camera-button').click();
      await page.waitForFunction(() => Number(document.querySelector('[data-testid="refused"]').textContent) > 0, null, { timeout: WAIT });
      await page.waitForFunction(() => Number(document.querySelector('[data-testid="fps-live"]').textContent) > 0, null, { timeout: WAIT });
      const items = await page.getByTestId('predictions').locator('li:not(.empty)').count();
      assert.equal(items, 5, 'the webcam frames get five predictions');
      assert.equal(await transport(page), 'websocket');
      await shot(page, 'webcam.png');
      await page.getByTestId('camera-button').click(); // stop
      await close(s);
    } finally {
      await camBrowser.close();
    }
  });
});
