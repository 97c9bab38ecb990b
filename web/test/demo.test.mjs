// Browser test of the demo page (web/demo): a real Chromium drives /demo/ against a
// running infergate server. It builds and starts nothing itself: run.sh beside it does,
// and passes the server's URL and an API key in INFERGATE_URL and INFERGATE_API_KEY.
//
//   INFERGATE_URL=http://127.0.0.1:8080 INFERGATE_API_KEY=ig_... node --test web/test/
//
// INFERGATE_SLOW_API_KEY, if set, is a key with a low frames-per-second limit for the
// webcam test (otherwise INFERGATE_API_KEY is used there too). INFERGATE_BIN and
// INFERGATE_DB, the server's binary and database, let the tests of version 1.1 (mode
// latest, resume, client tokens) create the users and keys they need with `infergate
// keys create`; without them those tests are skipped.
//
// The resume tests put a small TCP proxy (startProxy) between Chromium and the server
// and destroy its sockets mid-stream: a real drop, with no close frame either way.
//
// Screenshots go to out/screenshots/ at the top of the checkout.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
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
const BIN = process.env.INFERGATE_BIN || '';
const DB = process.env.INFERGATE_DB || '';
const NO_CLI = !(BIN && DB) && 'set INFERGATE_BIN and INFERGATE_DB to create keys (web/test/run.sh does)';

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
async function openDemo(browser, { query = '', key = KEY, viewport = DESKTOP, colorScheme = 'light', mobile = false, base = BASE } = {}) {
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
  const res = await page.goto(`${base}/demo/${query}`);
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

// createKey makes a user with the given frames per second and returns a new key of
// it, with the server's own command line, as an operator would.
let keyCount = 0;
function createKey(label, fps) {
  const email = `${label}-${process.pid}-${++keyCount}@localhost`;
  const out = execFileSync(BIN, ['keys', 'create', '--email', email, '--fps', String(fps), '--db', DB],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const key = out.trim().split(/\s+/).find((w) => w.startsWith('ig_'));
  assert.ok(key, `infergate keys create printed no key: ${out}`);
  return key;
}

async function mintClientToken(key, body = { ttl_seconds: 120 }) {
  const res = await fetch(`${BASE}/v1/client_tokens`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 201, 'POST /v1/client_tokens');
  const { token } = await res.json();
  assert.match(token, /^ct_/);
  return token;
}

// startProxy listens on a free loopback port and relays every TCP connection to the
// server at target, byte for byte. drop() destroys every relayed connection at once,
// as a network failure would (neither side gets a WebSocket close frame); block(ms)
// refuses new connections for a while (each is closed as soon as it is accepted).
async function startProxy(target) {
  const { hostname, port } = new URL(target);
  const pairs = new Set();
  let blockedUntil = 0;
  const server = net.createServer((client) => {
    if (Date.now() < blockedUntil) {
      client.destroy();
      return;
    }
    const upstream = net.connect({ host: hostname, port: Number(port) });
    const pair = { client, upstream };
    pairs.add(pair);
    const done = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const s of [client, upstream]) {
      s.setNoDelay(true);
      s.on('error', done);
      s.on('close', done);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const p = server.address().port;
  return {
    url: `http://127.0.0.1:${p}`,
    open: () => pairs.size,
    drop() {
      const n = pairs.size;
      for (const { client, upstream } of [...pairs]) {
        client.destroy();
        upstream.destroy();
      }
      pairs.clear();
      return n;
    },
    block(ms) { blockedUntil = Date.now() + ms; },
    close() {
      this.drop();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

// recordStreams records what the page sends and receives on each of its WebSockets to
// /v1/stream: text messages parsed, binary ones (frames) as {binary: size}.
function recordStreams(page) {
  const conns = [];
  page.on('websocket', (ws) => {
    if (!/\/v1\/stream/.test(ws.url())) return;
    const rec = { sent: [], got: [], closed: false };
    conns.push(rec);
    // Frames are binary: Playwright hands them over as a Buffer or a base64 string.
    const parse = (p) => {
      if (typeof p !== 'string') return { binary: p.length };
      try { return JSON.parse(p); } catch { return { binary: p.length }; }
    };
    ws.on('framesent', (f) => rec.sent.push(parse(f.payload)));
    ws.on('framereceived', (f) => rec.got.push(parse(f.payload)));
    ws.on('close', () => { rec.closed = true; });
  });
  return conns;
}

const ANSWERS = new Set(['result', 'error', 'skipped']);
const answersOf = (rec) => rec.got.filter((m) => ANSWERS.has(m.type) && m.seq != null);
const readyOf = (rec) => rec.got.find((m) => m.type === 'ready');
const authOf = (rec) => rec.sent.find((m) => m.type === 'auth');

// checkSeqs asserts that across all the connections of one stream every seq from 1 to
// the highest was answered exactly once: none twice (a replay of what the page had),
// none lost (an answer the resume did not send again).
function checkSeqs(conns) {
  const seqs = conns.flatMap(answersOf).map((m) => m.seq);
  assert.ok(seqs.length > 0, 'some answers');
  const seen = new Set();
  const dup = seqs.filter((q) => (seen.has(q) ? true : (seen.add(q), false)));
  assert.deepEqual(dup, [], 'no seq answered twice');
  const max = Math.max(...seqs);
  const missing = [];
  for (let q = 1; q <= max; q++) if (!seen.has(q)) missing.push(q);
  assert.deepEqual(missing, [], `every seq up to ${max} answered`);
  return max;
}

// explain prints what a failed stream test saw: the page's status and state, and
// every message of its WebSockets but the frames and their results.
async function explain(page, conns) {
  if (page) {
    const text = async (id) => (await page.getByTestId(id).textContent().catch(() => '?')).trim().replace(/\s+/g, ' ');
    console.error(`page: state "${await text('conn-state')}", status "${await text('status')}"`);
  }
  const brief = (m) => JSON.stringify(m).slice(0, 300);
  for (const [i, c] of conns.entries()) {
    const frames = c.sent.filter((m) => m.binary).length;
    const results = c.got.filter((m) => m.type === 'result' || m.type === 'skipped').length;
    console.error(`connection ${i + 1}: ${frames} frames sent, ${results} results and skipped received, closed ${c.closed}`);
    for (const m of c.sent) if (!m.binary) console.error('  sent', brief(m));
    for (const m of c.got) if (m.type !== 'result' && m.type !== 'skipped') console.error('  got ', brief(m));
  }
}

const num = (page, id) => page.evaluate((id) => Number(document.getElementById(id).textContent), id);
const waitNum = (page, id, min, timeout = WAIT) =>
  page.waitForFunction(({ id, min }) => Number(document.getElementById(id).textContent) >= min, { id, min }, { timeout });

function fmtMs(ms) { // as the page shows milliseconds
  return ms < 10 ? ms.toFixed(1) + ' ms' : Math.round(ms) + ' ms';
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

  test('?webcam=ordered: frames over the limit are refused and counted', { timeout: TEST_TIMEOUT }, async () => {
    const camBrowser = await launch(FAKE_CAMERA_ARGS);
    try {
      const s = await openDemo(camBrowser, { key: SLOW_KEY, query: '?webcam=ordered' });
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
      assert.equal((await page.getByTestId('stream-mode').textContent()).trim(), 'ordered');
      assert.equal(await num(page, 'skipped'), 0, 'mode ordered skips nothing');
      await page.getByTestId('camera-button').click(); // stop
      await close(s);
    } finally {
      await camBrowser.close();
    }
  });

  test('a result shows where the server spent its time', { timeout: TEST_TIMEOUT }, async () => {
    const s = await openDemo(browser);
    const { page } = s;
    const conns = recordStreams(page);
    await pickDog(page);
    await waitForDog(page);
    const result = conns.flatMap((c) => c.got).find((m) => m.type === 'result');
    assert.ok(result && result.timing, 'the result carries "timing"');
    for (const part of ['queue', 'decode', 'preprocess', 'inference', 'log']) {
      const v = result.timing[`${part}_ms`];
      assert.equal(typeof v, 'number', `timing.${part}_ms`);
      assert.equal((await page.getByTestId(`timing-${part}`).textContent()).trim(), fmtMs(v), `${part} shown`);
    }
    assert.ok(result.batch >= 1, 'batch');
    assert.match(await page.getByTestId('timing-batch').textContent(), new RegExp(`^${result.batch} images?$`));
    // The model's parts fall within latency_ms; the log row's commit follows it.
    assert.equal((await page.getByTestId('timing-total').textContent()).trim(),
      `latency ${fmtMs(result.latency_ms)}, then log ${fmtMs(result.timing.log_ms)}`);
    // Images go in mode ordered: asked for in the auth message, in force in "ready".
    const rec = conns[0];
    assert.deepEqual(authOf(rec).session, { mode: 'ordered' });
    assert.equal(readyOf(rec).session.mode, 'ordered');
    assert.equal((await page.getByTestId('stream-mode').textContent()).trim(), 'ordered');
    await shot(page, 'timing.png');
    await close(s);
  });

  test('the webcam streams in mode latest: a 30 fps camera on a 5 fps key gets fresh results, skipped frames and no refusals',
    { timeout: TEST_TIMEOUT, skip: NO_CLI }, async () => {
      const key = createKey('latest', 5);
      const camBrowser = await launch(FAKE_CAMERA_ARGS);
      try {
        // The webcam starts before there is a key, so the stream opens with the webcam
        // on: mode latest rides on the auth message.
        const s = await openDemo(camBrowser, { key: '' });
        const { page } = s;
        const conns = recordStreams(page);
        await page.getByTestId('fps').fill('30');
        await page.getByTestId('camera-button').click();
        await page.getByTestId('api-key').pressSequentially(key);
        await waitNum(page, 'answered', 8);
        await waitNum(page, 'skipped', 5);
        assert.equal(await num(page, 'refused'), 0, 'nothing refused');
        assert.equal(conns.length, 1, 'one stream');
        const rec = conns[0];
        assert.deepEqual(authOf(rec).session, { mode: 'latest' }, 'the auth message asks for mode latest');
        const ready = readyOf(rec);
        assert.equal(ready.session.mode, 'latest');
        assert.equal(ready.session.fps, 5, 'the key\'s frames per second');
        assert.equal((await page.getByTestId('stream-mode').textContent()).trim(), 'latest');
        const answers = answersOf(rec);
        assert.deepEqual(answers.filter((m) => m.type === 'error').map((m) => m.code), [], 'no error answers (no rate_limited)');
        const skipped = answers.filter((m) => m.type === 'skipped');
        assert.ok(skipped.length >= 5, `${skipped.length} skipped`);
        for (const m of skipped) assert.ok(m.superseded_by > m.seq, `seq ${m.seq} superseded by a newer frame (${m.superseded_by})`);
        // The webcam frames get predictions and a timing breakdown.
        assert.equal(await page.getByTestId('predictions').locator('li:not(.empty)').count(), 5);
        assert.match(await page.getByTestId('timing-inference').textContent(), /\d+(\.\d)? ms/);
        assert.equal(await transport(page), 'websocket');
        await shot(page, 'webcam-latest.png');

        // Stopping the webcam goes back to mode ordered, and a picked image is answered.
        await page.getByTestId('camera-button').click();
        await waitForText(page, 'stream-mode', /^ordered$/);
        assert.ok(rec.sent.some((m) => m.type === 'session.update' && m.session.mode === 'ordered'), 'a session.update');
        await pickDog(page);
        await waitForDog(page);
        checkSeqs(conns);
        await close(s);
      } finally {
        await camBrowser.close();
      }
    });

  test('?transport=sse: the webcam streams in mode latest over an SSE session too',
    { timeout: TEST_TIMEOUT, skip: NO_CLI }, async () => {
      const key = createKey('sse-latest', 5);
      const camBrowser = await launch(FAKE_CAMERA_ARGS);
      try {
        const s = await openDemo(camBrowser, { key, query: '?transport=sse' });
        const { page } = s;
        await waitForText(page, 'conn-state', /^ready$/);
        await page.getByTestId('fps').fill('30');
        await page.getByTestId('camera-button').click();
        await waitForText(page, 'stream-mode', /^latest$/);
        await waitNum(page, 'answered', 5);
        await waitNum(page, 'skipped', 3);
        assert.equal(await num(page, 'refused'), 0, 'nothing refused');
        assert.equal(await transport(page), 'sse');
        assert.match(await page.getByTestId('timing-inference').textContent(), /\d+(\.\d)? ms/);
        await page.getByTestId('camera-button').click();
        await waitForText(page, 'stream-mode', /^ordered$/);
        await pickDog(page);
        await waitForDog(page);
        await close(s);
      } finally {
        await camBrowser.close();
      }
    });

  test('a stream the server closes with a code (4401: its key revoked) is not resumed',
    { timeout: TEST_TIMEOUT, skip: NO_CLI }, async () => {
      const key = createKey('revoked', 5);
      const s = await openDemo(browser, { key });
      const { page } = s;
      const conns = recordStreams(page);
      await pickDog(page);
      await waitForDog(page);
      execFileSync(BIN, ['keys', 'revoke', key.slice(0, 8), '--db', DB], { stdio: 'ignore' });
      await waitForText(page, 'conn-state', /^invalid key$/); // within 5 s, SPEC says
      await page.waitForTimeout(1500); // a resume would have been tried by now
      assert.equal(conns.length, 1, 'no attempt to resume or reconnect');
      assert.equal(await num(page, 'resumed'), 0);
      assert.match(await page.getByTestId('status').textContent(), /Invalid API key/);
      await close(s);
    });

  // streamAcrossDrops opens the page through a proxy, starts the webcam, and drops the
  // connection twice: once plainly, once while new connections are refused for a while,
  // so that the first attempts to resume fail. It checks that the page resumed the same
  // stream both times, that the stream went on, and that no answer came twice or was
  // lost, and returns the recorded connections.
  async function streamAcrossDrops(key, name) {
    const proxy = await startProxy(BASE);
    const camBrowser = await launch(FAKE_CAMERA_ARGS);
    let page;
    let conns = [];
    try {
      const s = await openDemo(camBrowser, { key, base: proxy.url });
      page = s.page;
      conns = recordStreams(page);
      await waitForText(page, 'conn-state', /^ready$/);
      await page.getByTestId('fps').fill('15');
      await page.getByTestId('camera-button').click();
      await waitNum(page, 'answered', 5);
      await waitForText(page, 'stream-mode', /^latest$/);

      // 1. A plain drop, mid-stream.
      let answered = await num(page, 'answered');
      assert.ok(proxy.drop() > 0, 'the proxy carried the stream');
      await waitNum(page, 'resumed', 1);
      await waitNum(page, 'answered', answered + 5);
      await shot(page, `${name}-resumed.png`);

      // 2. A drop, with the proxy refusing connections for 1.5 s: the first attempts
      //    fail and the page tries again, waiting longer each time.
      answered = await num(page, 'answered');
      proxy.block(1500);
      proxy.drop();
      await waitNum(page, 'resumed', 2);
      await waitNum(page, 'answered', answered + 5);
      assert.equal(await num(page, 'refused'), 0, 'nothing refused');

      const streams = conns.filter((c) => readyOf(c));
      assert.equal(streams.length, 3, 'three connections reached "ready": the first and two resumes');
      assert.ok(conns.length > 3, 'some attempts to resume failed while the proxy refused');
      const first = readyOf(streams[0]);
      assert.ok(first.resume && first.resume.session_id, 'ready.resume');
      for (const [i, c] of streams.slice(1).entries()) {
        const ready = readyOf(c);
        const auth = authOf(c);
        const before = streams[i];
        const lastSeq = Math.max(0, ...answersOf(before).map((m) => m.seq));
        assert.equal(ready.resumed, true, `resume ${i + 1}: ready.resumed`);
        assert.equal(ready.session_id, first.session_id, `resume ${i + 1}: the same session`);
        assert.equal(auth.resume.session_id, first.resume.session_id);
        assert.equal(auth.resume.last_seq, lastSeq, `resume ${i + 1}: last_seq is the last answer received`);
        assert.ok(ready.received_seq >= lastSeq, 'received_seq');
        assert.equal(ready.session.mode, 'latest', 'the settings survive');
      }
      const max = checkSeqs(conns);
      assert.ok(max > lastAnswerSeq(streams[1]), 'the stream went on after the resumes');
      assert.deepEqual(conns.flatMap(answersOf).filter((m) => m.type === 'error').map((m) => m.code), [], 'no error answers');
      await page.getByTestId('camera-button').click(); // stop
      await close(s);
      return streams;
    } catch (err) {
      await explain(page, conns);
      throw err;
    } finally {
      await camBrowser.close();
      await proxy.close();
    }
  }

  const lastAnswerSeq = (rec) => Math.max(0, ...answersOf(rec).map((m) => m.seq));

  test('a stream whose connection drops is resumed: same session, the stream goes on, no answer twice or lost',
    { timeout: TEST_TIMEOUT, skip: NO_CLI }, async () => {
      const key = createKey('resume', 5);
      const streams = await streamAcrossDrops(key, 'resume');
      for (const c of streams.slice(1)) {
        const auth = authOf(c);
        assert.equal(auth.api_key, key, 'an API key page resumes with its key');
        assert.equal(auth.token, undefined);
      }
    });

  test('a client token page streams in mode latest, and resumes with the resume token',
    { timeout: TEST_TIMEOUT, skip: NO_CLI }, async () => {
      const key = createKey('client-token', 5);
      const token = await mintClientToken(key);
      const streams = await streamAcrossDrops(token, 'client-token');
      assert.equal(authOf(streams[0]).token, token, 'the first connection uses the client token');
      const skipped = streams.flatMap(answersOf).filter((m) => m.type === 'skipped');
      assert.ok(skipped.length > 0, 'a 15 fps webcam on a 5 fps key has frames skipped');
      // The server gives the resume token in the first "ready" only; it resumes the
      // stream as often as needed.
      const rt = readyOf(streams[0]).resume.token;
      assert.match(rt, /^rt_/);
      for (const c of streams.slice(1)) {
        const auth = authOf(c);
        assert.equal(auth.token, undefined, 'the spent client token is not sent again');
        assert.equal(auth.api_key, undefined);
        assert.equal(auth.resume.token, rt, 'the resume token');
      }
    });
});
