// infergate demo page: sends images to the server over a WebSocket (/v1/stream), or over
// an SSE session (POST /v1/sessions, EventSource, POSTed frames) when the WebSocket
// cannot connect, or one at a time with POST /v1/classify, and shows the answers.
//
// The protocol is the one the API docs (/docs) describe; the names below follow it:
// "ready", "result", "error" and "skipped" messages, seq numbers, limits, retry_after_ms,
// the stream's settings ("session") and resuming.
//
// Version 1.1 choices:
// - Modes. The webcam streams in mode "latest": the server keeps only the newest frame
//   waiting for the model and answers the ones it replaces with "skipped", and frames
//   over the key's frames-per-second wait rather than being refused, so a 30 fps camera
//   on a 5 fps key shows fresh results and no rate_limited. Picked, dropped and pasted
//   images use mode "ordered" (version 1): each one is answered, none is skipped. The
//   mode rides on the first-message auth ("session": {"mode"}) of a new stream, and a
//   "session.update" switches it when the webcam starts or stops on an open stream (or
//   on an SSE session: its POST /v1/sessions body and a POSTed update). ?webcam=ordered
//   keeps the webcam in mode "ordered" too (frames over the limit are then refused).
// - Resume. A WebSocket that closes with 1006 (no close frame: the network, a proxy, a
//   server gone) after "ready" is resumed: the page reconnects with "resume":
//   {"session_id", "last_seq"} in the auth message, waiting longer each time (200 ms
//   up to 8 s), for as long as the window the server gave in ready.resume lasts. With an API key the key
//   rides along (a failed resume then gets a fresh stream, and the images it had not
//   answered are sent again); with a client token, which opens one stream once, only
//   the resume token from ready.resume does (a failed resume ends there: 4401). The
//   server sends again the answers after last_seq. Images it never read (numbered
//   beyond ready.received_seq) are sent again; webcam frames it never read are dropped,
//   since a newer frame follows anyway. A close with a code from the server (1000,
//   1001, 1008, 4401, 4429, ...) or from the page is not resumed.
// - Results show where the server spent the time ("timing") and the batch size.
//
// Plain browser JavaScript: no build step, no dependencies.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  // isClientToken tells a client token (ct_..., from POST /v1/client_tokens) from an
  // API key: it opens one stream, once, and nothing else.
  const isClientToken = (k) => k.startsWith('ct_');

  const KEY_STORE = 'infergate.apiKey'; // sessionStorage only: gone when the tab closes
  const MAX_RECENT = 24; // thumbnails kept in the strip
  const SAMPLES = 60; // latency samples kept for the chart
  const P50_OVER = 30; // latency p50 is over this many recent frames
  const MAX_ATTEMPTS = 4; // a picked file is sent at most this often (rate limits, reconnects)
  const POST_IN_FLIGHT = 2; // concurrent POST /v1/classify requests
  const WINDOW_SLACK_MS = 60; // see windowWait
  const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000, 30000];
  // Waits before each attempt to resume a dropped WebSocket stream, the last one
  // repeated; once the server's resume window (less a second) would be over before the
  // next attempt, the page gives up and opens a fresh stream. With the default window
  // of 30 s that is at most 8 attempts.
  const RESUME_BACKOFF_MS = [200, 500, 1000, 2000, 4000, 8000];
  const RESUME_WINDOW_MS = 30000; // until ready.resume.window_ms says otherwise
  const TIMING_PARTS = ['queue', 'decode', 'preprocess', 'inference', 'log'];
  // Until the server says otherwise in "ready": the defaults SPEC.md gives.
  const DEFAULT_LIMITS = { frames: 10, window_ms: 1000, max_in_flight: 4, max_message_bytes: 11534336 };

  const ERROR_TEXT = {
    unauthorized: 'Unauthorized: the API key is unknown or revoked.',
    forbidden: 'Forbidden: this API key may not do that.',
    not_found: 'Not found.',
    invalid_request: 'Invalid request.',
    invalid_image: 'Invalid image: the server could not read it as a JPEG, PNG, GIF or WebP picture.',
    image_too_large: 'Image too large: it is over the server\'s limit of bytes or pixels.',
    unsupported_media_type: 'Unsupported file type: send a JPEG, PNG, GIF or WebP image.',
    rate_limited: 'Rate limited: over this key\'s limit.',
    overloaded: 'Server overloaded: its inference queue is full.',
    unavailable: 'Model unavailable: the server has no model loaded.',
    internal: 'Internal server error.',
    network: 'Network error: the server could not be reached.',
  };

  // ---- Elements --------------------------------------------------------------------

  const el = {
    key: $('api-key'),
    keyToggle: $('key-toggle'),
    stage: $('stage'),
    stageImg: $('stage-img'),
    stageVideo: $('stage-video'),
    badge: $('stage-badge'),
    file: $('file-input'),
    camera: $('camera-btn'),
    post: $('post-btn'),
    fps: $('fps'),
    fpsOut: $('fps-out'),
    fpsNote: $('fps-note'),
    recent: $('recent'),
    predictions: $('predictions'),
    resultMeta: $('result-meta'),
    status: $('status'),
    transport: $('transport'),
    connDot: $('conn-dot'),
    connState: $('conn-state'),
    fpsLive: $('fps-live'),
    latency: $('latency'),
    serverLatency: $('server-latency'),
    answered: $('answered'),
    refused: $('refused'),
    retry: $('retry'),
    chart: $('chart'),
    limits: $('limits'),
    streamMode: $('stream-mode'),
    skipped: $('skipped'),
    resumed: $('resumed'),
    lastSeq: $('last-seq'),
    timing: $('timing'),
    timingTotal: $('timing-total'),
    timingBar: $('timing-bar'),
  };

  // ---- State -----------------------------------------------------------------------

  const params = new URLSearchParams(location.search);
  const forced = transportParam(params.get('transport'));
  // The webcam's stream mode: "latest" unless ?webcam=ordered.
  const webcamMode = (params.get('webcam') || '').toLowerCase() === 'ordered' ? 'ordered' : 'latest';

  const state = {
    key: '',
    mode: forced || 'websocket', // the stream transport: websocket, sse or post (no stream)
    authFailed: false, // the current key was refused: wait for another
    wsWorked: false, // a WebSocket reached "ready" on this page
    wsFailures: 0, // WebSockets in a row that closed before "ready"
    fellBack: false, // SSE is used because the WebSocket failed
    connNotice: false, // the status shows a connection problem, to clear on "ready"
    limits: { ...DEFAULT_LIMITS },
    queue: [], // jobs (picked files) waiting to be sent
    sendTimes: [], // when recent frames were sent, to pace files under the limit
    pauseUntil: 0, // performance.now() before which no stream frame is sent (rate limited)
    postPauseUntil: 0, // the same for POST /v1/classify, which has its own per-minute limit
    refused: 0,
    answered: 0,
    skipped: 0, // frames the server answered "skipped" (mode latest)
    resumes: 0, // dropped WebSocket streams resumed
    samples: [], // {rtt, server} per answered frame, for p50 and the chart
    resultTimes: [], // when recent results arrived, for frames per second
    items: [], // picked images, newest first
    selected: null, // the item shown on the stage and in the predictions
    camera: null, // {stream, timer, canvas, capturing} while the webcam runs
    cameraItem: { id: 'camera', name: 'webcam', camera: true, blob: null, predictions: null },
    postInFlight: 0,
    postQuota: '',
  };

  let conn = null; // the open stream connection (see openWebSocket, openSSE)
  let resumeFrom = null; // the WebSocket stream to resume (see tryResume), while conn is null
  let reconnectTimer = 0;
  let reconnectAt = 0;
  let backoff = 0;
  let pumpTimer = 0;
  let keyTimer = 0;
  let nextItemID = 1;

  function transportParam(v) {
    switch ((v || '').toLowerCase()) {
      case 'websocket': case 'ws': return 'websocket';
      case 'sse': return 'sse';
      case 'post': case 'http': return 'post';
    }
    return null;
  }

  // ---- Small view helpers ----------------------------------------------------------

  // setStatus shows one message: a bold title, our explanation, and the server's own
  // message when there is one (never the key or the image: SPEC.md promises that).
  function setStatus(kind, title, detail, serverMessage) {
    el.status.dataset.kind = kind;
    el.status.replaceChildren();
    const strong = document.createElement('strong');
    strong.textContent = title;
    el.status.append(strong);
    if (detail) el.status.append(' ' + detail);
    if (serverMessage) {
      const span = document.createElement('span');
      span.className = 'server-msg';
      span.textContent = ' Server: ' + serverMessage.replace(/\.?$/, '.');
      el.status.append(span);
    }
  }

  function setConn(text, dot) {
    el.connState.textContent = text;
    el.connDot.dataset.state = dot;
  }

  function setTransport(name) {
    el.transport.textContent = name;
  }

  function fmtMs(ms) {
    if (ms == null || !isFinite(ms)) return '–';
    return ms < 10 ? ms.toFixed(1) + ' ms' : Math.round(ms) + ' ms';
  }

  function fmtBytes(n) {
    if (n < 1024) return n + ' B';
    if (n < 1 << 20) return (n / 1024).toFixed(0) + ' KiB';
    return (n / (1 << 20)).toFixed(1) + ' MiB';
  }

  function median(xs) {
    if (!xs.length) return null;
    const s = [...xs].sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  }

  function errorText(code) {
    return ERROR_TEXT[code] || 'Error (' + code + ').';
  }

  // ---- Predictions -----------------------------------------------------------------

  // The list always holds five rows, so its height never changes.
  function buildPredictionRows() {
    for (let i = 0; i < 5; i++) {
      const li = document.createElement('li');
      li.className = 'empty';
      const label = document.createElement('span');
      label.className = 'label';
      const pct = document.createElement('span');
      pct.className = 'pct';
      const bar = document.createElement('span');
      bar.className = 'bar';
      bar.setAttribute('aria-hidden', 'true');
      const fill = document.createElement('span');
      fill.className = 'fill';
      bar.append(fill);
      li.append(label, pct, bar);
      el.predictions.append(li);
    }
    renderPredictions(null);
  }

  function renderPredictions(preds) {
    [...el.predictions.children].forEach((li, i) => {
      const p = preds && preds[i];
      const [label, pct, bar] = li.children;
      const fill = bar.firstChild;
      label.replaceChildren();
      if (!p) {
        li.className = 'empty';
        label.textContent = '—';
        pct.textContent = '';
        fill.style.width = '0%';
        li.removeAttribute('title');
        return;
      }
      li.className = '';
      // The label is shown whole ("malamute, malemute, Alaskan malamute"), with the
      // first name stressed and the synonyms quieter.
      const comma = p.label.indexOf(', ');
      const main = document.createElement('span');
      main.className = 'main';
      main.textContent = comma < 0 ? p.label : p.label.slice(0, comma);
      label.append(main);
      if (comma >= 0) {
        const alt = document.createElement('span');
        alt.className = 'alt';
        alt.textContent = p.label.slice(comma);
        label.append(alt);
      }
      const percent = p.confidence * 100;
      pct.textContent = percent.toFixed(percent >= 99.95 || percent < 0.05 ? 0 : 1) + '%';
      fill.style.width = Math.max(0, Math.min(100, percent)).toFixed(2) + '%';
      li.title = p.label + ' (class ' + p.index + ')';
    });
  }

  function topLine(preds) {
    const p = preds && preds[0];
    if (!p) return '';
    const comma = p.label.indexOf(', ');
    return (comma < 0 ? p.label : p.label.slice(0, comma)) + ' ' + (p.confidence * 100).toFixed(1) + '%';
  }

  // ---- Items: picked images and the webcam -----------------------------------------

  function showItem(item) {
    state.selected = item;
    el.stage.dataset.empty = item ? 'false' : 'true';
    if (item && item.camera) {
      el.stageImg.hidden = true;
      el.stageVideo.hidden = false;
    } else {
      el.stageVideo.hidden = true;
      if (item) {
        el.stageImg.src = item.url;
        el.stageImg.alt = item.name;
        el.stageImg.hidden = false;
      } else {
        el.stageImg.hidden = true;
        el.stageImg.removeAttribute('src');
      }
    }
    for (const b of el.recent.querySelectorAll('button')) {
      b.setAttribute('aria-current', String(item != null && b.dataset.id === String(item.id)));
    }
    renderItem(item);
    updatePostButton();
  }

  // renderItem shows an item's predictions, its one-line summary and its stage badge.
  function renderItem(item) {
    renderPredictions(item ? item.predictions : null);
    renderTiming(item && item.status !== 'error' && item.meta ? item.meta : null);
    const badge = el.badge;
    if (!item) {
      badge.hidden = true;
      el.resultMeta.textContent = '';
      return;
    }
    const m = item.meta;
    el.resultMeta.textContent = m
      ? [item.camera ? 'webcam' : item.name, fmtMs(m.rtt) + ' via ' + m.transport].join(' · ')
      : item.camera ? 'webcam' : item.name;
    badge.hidden = false;
    if (item.status === 'error') {
      badge.dataset.kind = 'error';
      badge.textContent = item.error || 'error';
    } else if (item.predictions) {
      badge.dataset.kind = 'ok';
      badge.textContent = topLine(item.predictions);
    } else {
      badge.dataset.kind = 'pending';
      badge.textContent = !state.key ? 'waiting for an API key'
        : state.authFailed ? 'waiting for a valid API key'
          : item.camera ? 'starting…' : 'classifying…';
    }
  }

  // renderTiming shows where the server spent the time of one result. Its "timing"
  // has the model's parts (queue, decode, preprocess, inference), which fall within
  // latency_ms, and log_ms, the commit of its log row, which follows latency_ms and
  // comes before the answer. The bar spans latency_ms + log_ms: the model's parts, a
  // gap for the rest of latency_ms (reading, scheduling), then the log. "batch" is the
  // number of images in the model run that served it. A result without timing (POST
  // /v1/classify) shows dashes.
  function renderTiming(meta) {
    const t = meta && meta.timing;
    el.timing.dataset.empty = t ? 'false' : 'true';
    const v = (p) => (t ? Math.max(0, Number(t[p + '_ms']) || 0) : 0);
    let model = 0;
    for (const p of TIMING_PARTS) if (p !== 'log') model += v(p);
    const latency = meta && typeof meta.server === 'number' ? meta.server : model;
    const span = Math.max(latency, model) + v('log');
    const width = (ms) => (t && span > 0 ? (ms / span * 100).toFixed(2) + '%' : '0');
    for (const p of TIMING_PARTS) {
      const raw = t ? Number(t[p + '_ms']) : NaN;
      el.timing.querySelector('dd[data-testid="timing-' + p + '"]').textContent = t && isFinite(raw) ? fmtMs(raw) : '–';
      el.timingBar.querySelector('[data-part="' + p + '"]').style.width = width(v(p));
    }
    el.timingBar.querySelector('[data-part="other"]').style.width = width(Math.max(0, latency - model));
    const batch = meta && meta.batch;
    el.timing.querySelector('dd[data-testid="timing-batch"]').textContent =
      t && batch ? batch + (batch === 1 ? ' image' : ' images') : '–';
    el.timingTotal.textContent = t ? 'latency ' + fmtMs(latency) + ', then log ' + fmtMs(v('log')) : '';
  }

  function renderThumb(item) {
    const b = el.recent.querySelector('button[data-id="' + item.id + '"]');
    if (!b) return;
    const cap = b.querySelector('.cap');
    if (item.status === 'error') {
      cap.dataset.kind = 'error';
      cap.textContent = 'error';
    } else if (item.predictions) {
      cap.dataset.kind = 'ok';
      cap.textContent = topLine(item.predictions);
    } else {
      cap.dataset.kind = 'pending';
      cap.textContent = '…';
    }
    b.title = item.name + (cap.textContent ? ': ' + cap.textContent : '');
  }

  function addThumb(item) {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.id = String(item.id);
    b.setAttribute('aria-label', 'Show ' + item.name);
    const img = document.createElement('img');
    img.src = item.url;
    img.alt = '';
    const cap = document.createElement('span');
    cap.className = 'cap';
    b.append(img, cap);
    b.addEventListener('click', () => showItem(item));
    li.append(b);
    return li;
  }

  function addFiles(fileList) {
    const files = [...fileList].filter((f) => f && f.size !== undefined);
    if (!files.length) return;
    if (state.camera) stopCamera();
    const batch = files.map((f) => ({
      id: nextItemID++, name: f.name || 'image', blob: f, url: URL.createObjectURL(f),
      status: 'pending', predictions: null, meta: null, error: '',
    }));
    state.items.unshift(...batch);
    const frag = document.createDocumentFragment();
    for (const item of batch) frag.append(addThumb(item));
    el.recent.prepend(frag);
    while (state.items.length > MAX_RECENT) {
      const old = state.items.pop();
      URL.revokeObjectURL(old.url);
      const b = el.recent.querySelector('button[data-id="' + old.id + '"]');
      if (b) b.parentElement.remove();
      state.queue = state.queue.filter((j) => j.item !== old);
    }
    batch.forEach(renderThumb);
    showItem(batch[0]);
    if (!state.key) {
      setStatus('info', 'Paste an API key.', 'The image will be sent as soon as there is one.');
      el.key.focus();
    } else {
      setStatus('info', batch.length === 1 ? 'Sending ' + batch[0].name + '…' : 'Sending ' + batch.length + ' images…', '');
    }
    for (const item of batch) enqueue(item); // after the status: a refusal may replace it
  }

  function enqueue(item) {
    const job = { item, blob: item.blob, source: 'file', attempts: 0, seq: 0, sentAt: 0, done: false };
    state.queue.push(job);
    pump();
  }

  function requeue(job) {
    if (job.done || job.source !== 'file') return;
    if (job.attempts >= MAX_ATTEMPTS) {
      failJob(job, 'network', 'Gave up after ' + job.attempts + ' attempts.', true);
      return;
    }
    state.queue.unshift(job);
  }

  // ---- Answers ---------------------------------------------------------------------

  function onResult(job, m, transport) {
    if (job.done) return;
    job.done = true;
    const now = performance.now();
    const rtt = now - job.sentAt;
    state.answered++;
    state.samples.push({ rtt, server: typeof m.latency_ms === 'number' ? m.latency_ms : null });
    if (state.samples.length > SAMPLES) state.samples.shift();
    state.resultTimes.push(now);
    renderStats();
    scheduleChart();
    setTransport(transport);
    const item = job.item;
    item.status = 'done';
    item.error = '';
    item.predictions = m.predictions || [];
    item.meta = { rtt, transport, server: m.latency_ms, inference: m.inference_ms, timing: m.timing || null, batch: m.batch || 0 };
    if (item === state.selected) renderItem(item);
    if (!item.camera) {
      renderThumb(item);
      const stale = el.status.dataset.kind !== 'info' && el.status.dataset.kind !== 'ok';
      if (item === state.selected || stale) {
        setStatus('ok', item.name + ':', topLine(item.predictions) + ' in ' + fmtMs(rtt) + ' over ' + transport + '.');
      }
    } else if (el.status.dataset.kind === 'error' || el.status.dataset.kind === 'warn') {
      if (now >= pausedUntil()) setStatus('ok', 'Webcam streaming', 'over ' + transport + '.');
    }
  }

  // onSkipped handles a "skipped" answer (mode latest): a newer frame, superseded_by,
  // took the frame's place before the model started on it. A webcam frame needs nothing
  // more; a picked image (sent while the stream was still in mode latest) goes again.
  function onSkipped(job, m) {
    state.skipped++;
    renderStats();
    if (!job || job.done) return;
    if (job.source === 'file') {
      requeue(job);
      pump();
      return;
    }
    job.done = true;
  }

  // onFrameError handles an error answer to one frame: {code, message, retry_after_ms}.
  function onFrameError(job, m, transport) {
    if (job.done) return;
    const now = performance.now();
    const code = m.code || 'internal';
    setTransport(transport);
    if (code === 'rate_limited' || code === 'overloaded') {
      const wait = m.retry_after_ms > 0 ? m.retry_after_ms : state.limits.window_ms;
      const pause = transport === 'post' ? 'postPauseUntil' : 'pauseUntil';
      state[pause] = Math.max(state[pause], now + wait);
      if (code === 'rate_limited') state.refused++;
      // A picked file goes again after the pause, on the transport it was queued for;
      // a file sent with the POST button is not resent by itself.
      const again = job.source === 'file' && job.attempts < MAX_ATTEMPTS && (!job.viaPost || state.mode === 'post');
      const what = job.source === 'camera'
        ? 'Frames over the limit are refused; sending resumes when a slot frees.'
        : again ? 'The image will be sent again when a slot frees.' : 'Try again when the countdown ends.';
      setStatus('warn', errorText(code), what, m.message);
      if (again) {
        state.queue.unshift(job); // not done: it goes again after the pause
        pump();
        return;
      }
      if (job.source === 'camera' || job.item.predictions) {
        job.done = true; // the image keeps its last answer: the refusal is not about it
        return;
      }
    }
    if (code === 'unauthorized' || code === 'forbidden') keyRefused(m.message);
    failJob(job, code, m.message);
  }

  // failJob marks a job's item as failed and says why; message is the server's own
  // unless local is set (a check the page made before sending).
  function failJob(job, code, message, local = false) {
    job.done = true;
    const item = job.item;
    item.status = 'error';
    item.error = code.replace(/_/g, ' ');
    if (item === state.selected) renderItem(item);
    if (!item.camera) renderThumb(item);
    if (code === 'rate_limited' || code === 'overloaded') return; // status already says so
    if (code === 'unauthorized' || code === 'forbidden') return; // keyRefused said so
    const what = item.camera ? 'A webcam frame was not classified.' : item.name + ' was not classified.';
    if (local) setStatus('error', errorText(code), what + ' ' + message);
    else setStatus('error', errorText(code), what, message);
  }

  function keyRefused(message) {
    state.authFailed = true;
    el.key.setAttribute('aria-invalid', 'true');
    setConn('invalid key', 'error');
    if (isClientToken(state.key) && /^resume failed/.test(message || '')) {
      setStatus('error', 'The stream could not be resumed.',
        'Its client token opened it once and cannot open another: mint a new one (POST /v1/client_tokens).', message);
    } else if (isClientToken(state.key)) {
      setStatus('error', 'Client token refused (unauthorized).',
        'A client token opens one stream, once, before it expires: mint a new one (POST /v1/client_tokens).', message);
    } else {
      setStatus('error', 'Invalid API key (unauthorized).', 'Check it: keys start with ig_.', message);
    }
    if (state.selected) renderItem(state.selected);
  }

  // ---- Sending ---------------------------------------------------------------------

  // windowWait is how long a file must wait so that the frames sent in the last
  // window stay under the limit the server announced. Webcam frames are not paced
  // this way: the slider is the user's choice, and the server refuses the excess.
  // The server times a frame when it reads it, a little after it was sent, so a slot
  // is taken as free only WINDOW_SLACK_MS after the window has passed.
  function windowWait(now) {
    const w = state.limits.window_ms + WINDOW_SLACK_MS;
    while (state.sendTimes.length && state.sendTimes[0] <= now - w) state.sendTimes.shift();
    if (state.sendTimes.length < state.limits.frames) return 0;
    return state.sendTimes[0] + w - now + 1;
  }

  function noteSend(now) {
    state.sendTimes.push(now);
    if (state.sendTimes.length > 200) state.sendTimes.shift();
  }

  // pump sends queued files while the connection, the in-flight cap, the server's
  // frame window and any rate-limit pause allow.
  function pausedUntil() {
    return state.mode === 'post' ? state.postPauseUntil : state.pauseUntil;
  }

  function pump() {
    clearTimeout(pumpTimer);
    pumpTimer = 0;
    if (!state.queue.length || !state.key || state.authFailed) return;
    const now = performance.now();
    if (now < pausedUntil()) {
      pumpTimer = setTimeout(pump, pausedUntil() - now + 5);
      return;
    }
    if (state.mode === 'post') {
      while (state.queue.length && state.postInFlight < POST_IN_FLIGHT) postClassify(state.queue.shift());
      return;
    }
    ensureConnection();
    const c = conn;
    if (!c || !c.ready) return; // onReady pumps again
    while (state.queue.length && c.inFlight() < state.limits.max_in_flight) {
      const wait = windowWait(now);
      if (wait > 0) {
        pumpTimer = setTimeout(pump, wait);
        return;
      }
      const job = state.queue.shift();
      if (job.done) continue;
      if (job.blob.size > state.limits.max_message_bytes) {
        failJob(job, 'image_too_large', 'The file is ' + fmtBytes(job.blob.size) + '; a stream message may hold at most ' +
          fmtBytes(state.limits.max_message_bytes) + '.', true);
        continue;
      }
      if (job.blob.size === 0) {
        failJob(job, 'invalid_image', 'The file is empty.', true);
        continue;
      }
      job.attempts++;
      noteSend(now);
      c.send(job);
    }
  }

  // postClassify sends one job with POST /v1/classify (raw body, Bearer key).
  async function postClassify(job) {
    if (!state.key) {
      setStatus('info', 'Paste an API key', 'to send by POST.');
      return;
    }
    if (isClientToken(state.key)) {
      failJob(job, 'unauthorized', 'A client token opens one stream only; POST /v1/classify needs an API key.', true);
      setStatus('error', 'Not sent by POST.', 'A client token opens one stream only; POST /v1/classify needs an API key.');
      return;
    }
    state.postInFlight++;
    job.attempts++;
    job.viaPost = true;
    job.sentAt = performance.now();
    setTransport('post');
    if (job.item === state.selected) renderItem(job.item);
    let res;
    let body = null;
    try {
      res = await fetch('/v1/classify', {
        method: 'POST',
        headers: { Authorization: 'Bearer ' + state.key, 'Content-Type': job.blob.type || 'application/octet-stream' },
        body: job.blob,
        cache: 'no-store',
        credentials: 'omit',
      });
      body = await res.json().catch(() => null);
    } catch (err) {
      state.postInFlight--;
      failJob(job, 'network', String((err && err.message) || err), true);
      return;
    }
    state.postInFlight--;
    const limit = res.headers.get('RateLimit-Limit');
    const remaining = res.headers.get('RateLimit-Remaining');
    if (limit && remaining) state.postQuota = 'POST: ' + remaining + ' of ' + limit + '/min left';
    renderLimits();
    if (res.ok && body) {
      onResult(job, body, 'post');
    } else {
      const e = (body && body.error) || { code: res.status === 401 ? 'unauthorized' : 'internal', message: 'HTTP ' + res.status };
      const ra = Number(res.headers.get('Retry-After'));
      onFrameError(job, { code: e.code, message: e.message, retry_after_ms: ra > 0 ? ra * 1000 : 0 }, 'post');
    }
    pump();
  }

  // ---- Stream connections ----------------------------------------------------------
  //
  // A connection object has: kind ("websocket" or "sse"), ready, send(job),
  // inFlight(), lost(), close(), and for the stream's settings settings (what the
  // server last said is in force, null before "ready" or from a server without
  // settings), mode() (the mode in force or asked for) and update(settings). It
  // reports to onReady, onResult/onSkipped/onFrameError and onClosed, and is ignored
  // once it is no longer `conn`.

  function ensureConnection() {
    if (conn || reconnectTimer || !state.key || state.authFailed || state.mode === 'post') return;
    if (state.mode === 'sse') {
      if (resumeFrom) abandonResume('');
      conn = openSSE(state.key);
    } else {
      conn = openWebSocket(state.key, resumeFrom);
    }
  }

  // desiredMode is the stream mode the page wants now: "latest" while the webcam runs
  // (unless ?webcam=ordered), else "ordered", so that every picked image is answered.
  function desiredMode() {
    return state.camera ? webcamMode : 'ordered';
  }

  // syncMode asks the server to switch the open stream to the mode the page wants.
  // Frames sent after the update get the new mode (the server applies it in order).
  function syncMode() {
    const c = conn;
    if (!c || !c.ready || !c.settings) return;
    const want = desiredMode();
    if (c.mode() !== want) c.update({ mode: want });
    renderMode();
  }

  function renderMode() {
    const c = conn;
    if (state.mode === 'post') {
      el.streamMode.textContent = '–';
      return;
    }
    if (!c || !c.settings) {
      el.streamMode.textContent = '–';
      return;
    }
    const asked = c.mode();
    el.streamMode.textContent = c.settings.mode + (asked !== c.settings.mode ? ' → ' + asked : '');
  }

  // onSettings is told the settings now in force ("ready" or "session.updated").
  function onSettings(c, settings) {
    if (conn !== c) return;
    if (settings && settings.fps && state.limits.frames !== settings.fps) {
      state.limits = { ...state.limits, frames: settings.fps };
    }
    renderLimits();
    renderMode();
  }

  // onSettingsRefused is told that the server refused a session.update: the settings
  // stay as they were.
  function onSettingsRefused(c, message) {
    if (conn !== c) return;
    setStatus('warn', 'Stream settings not changed.', 'The server refused the new mode.', message);
    renderMode();
  }

  function onReady(c, m) {
    if (conn !== c) return;
    backoff = 0;
    if (c.kind === 'websocket') {
      state.wsWorked = true;
      state.wsFailures = 0;
    }
    if (m.limits) state.limits = { ...DEFAULT_LIMITS, ...m.limits };
    setConn('ready', 'ready');
    setTransport(c.kind);
    renderLimits();
    // Replace a hint or a connection problem with the news; keep an image's answer.
    if (state.connNotice || el.status.dataset.kind === 'info' || el.key.getAttribute('aria-invalid') === 'true' ||
        (state.camera && el.status.dataset.kind !== 'error')) {
      const why = state.fellBack ? ' (the WebSocket could not connect)' : '';
      if (state.camera) setStatus('ok', 'Webcam streaming', 'over ' + c.kind + why + '.');
      else setStatus('ok', 'Connected', 'over ' + c.kind + why + '. Pick or drop an image, or start the webcam.');
    }
    state.connNotice = false;
    el.key.removeAttribute('aria-invalid');
    if (c.resumed) afterResume(c);
    updatePostButton();
    syncMode();
    renderStats();
    pump();
  }

  // afterResume is told how an attempt to resume went (c.resumed, set by openWebSocket
  // from "ready"): {ok, error, replayed, unread}, unread being the jobs the server
  // never read (all of the old stream's jobs when it could not be resumed).
  function afterResume(c) {
    const r = c.resumed;
    resumeFrom = null;
    // Jobs the server never read: images go again (they get new seqs), webcam frames
    // are dropped, a newer frame follows anyway.
    const again = r.unread.filter((j) => !j.done && j.source === 'file');
    r.unread.forEach((j) => { if (j.source !== 'file') j.done = true; });
    again.sort((a, b) => b.seq - a.seq).forEach(requeue);
    if (r.ok) {
      state.resumes++;
      setConn('resumed', 'ready');
      setStatus('ok', 'Stream resumed', 'after the connection dropped: ' + r.replayed + ' answer' +
        (r.replayed === 1 ? '' : 's') + ' sent again by the server' +
        (again.length ? ', ' + again.length + ' image' + (again.length === 1 ? '' : 's') + ' sent again' : '') + '.');
    } else {
      setStatus('info', 'A new stream was opened.', 'The dropped one could not be resumed (' + (r.error || 'refused') + ')' +
        (again.length ? '; its unanswered images are sent again.' : '.'));
    }
  }

  // tryResume decides what follows the end of WebSocket c: it returns true when the
  // stream will be resumed (an attempt is scheduled), false when the caller goes on as
  // for any other ending. Only an abnormal close (1006: no close frame came, so the
  // server kept the session waiting) of a stream that was ready, or of an attempt to
  // resume one, is resumed; each attempt waits longer, and all must start within the
  // server's resume window.
  function tryResume(c, info) {
    const sess = c.sess;
    if (!sess || !sess.id || state.authFailed || (!c.ready && !c.resuming)) return false;
    if (isClientToken(state.key) && !sess.token) return false; // nothing to resume with
    if (c.resuming && !c.ready && info.code === 4401) {
      // The resume was refused. With an API key this is the key; with a client token
      // the stream could not be resumed (expired, gap, not_found) and the token is
      // spent: either way the caller says so.
      abandonResume('');
      return false;
    }
    if (info.code !== 1006 && !(c.resuming && !c.ready && info.code === 4429)) {
      if (c.resuming) abandonResume('');
      return false;
    }
    const now = performance.now();
    if (c.ready) {
      sess.resume = { attempts: 0, deadline: now + (sess.windowMs || RESUME_WINDOW_MS) };
    }
    const r = sess.resume;
    const wait = RESUME_BACKOFF_MS[Math.min(r.attempts, RESUME_BACKOFF_MS.length - 1)];
    if (now + wait > r.deadline - 1000) {
      abandonResume('the server\'s resume window is over');
      return false;
    }
    r.attempts++;
    resumeFrom = sess;
    state.connNotice = true;
    setStatus('warn', 'Connection lost.', 'Resuming the stream (attempt ' + r.attempts + ', within ' +
      Math.round((r.deadline - now) / 1000) + ' s)…');
    scheduleReconnect(wait);
    return true;
  }

  // abandonResume gives up resuming: the images the old stream had not answered go
  // again on the next stream; why, if given, is shown.
  function abandonResume(why) {
    const sess = resumeFrom;
    resumeFrom = null;
    if (!sess) return;
    const l = [...sess.pending.values()];
    sess.pending.clear();
    sess.resume = null;
    l.filter((j) => j.source === 'file').sort((a, b) => b.seq - a.seq).forEach(requeue);
    if (why) {
      setStatus('warn', 'Could not resume the stream', '(' + why + '); opening a new one.');
      state.connNotice = true;
    }
  }

  // onClosed is told that c ended: info has code/reason (a WebSocket close or an SSE
  // "close" event), or status/error (an HTTP refusal), or network.
  function onClosed(c, info) {
    if (conn !== c) return;
    conn = null;
    renderMode();
    if (c.kind === 'websocket' && tryResume(c, info)) return;
    c.lost().sort((a, b) => b.seq - a.seq).forEach(requeue);
    const wasReady = c.ready;
    if (info.code === 4401 || info.status === 401) {
      keyRefused(info.reason || (info.error && info.error.message));
      return;
    }
    if (c.kind === 'websocket' && !wasReady && info.code !== 4429) state.wsFailures++;
    // The WebSocket could not connect, or closed before "ready": SSE from here on. Once
    // WebSockets have worked on this page, a failure more likely means the server is
    // restarting, so the WebSocket is tried a few more times first.
    if (c.kind === 'websocket' && !wasReady && !forced && info.code !== 4429 &&
        (!state.wsWorked || state.wsFailures >= 3)) {
      state.mode = 'sse';
      state.fellBack = true;
      state.connNotice = true;
      setStatus('warn', 'WebSocket unavailable', '(close ' + info.code + (info.reason ? ': ' + info.reason : '') + '); using SSE instead.');
      ensureConnection();
      return;
    }
    let wait = BACKOFF_MS[Math.min(backoff, BACKOFF_MS.length - 1)];
    backoff++;
    if (info.code === 4429 || info.status === 429) {
      wait = Math.max(wait, (info.retryAfter || 2) * 1000);
      setStatus('warn', 'Too many open streams for this key.', 'Close another tab or client; retrying in ' + Math.round(wait / 1000) + ' s.');
      state.connNotice = true;
    } else if (info.code === 1001) {
      setStatus('warn', 'The server is shutting down.', 'Reconnecting…');
      state.connNotice = true;
    } else if (info.status >= 400) {
      setStatus('error', errorText(info.error ? info.error.code : 'internal'),
        'Could not open a stream (HTTP ' + info.status + '); retrying.', info.error && info.error.message);
      state.connNotice = true;
    } else if (wasReady && state.queue.length) {
      setStatus('warn', 'Connection lost.', 'Reconnecting; unanswered images will be sent again.');
      state.connNotice = true;
    }
    scheduleReconnect(wait);
  }

  function scheduleReconnect(wait) {
    clearTimeout(reconnectTimer);
    reconnectAt = performance.now() + wait;
    setConn(resumeFrom ? 'resuming' : 'reconnecting', 'busy');
    reconnectTimer = setTimeout(() => {
      reconnectTimer = 0;
      ensureConnection();
      pump();
    }, wait);
  }

  // teardown closes the connection on purpose (new key, leaving the page): the stream
  // ends for good, with a close frame, so the server does not keep it for a resume.
  function teardown() {
    clearTimeout(reconnectTimer);
    reconnectTimer = 0;
    abandonResume('');
    const c = conn;
    conn = null;
    renderMode();
    if (!c) return;
    c.lost().sort((a, b) => b.seq - a.seq).forEach(requeue);
    c.close();
  }

  function wsURL() {
    return (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/v1/stream';
  }

  // newStream is what a WebSocket stream keeps across the connections that carry it:
  // the jobs sent and not yet answered (by seq), the count of frames sent (the server
  // numbers every frame it reads 1, 2, 3..., so a job is found again by counting), the
  // seq of the last answer received, and what ready.resume gave to resume it.
  function newStream() {
    return { pending: new Map(), sent: 0, lastSeq: 0, id: '', token: '', windowMs: 0, resume: null };
  }

  // authMessage is the first message of a WebSocket: a fresh stream's carries the key
  // (or client token) and the mode wanted; a resume carries the stream's id and the
  // last seq received, with the API key, or, for a client token (spent by now), the
  // stream's resume token alone.
  function authMessage(key, sess, resuming) {
    if (resuming) {
      const resume = { session_id: sess.id, last_seq: sess.lastSeq };
      if (isClientToken(key)) return { type: 'auth', resume: { ...resume, token: sess.token } };
      return { type: 'auth', api_key: key, resume };
    }
    const m = isClientToken(key) ? { type: 'auth', token: key } : { type: 'auth', api_key: key };
    m.session = { mode: desiredMode() };
    return m;
  }

  // openWebSocket connects to /v1/stream and authenticates with a first message, or
  // resumes stream `from` (see newStream). Frames go as binary messages.
  function openWebSocket(key, from) {
    const resuming = !!from;
    const sess = from || newStream();
    const pending = sess.pending;
    let asked = ''; // the mode of a session.update not yet answered
    let ws;
    const c = {
      kind: 'websocket',
      ready: false,
      sess,
      resuming,
      resumed: null,
      settings: null,
      inFlight: () => pending.size,
      lost: () => { const l = [...pending.values()]; pending.clear(); return l; },
      send(job) {
        sess.sent++;
        job.seq = sess.sent;
        job.sentAt = performance.now();
        pending.set(job.seq, job);
        ws.send(job.blob);
      },
      mode: () => asked || (c.settings ? c.settings.mode : ''),
      update(settings) {
        asked = settings.mode || asked;
        ws.send(JSON.stringify({ type: 'session.update', session: settings }));
      },
      close() {
        try { ws.close(1000, 'bye'); } catch (_) { /* already closed */ }
      },
    };
    setTransport('websocket');
    setConn(resuming ? 'resuming' : 'connecting', 'busy');
    try {
      ws = new WebSocket(wsURL());
    } catch (err) {
      setTimeout(() => onClosed(c, { code: 1006, reason: String(err.message || err) }), 0);
      return c;
    }
    ws.onopen = () => {
      if (conn !== c) return;
      setConn(resuming ? 'resuming' : 'authenticating', 'busy');
      ws.send(JSON.stringify(authMessage(key, sess, resuming)));
    };
    ws.onmessage = (ev) => {
      if (conn !== c || typeof ev.data !== 'string') return;
      let m;
      try { m = JSON.parse(ev.data); } catch (_) { return; }
      if (m.type === 'ready') {
        c.ready = true;
        c.settings = m.session || null;
        if (resuming) {
          if (m.resumed) {
            // The server numbered received_seq frames; those after it were never read.
            const got = Number(m.received_seq) || 0;
            const unread = [...pending].filter(([seq]) => seq > got).map(([, j]) => j);
            for (const j of unread) pending.delete(j.seq);
            sess.sent = Math.max(got, sess.lastSeq);
            c.resumed = { ok: true, replayed: Math.max(0, got - sess.lastSeq), unread };
          } else {
            // A fresh stream, numbered from 1: nothing of the old one will be answered.
            c.resumed = { ok: false, error: m.resume_error || '', unread: c.lost() };
            sess.sent = 0;
            sess.lastSeq = 0;
          }
        }
        sess.resume = null;
        sess.id = (m.resume && m.resume.session_id) || '';
        // The server gives the resume token once, in the stream's first "ready": a
        // resumed stream keeps the one it had.
        sess.token = (m.resume && m.resume.token) || (c.resumed && c.resumed.ok ? sess.token : '');
        sess.windowMs = (m.resume && m.resume.window_ms) || 0;
        onReady(c, m);
        return;
      }
      if (m.type === 'session.updated') {
        c.settings = m.session || c.settings;
        if (c.settings && asked === c.settings.mode) asked = '';
        onSettings(c, c.settings);
        return;
      }
      if (m.type !== 'result' && m.type !== 'error' && m.type !== 'skipped') return;
      if (m.seq == null) {
        // An error with no seq answers a message that is not a frame: a refused
        // session.update (nothing else is sent).
        if (m.type === 'error') {
          asked = '';
          onSettingsRefused(c, m.message);
        }
        return;
      }
      if (m.seq <= sess.lastSeq) return; // already answered (the server never resends these)
      sess.lastSeq = m.seq;
      const job = pending.get(m.seq);
      pending.delete(m.seq);
      if (m.type === 'skipped') {
        onSkipped(job, m);
      } else if (!job) {
        if (m.type === 'error') setStatus('error', errorText(m.code), '', m.message);
      } else if (m.type === 'result') {
        onResult(job, m, 'websocket');
      } else {
        onFrameError(job, m, 'websocket');
      }
      pump();
    };
    ws.onclose = (ev) => {
      if (conn !== c) return;
      onClosed(c, { code: ev.code, reason: ev.reason });
    };
    return c;
  }

  // openSSE opens an SSE session: POST /v1/sessions, then an EventSource on its
  // events_url; frames are POSTed to frames_url with the session token.
  function openSSE(key) {
    const pending = new Map(); // seq -> job, accepted (202) and not yet answered
    const early = new Map(); // seq -> message that came before its 202
    const answered = new Set(); // seqs answered by their POST (the event repeats it)
    const posting = new Set(); // jobs whose POST has not answered
    const abort = new AbortController();
    let session = null;
    let es = null;
    let asked = ''; // the mode of a session.update not yet answered
    let settling = null; // that update's POST: frames wait for it, so they get the new mode
    const c = {
      kind: 'sse',
      ready: false,
      settings: null,
      inFlight: () => pending.size + posting.size,
      lost: () => {
        const l = [...pending.values(), ...posting];
        pending.clear();
        posting.clear();
        return l;
      },
      send(job) {
        job.sentAt = performance.now();
        posting.add(job);
        if (settling) settling.then(() => postFrame(job));
        else postFrame(job);
      },
      mode: () => asked || (c.settings ? c.settings.mode : ''),
      update(settings) {
        asked = settings.mode || asked;
        const p = (settling || Promise.resolve()).then(() => postUpdate(settings));
        settling = p;
        p.then(() => { if (settling === p) settling = null; });
      },
      close() {
        abort.abort();
        if (es) es.close();
        deleteSession(session);
        session = null;
      },
    };

    // end gives up on this session: the event stream failed for good, or a frame
    // POST found the session gone. The session is deleted in case it still lives (a
    // page being left sees its event stream fail before pagehide), so it does not hold
    // one of the key's connections until it expires.
    function end(info, deleted = false) {
      if (conn !== c) return;
      c.close = () => {};
      abort.abort();
      if (es) es.close();
      if (!deleted) deleteSession(session);
      session = null;
      onClosed(c, info);
    }

    // postUpdate sends a session.update as a frames POST; it answers 200 with the
    // settings now in force (a session.updated event says the same).
    async function postUpdate(settings) {
      if (!session || conn !== c) return;
      let res;
      let body = null;
      try {
        res = await fetch(session.frames_url, {
          method: 'POST',
          headers: { 'X-Session-Token': session.token, 'Content-Type': 'application/json' },
          body: JSON.stringify({ type: 'session.update', session: settings }),
          cache: 'no-store',
          credentials: 'omit',
          signal: abort.signal,
        });
        body = await res.json().catch(() => null);
      } catch (_) {
        return; // the event stream's end says what happened
      }
      if (conn !== c) return;
      if (res.ok && body && body.session) {
        c.settings = body.session;
        if (asked === c.settings.mode) asked = '';
        onSettings(c, c.settings);
      } else {
        asked = '';
        onSettingsRefused(c, body && body.error && body.error.message);
      }
    }

    async function postFrame(job) {
      if (!session || conn !== c) {
        if (posting.delete(job)) requeue(job);
        return;
      }
      let res;
      let body = null;
      try {
        res = await fetch(session.frames_url, {
          method: 'POST',
          headers: { 'X-Session-Token': session.token, 'Content-Type': job.blob.type || 'application/octet-stream' },
          body: job.blob,
          cache: 'no-store',
          credentials: 'omit',
          signal: abort.signal,
        });
        body = await res.json().catch(() => null);
      } catch (_) {
        if (!posting.delete(job)) return; // already handed back by lost()
        requeue(job);
        end({ network: true });
        return;
      }
      if (!posting.delete(job)) return;
      if (conn !== c) {
        requeue(job);
        return;
      }
      if (res.status === 202 && body) {
        job.seq = body.seq;
        const m = early.get(body.seq);
        if (m) {
          early.delete(body.seq);
          answer(job, m);
        } else {
          pending.set(body.seq, job);
        }
        return;
      }
      if (res.status === 404 || res.status === 401) {
        // The session has ended (expired, or the server restarted): start another.
        requeue(job);
        end({ network: true }, true);
        return;
      }
      // A refused or malformed frame is answered here at once; the event stream
      // carries the same error for its seq, which is then skipped.
      const seq = body && body.seq;
      if (seq) {
        answered.add(seq);
        early.delete(seq);
      }
      const e = (body && body.error) || { code: 'internal', message: 'HTTP ' + res.status };
      const ra = Number(res.headers.get('Retry-After'));
      answer(job, { type: 'error', code: e.code, message: e.message, retry_after_ms: ra > 0 ? ra * 1000 : 0 });
    }

    function answer(job, m) {
      if (m.type === 'skipped') onSkipped(job, m);
      else if (m.type === 'result') onResult(job, m, 'sse');
      else onFrameError(job, m, 'sse');
      pump();
    }

    function onEvent(m) {
      if (answered.delete(m.seq)) return;
      const job = pending.get(m.seq);
      if (!job) {
        early.set(m.seq, m);
        if (early.size > 256) early.delete(early.keys().next().value);
        return;
      }
      pending.delete(m.seq);
      answer(job, m);
    }

    setTransport('sse');
    setConn('opening session', 'busy');
    (async () => {
      let res;
      let body = null;
      try {
        res = await fetch('/v1/sessions', {
          method: 'POST',
          headers: { Authorization: 'Bearer ' + key, 'Content-Type': 'application/json' },
          body: JSON.stringify({ session: { mode: desiredMode() } }),
          cache: 'no-store',
          credentials: 'omit',
          signal: abort.signal,
        });
        body = await res.json().catch(() => null);
      } catch (_) {
        if (conn === c) onClosed(c, { network: true });
        return;
      }
      if (res.status !== 201 || !body) {
        if (conn === c) {
          onClosed(c, { status: res.status, error: body && body.error, retryAfter: Number(res.headers.get('Retry-After')) || 0 });
        }
        return;
      }
      session = body;
      if (conn !== c) {
        deleteSession(session);
        return;
      }
      setConn('connecting events', 'busy');
      es = new EventSource(session.events_url);
      const parse = (ev) => { try { return JSON.parse(ev.data); } catch (_) { return null; } };
      es.addEventListener('ready', (ev) => {
        const m = parse(ev);
        if (conn !== c || !m) return;
        c.ready = true;
        c.settings = m.session || null;
        onReady(c, m);
      });
      es.addEventListener('result', (ev) => {
        const m = parse(ev);
        if (conn === c && m) onEvent(m);
      });
      es.addEventListener('skipped', (ev) => {
        const m = parse(ev);
        if (conn === c && m) onEvent(m);
      });
      es.addEventListener('session.updated', (ev) => {
        const m = parse(ev);
        if (conn !== c || !m || !m.session) return;
        c.settings = m.session;
        if (asked === c.settings.mode) asked = '';
        onSettings(c, c.settings);
      });
      // "error" is both the server's error event (a MessageEvent with data) and the
      // EventSource's own signal that the connection failed.
      es.addEventListener('error', (ev) => {
        if (conn !== c) return;
        if (typeof ev.data === 'string') {
          const m = parse(ev);
          if (m && m.seq != null) onEvent(m); // one with no seq is not about a frame
          return;
        }
        if (es.readyState === EventSource.CLOSED) {
          end({ network: true }); // the event stream was refused: open another session
        } else {
          setConn('reconnecting events', 'busy'); // EventSource retries with Last-Event-ID
        }
      });
      es.addEventListener('close', (ev) => {
        const m = parse(ev) || {};
        end({ code: m.code, reason: m.reason }, true); // the server ended the session
      });
    })();
    return c;
  }

  function deleteSession(s) {
    if (!s) return;
    fetch('/v1/sessions/' + encodeURIComponent(s.session_id), {
      method: 'DELETE',
      headers: { 'X-Session-Token': s.token },
      keepalive: true,
      credentials: 'omit',
    }).catch(() => { /* it expires by itself */ });
  }

  // ---- Webcam ----------------------------------------------------------------------

  async function startCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setStatus('error', 'No webcam access here.', 'The browser allows it only on https:// pages or on localhost.');
      return;
    }
    el.camera.disabled = true;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 } },
        audio: false,
      });
    } catch (err) {
      el.camera.disabled = false;
      const why = {
        NotAllowedError: 'Permission to use the webcam was refused.',
        NotFoundError: 'No webcam was found.',
        NotReadableError: 'The webcam is in use by another program.',
      }[err && err.name] || String(err && err.message || err);
      setStatus('error', 'Webcam unavailable.', why);
      return;
    }
    el.camera.disabled = false;
    el.stageVideo.srcObject = stream;
    try { await el.stageVideo.play(); } catch (_) { /* autoplay of a muted video is allowed */ }
    const cam = { stream, timer: 0, canvas: document.createElement('canvas'), capturing: false };
    state.camera = cam;
    state.cameraItem.status = 'pending';
    state.cameraItem.predictions = null;
    state.cameraItem.meta = null;
    el.camera.setAttribute('aria-pressed', 'true');
    el.camera.textContent = 'Stop webcam';
    showItem(state.cameraItem);
    syncMode(); // mode latest from the next frame on
    restartCameraTimer();
    setStatus('ok', 'Webcam on.', !state.key ? 'Paste an API key to start sending frames.'
      : 'Streaming frames at up to ' + el.fps.value + ' per second' +
        (webcamMode === 'latest' ? ': the server answers the newest and skips the older ones.' : '.'));
    ensureConnection();
  }

  function stopCamera() {
    const cam = state.camera;
    if (!cam) return;
    state.camera = null;
    clearInterval(cam.timer);
    syncMode(); // back to mode ordered, before any image is sent
    for (const t of cam.stream.getTracks()) t.stop();
    el.stageVideo.srcObject = null;
    el.camera.setAttribute('aria-pressed', 'false');
    el.camera.textContent = 'Start webcam';
    if (el.status.dataset.kind !== 'error') {
      setStatus('info', 'Webcam off.', state.cameraItem.blob ? 'Its last frame stays on the stage; "Send by POST" sends it.' : '');
    }
    if (state.selected === state.cameraItem) {
      // Keep the last frame on the stage as a still, so "Send by POST" can use it.
      const blob = state.cameraItem.blob;
      if (blob) {
        const item = {
          id: nextItemID++, name: 'webcam frame', blob, url: URL.createObjectURL(blob),
          status: state.cameraItem.predictions ? 'done' : 'pending',
          predictions: state.cameraItem.predictions, meta: state.cameraItem.meta, error: '',
        };
        state.items.unshift(item);
        el.recent.prepend(addThumb(item));
        renderThumb(item);
        showItem(item);
      } else {
        showItem(state.items[0] || null);
      }
    }
  }

  function restartCameraTimer() {
    const cam = state.camera;
    if (!cam) return;
    clearInterval(cam.timer);
    cam.timer = setInterval(cameraTick, 1000 / Number(el.fps.value));
  }

  // cameraTick grabs a frame and sends it, unless the connection is not ready, the
  // in-flight cap is reached, or the server asked to wait: such ticks are skipped, so
  // frames never pile up in the page.
  function cameraTick() {
    const cam = state.camera;
    const v = el.stageVideo;
    if (!cam || cam.capturing || v.readyState < 2 || !v.videoWidth) return;
    if (!state.key || state.authFailed || performance.now() < pausedUntil()) return;
    if (state.mode === 'post') {
      if (state.postInFlight >= POST_IN_FLIGHT) return;
    } else {
      ensureConnection();
      if (!conn || !conn.ready || conn.inFlight() >= state.limits.max_in_flight) return;
    }
    const scale = Math.min(1, 640 / v.videoWidth);
    const w = Math.round(v.videoWidth * scale);
    const h = Math.round(v.videoHeight * scale);
    const cv = cam.canvas;
    if (cv.width !== w || cv.height !== h) {
      cv.width = w;
      cv.height = h;
    }
    cv.getContext('2d').drawImage(v, 0, 0, w, h);
    cam.capturing = true;
    cv.toBlob((blob) => {
      cam.capturing = false;
      if (!blob || state.camera !== cam) return;
      state.cameraItem.blob = blob;
      updatePostButton();
      const job = { item: state.cameraItem, blob, source: 'camera', attempts: 1, seq: 0, sentAt: 0, done: false };
      if (state.mode === 'post') {
        postClassify(job);
        return;
      }
      const c = conn;
      if (!c || !c.ready || c.inFlight() >= state.limits.max_in_flight) return;
      noteSend(performance.now());
      c.send(job);
    }, 'image/jpeg', 0.82);
  }

  // ---- Stats and chart -------------------------------------------------------------

  function renderLimits() {
    const l = state.limits;
    const parts = [];
    if (state.mode !== 'post') parts.push('stream: ' + l.frames + ' frames / ' + (l.window_ms / 1000) + ' s');
    if (state.postQuota) parts.push(state.postQuota);
    el.limits.textContent = parts.join(' · ');
    el.fpsNote.textContent = state.mode === 'post'
      ? 'Each frame is one POST, counted against the key\'s requests per minute.'
      : webcamMode === 'latest'
        ? 'The server admits ' + l.frames + ' frames per ' + (l.window_ms / 1000) + ' s; in mode latest it answers the newest frame and skips the older ones.'
        : 'The server admits ' + l.frames + ' frames per ' + (l.window_ms / 1000) + ' s on a stream; faster frames are refused.';
  }

  function renderStats() {
    const now = performance.now();
    while (state.resultTimes.length && state.resultTimes[0] < now - 2000) state.resultTimes.shift();
    // Results in the last two seconds, over the time they span (at least one second,
    // so that a burst right after a start does not read as a high rate).
    const rt = state.resultTimes;
    const span = Math.min(2, Math.max(1, (now - (rt[0] || now)) / 1000));
    el.fpsLive.textContent = rt.length >= 2 ? (rt.length / span).toFixed(1) : '–';
    const recent = state.samples.slice(-P50_OVER);
    el.latency.textContent = fmtMs(median(recent.map((s) => s.rtt)));
    el.serverLatency.textContent = fmtMs(median(recent.filter((s) => s.server != null).map((s) => s.server)));
    el.answered.textContent = String(state.answered);
    el.refused.textContent = String(state.refused);
    el.skipped.textContent = String(state.skipped);
    el.resumed.textContent = String(state.resumes);
    const sess = (conn && conn.sess) || resumeFrom;
    el.lastSeq.textContent = sess && sess.lastSeq ? String(sess.lastSeq) : '–';
    const left = Math.max(state.pauseUntil, state.postPauseUntil) - now;
    el.retry.textContent = left > 0 ? (left / 1000).toFixed(1) + ' s' : '–';
    el.retry.parentElement.parentElement.classList.toggle('waiting', left > 0);
    if (reconnectTimer) {
      el.connState.textContent = (resumeFrom ? 'resuming' : 'reconnecting') + ' in ' +
        Math.max(0, Math.ceil((reconnectAt - now) / 1000)) + ' s';
    }
  }

  let chartQueued = false;
  function scheduleChart() {
    if (chartQueued) return;
    chartQueued = true;
    requestAnimationFrame(() => {
      chartQueued = false;
      drawChart();
    });
  }

  function niceCeil(v) {
    const steps = [1, 2, 5];
    let base = 1;
    for (;;) {
      for (const s of steps) if (s * base >= v) return s * base;
      base *= 10;
    }
  }

  function drawChart() {
    const cv = el.chart;
    const dpr = window.devicePixelRatio || 1;
    const w = cv.clientWidth;
    const h = cv.clientHeight;
    if (!w || !h) return;
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
      cv.width = Math.round(w * dpr);
      cv.height = Math.round(h * dpr);
    }
    const ctx = cv.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.documentElement);
    const color = (name) => css.getPropertyValue(name).trim();
    const data = state.samples;
    ctx.font = '11px system-ui, sans-serif';
    if (!data.length) {
      ctx.fillStyle = color('--muted');
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      ctx.fillText('latency of each frame appears here', w / 2, h / 2);
      return;
    }
    let max = 1;
    for (const s of data) max = Math.max(max, s.rtt, s.server || 0);
    max = niceCeil(max * 1.1);
    const left = 54;
    const right = 8;
    const top = 8;
    const bottom = 8;
    const ph = h - top - bottom;
    const pw = w - left - right;
    const y = (v) => top + ph - (v / max) * ph;
    const x = (i) => left + (data.length === 1 ? pw : (i / (SAMPLES - 1)) * pw);
    ctx.strokeStyle = color('--grid');
    ctx.fillStyle = color('--muted');
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (const f of [0, 0.5, 1]) {
      const yy = Math.round(y(max * f)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(w - right, yy);
      ctx.stroke();
      ctx.fillText(Math.round(max * f) + ' ms', left - 6, yy);
    }
    // Newest sample at the right edge; older ones to its left.
    const offset = SAMPLES - data.length;
    const series = (key, stroke) => {
      ctx.strokeStyle = stroke;
      ctx.fillStyle = stroke;
      ctx.lineWidth = 2;
      ctx.lineJoin = 'round';
      ctx.beginPath();
      let started = false;
      data.forEach((s, i) => {
        const v = s[key];
        if (v == null) return;
        const px = x(i + offset);
        const py = y(v);
        if (started) ctx.lineTo(px, py);
        else ctx.moveTo(px, py);
        started = true;
      });
      ctx.stroke();
      if (data.length <= 20) {
        data.forEach((s, i) => {
          if (s[key] == null) return;
          ctx.beginPath();
          ctx.arc(x(i + offset), y(s[key]), 2.5, 0, Math.PI * 2);
          ctx.fill();
        });
      }
    };
    series('server', color('--srv'));
    series('rtt', color('--rtt'));
  }

  // ---- Wiring ----------------------------------------------------------------------

  function updatePostButton() {
    const item = state.selected;
    el.post.disabled = !item || !item.blob;
  }

  function setKey(k) {
    if (k === state.key) return;
    teardown();
    state.key = k;
    state.authFailed = false;
    backoff = 0;
    state.pauseUntil = 0;
    el.key.removeAttribute('aria-invalid');
    if (!k) {
      setConn('no key', 'idle');
      setStatus('info', 'Paste an API key to start.', '');
      return;
    }
    if (state.mode === 'post') {
      setConn('ready (POST only)', 'ready');
      setTransport('post');
    }
    if (state.selected && state.selected.status === 'pending') renderItem(state.selected);
    ensureConnection();
    pump();
  }

  function init() {
    buildPredictionRows();
    renderLimits();
    setTransport(state.mode);
    if (forced === 'post') setConn('no key', 'idle');

    try {
      el.key.value = sessionStorage.getItem(KEY_STORE) || '';
    } catch (_) { /* storage may be disabled */ }
    el.key.addEventListener('input', () => {
      const k = el.key.value.trim();
      try {
        if (k) sessionStorage.setItem(KEY_STORE, k);
        else sessionStorage.removeItem(KEY_STORE);
      } catch (_) { /* storage may be disabled */ }
      clearTimeout(keyTimer);
      keyTimer = setTimeout(() => setKey(k), 300);
    });
    el.keyToggle.addEventListener('click', () => {
      const show = el.key.type === 'password';
      el.key.type = show ? 'text' : 'password';
      el.keyToggle.textContent = show ? 'Hide' : 'Show';
      el.keyToggle.setAttribute('aria-pressed', String(show));
    });

    el.file.addEventListener('change', () => {
      addFiles(el.file.files);
      el.file.value = ''; // picking the same file again sends it again
    });

    // Drop anywhere on the page; the stage lights up while something is dragged over.
    let dragDepth = 0;
    const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes('Files');
    document.addEventListener('dragenter', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      dragDepth++;
      el.stage.classList.add('dragging');
    });
    document.addEventListener('dragover', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = 'copy';
    });
    document.addEventListener('dragleave', () => {
      dragDepth = Math.max(0, dragDepth - 1);
      if (!dragDepth) el.stage.classList.remove('dragging');
    });
    document.addEventListener('drop', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      dragDepth = 0;
      el.stage.classList.remove('dragging');
      addFiles(e.dataTransfer.files);
    });
    // Pasting an image (not text) classifies it too.
    document.addEventListener('paste', (e) => {
      const files = e.clipboardData ? [...e.clipboardData.files].filter((f) => f.type.startsWith('image/')) : [];
      if (files.length) {
        e.preventDefault();
        addFiles(files);
      }
    });

    el.camera.addEventListener('click', () => (state.camera ? stopCamera() : startCamera()));
    el.fps.addEventListener('input', () => {
      el.fpsOut.textContent = el.fps.value;
      restartCameraTimer();
    });
    el.post.addEventListener('click', () => {
      const item = state.selected;
      if (!item || !item.blob) return;
      const job = { item, blob: item.blob, source: item.camera ? 'camera' : 'file', attempts: 0, seq: 0, sentAt: 0, done: false };
      if (!item.camera) {
        item.status = 'pending';
        renderThumb(item);
      }
      postClassify(job);
    });

    // Leaving the page ends the stream (an SSE session is deleted, so it does not
    // hold one of the key's connections until it expires); coming back from the
    // back-forward cache opens a new one.
    window.addEventListener('pagehide', () => {
      stopCamera();
      teardown();
    });
    window.addEventListener('pageshow', (e) => {
      if (e.persisted) {
        ensureConnection();
        pump();
      }
    });
    window.addEventListener('online', () => {
      if (reconnectTimer) {
        clearTimeout(reconnectTimer);
        reconnectTimer = 0;
        ensureConnection();
      }
    });
    window.addEventListener('resize', scheduleChart);
    const dark = window.matchMedia && window.matchMedia('(prefers-color-scheme: dark)');
    if (dark && dark.addEventListener) dark.addEventListener('change', scheduleChart);

    setInterval(renderStats, 250);
    renderStats();
    drawChart();
    updatePostButton();
    if (el.key.value.trim()) setKey(el.key.value.trim());
  }

  init();
})();
