/* itsproxy dashboard.
 * Polls GET /v1/its/history?range=… (server-side buckets: survives a reload of the page, and with
 * Redis a restart of the proxy) and draws it; nothing is accumulated in the page.
 * Request URLs are built from location.origin (never from a URL carrying user:key@, which fetch()
 * refuses); the key goes in an Authorization header (from ?key=, the key box, or the page URL).
 * Test hooks: body[data-polls], body[data-poll-errors], .chart[data-series-points]. */
(() => {
  'use strict';
  const POLL_MS = 5000;
  const KEY_STORE = 'itsproxy.apiKey';
  const C = { req: '#2563eb', c4: '#f59e0b', c5: '#b42318', c499: '#7c3aed', prompt: '#0f766e', compl: '#2563eb',
              extra: '#f59e0b', saved: '#16a34a', cost: '#1b2430', p50: '#0f766e', p95: '#c2410c', t50: '#7c3aed', t95: '#db2777' };
  const $ = (sel) => document.querySelector(sel);
  const root = document.body.dataset.root || '';
  const charts = {};
  const RANGES = ['15m', '1h', '6h', '24h'];
  const asked = new URLSearchParams(location.search).get('range');
  let range = RANGES.includes(asked) ? asked : '1h', polls = 0, errors = 0;

  // ---------- formatting ----------
  const dash = '—';
  const ok = (x) => x !== null && x !== undefined && Number.isFinite(x);
  function fmtNum(x) {
    if (!ok(x)) return dash;
    const a = Math.abs(x);
    if (a >= 1e6) return (x / 1e6).toPrecision(3) + 'M';
    if (a >= 1e4) return (x / 1e3).toPrecision(3) + 'k';
    if (a >= 100 || Number.isInteger(x)) return Math.round(x).toLocaleString('en-US');
    return a === 0 ? '0' : x.toFixed(a >= 10 ? 1 : 2);
  }
  function fmtSec(s) {
    if (!ok(s)) return dash;
    if (s < 0.01) return (s * 1000).toFixed(1) + '\u00a0ms';
    if (s < 1) return Math.round(s * 1000) + '\u00a0ms';
    return s < 60 ? s.toFixed(2) + '\u00a0s' : (s / 60).toFixed(1) + '\u00a0min';
  }
  function fmtUsd(x) {
    if (!ok(x)) return dash;
    if (x === 0) return '$0';
    if (Math.abs(x) < 0.01) return '$' + x.toPrecision(2);
    return '$' + x.toFixed(Math.abs(x) < 100 ? 2 : 0);
  }
  const pct = (a, b) => (b > 0 ? ` (${Math.round((a / b) * 100)}%)` : '');

  // ---------- auth and URLs ----------
  function pageKey() {
    const q = new URLSearchParams(location.search).get('key');
    if (q) return q;
    try { const u = new URL(location.href); if (u.password) return decodeURIComponent(u.password); } catch (e) { /* no key in the URL */ }
    return localStorage.getItem(KEY_STORE) || '';
  }
  let key = pageKey();
  const api = (path, params) => {
    const url = new URL(root + path, location.origin);  // origin never carries user:key@
    for (const [k, v] of Object.entries(params || {})) url.searchParams.set(k, v);
    return url.toString();
  };

  // ---------- charts ----------
  function timeChart(id, series, fmt) {
    const el = document.getElementById('chart-' + id);
    const opts = {
      width: el.clientWidth || 480, height: 220, cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [{}, { values: (u, splits) => splits.map(fmt), size: 64 }],
      series: [{}].concat(series.map(([label, stroke, extra]) => ({ label, stroke, width: 2, value: (u, v) => fmt(v), ...extra }))),
    };
    charts[id] = new uPlot(opts, [[], ...series.map(() => [])], el);
  }

  function makeCharts() {
    if (typeof uPlot === 'undefined') return;  // vendored script missing: tiles and tables still work
    const fill = (c) => ({ fill: c + '22' });
    timeChart('requests', [['requests', C.req, fill(C.req)], ['4xx', C.c4], ['5xx', C.c5], ['499 left', C.c499]], fmtNum);
    timeChart('tokens', [['prompt', C.prompt], ['completion', C.compl], ['extra', C.extra, fill(C.extra)],
      ['saved (est.)', C.saved, { dash: [6, 4] }]], fmtNum);
    timeChart('dollars', [['cost', C.cost], ['extra candidates', C.extra, fill(C.extra)],
      ['saved (est.)', C.saved, { dash: [6, 4] }]], fmtUsd);
    // Quantiles exist only in buckets with requests: points, so a lone bucket still shows.
    const dots = (extra) => ({ points: { show: true, size: 6 }, ...extra });
    timeChart('latency', [['p50', C.p50, dots()], ['p95', C.p95, dots()], ['TTFT p50', C.t50, dots({ dash: [6, 4] })],
      ['TTFT p95', C.t95, dots({ dash: [6, 4] })]], fmtSec);
    const ro = new ResizeObserver(() => {
      for (const [id, c] of Object.entries(charts)) c.setSize({ width: document.getElementById('chart-' + id).clientWidth, height: 220 });
    });
    document.querySelectorAll('.chart').forEach((el) => ro.observe(el));
  }

  function setChart(id, t, cols) {
    const el = document.getElementById('chart-' + id);
    if (charts[id]) charts[id].setData([t, ...cols]);
    el.dataset.seriesPoints = String(t.filter((_, i) => cols.some((c) => ok(c[i]) && c[i] !== 0)).length);
  }

  function drawCharts(h) {
    const p = h.total.points, per = 60 / h.step_s, t = h.t;
    const rate = (col) => col.map((v) => (ok(v) ? v * per : null));
    const status = (test) => t.map((_, i) => Object.entries(p.by_status)
      .filter(([code]) => test(+code)).reduce((s, [, col]) => s + col[i], 0));
    setChart('requests', t, [rate(p.requests), rate(status((c) => c >= 400 && c < 500 && c !== 499)),
      rate(status((c) => c >= 500)), rate(status((c) => c === 499))]);
    setChart('tokens', t, [rate(p.prompt_tokens), rate(p.completion_tokens), rate(p.extra_tokens), rate(p.saved_tokens)]);
    setChart('dollars', t, [rate(p.cost_usd), rate(p.extra_usd), rate(p.saved_usd)]);
    setChart('latency', t, [p.latency_p50, p.latency_p95, p.ttft_p50, p.ttft_p95]);
  }

  // ---------- tiles and tables ----------
  function tile(id, value, sub) {
    const el = document.getElementById('tile-' + id);
    el.querySelector('.value').textContent = value;
    el.querySelector('.sub').textContent = sub || '';
  }

  function drawTiles(h) {
    const x = h.total.totals, tokens = x.prompt_tokens + x.completion_tokens;
    const codes = Object.entries(x.by_status).filter(([c]) => +c >= 400).map(([c, n]) => `${c}×${n}`);
    tile('requests', fmtNum(x.requests), `${fmtNum(x.requests / ((h.until - h.since) / 60))}/min over ${range}`);
    tile('errors', fmtNum(x.errors), codes.length ? codes.join(' · ') : 'none');
    tile('tokens', fmtNum(tokens), `${fmtNum(x.prompt_tokens)} prompt · ${fmtNum(x.completion_tokens)} completion`);
    tile('cost', fmtUsd(x.cost_usd), 'priced calls only');
    tile('extra', fmtUsd(x.extra_usd), `${fmtNum(x.extra_tokens)} tokens${pct(x.extra_usd, x.cost_usd)} beyond one plain call`);
    tile('saved', fmtUsd(x.saved_usd), `≈ ${fmtNum(x.saved_tokens)} tokens not drawn (adaptive)`);
    tile('latency', `${fmtSec(x.latency_p50)} / ${fmtSec(x.latency_p95)}`, 'all requests');
    tile('ttft', `${fmtSec(x.ttft_p50)} / ${fmtSec(x.ttft_p95)}`, 'streams only');
  }

  function rowOf(cells, bad) {
    const tr = document.createElement('tr');
    cells.forEach((text, i) => {
      const td = document.createElement('td');
      td.textContent = text;
      if (bad && bad(i)) td.className = 'bad';
      tr.append(td);
    });
    return tr;
  }

  function routeRow(name, x) {
    const codes = Object.entries(x.by_status).map(([c, n]) => `${c}:${n}`).join(' ');
    return rowOf([name, fmtNum(x.requests), fmtNum(x.errors), codes, fmtNum(x.prompt_tokens), fmtNum(x.completion_tokens),
      fmtUsd(x.cost_usd), fmtUsd(x.extra_usd), fmtNum(x.extra_tokens), fmtUsd(x.saved_usd), fmtNum(x.saved_tokens),
      fmtSec(x.latency_p50), fmtSec(x.latency_p95), fmtSec(x.ttft_p50)], (i) => i === 2 && x.errors > 0);
  }

  function limitText(k, field, fmt) {
    if (k.unlimited) return 'unlimited';
    return [k.limit.tokens !== null ? fmtNum(field.tokens) + ' tok' : null,
      k.limit.cost_usd !== null ? fmt(field.cost_usd) : null].filter(Boolean).join(' · ');
  }

  function drawTables(h) {
    $('#routes-table tbody').replaceChildren(...Object.entries(h.routes).map(([n, r]) => routeRow(n, r.totals)));
    $('#routes-table tfoot').replaceChildren(routeRow('all routes', h.total.totals));
    $('#models-table tbody').replaceChildren(...Object.entries(h.models).map(([n, { totals: x }]) =>
      rowOf([n, fmtNum(x.calls), fmtNum(x.errors), fmtNum(x.prompt_tokens), fmtNum(x.completion_tokens), fmtUsd(x.cost_usd)],
        (i) => i === 2 && x.errors > 0)));
    $('#keys-table tbody').replaceChildren(...h.keys.map((k) => rowOf([k.key, fmtNum(k.spent.tokens), fmtUsd(k.spent.cost_usd),
      fmtNum(k.reserved.tokens), limitText(k, k.limit, fmtUsd), k.unlimited ? dash : limitText(k, k.remaining, fmtUsd)],
      (i) => i === 5 && !k.unlimited && (k.remaining.tokens === 0 || k.remaining.cost_usd === 0))));
    $('#keys-note').textContent = h.keys_error || (h.keys.length ? `resets at ${h.keys[0].resets_at}` : 'no budgets configured');
    document.querySelectorAll('[data-range-label]').forEach((el) => { el.textContent = `(last ${range})`; });
  }

  // ---------- polling ----------
  function showError(msg) {
    const b = $('#error-banner');
    b.textContent = msg || '';
    b.hidden = !msg;
  }

  async function poll() {
    const headers = { Accept: 'application/json' };
    if (key) headers.Authorization = 'Bearer ' + key;
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), 8000);
    const url = api('/v1/its/history', { range });
    try {
      const res = await fetch(url, { headers, cache: 'no-store', signal: ctrl.signal });
      if (!res.ok) {
        const hint = res.status === 401 ? ' — set the API key (top right) or open the page with ?key=…' : '';
        throw new Error(`HTTP ${res.status} ${res.statusText}${hint}`);
      }
      const h = await res.json();
      polls += 1;
      document.body.dataset.polls = String(polls);
      showError('');
      drawTiles(h);
      drawCharts(h);
      drawTables(h);
      $('#status').textContent = `updated ${new Date(h.until * 1000).toLocaleTimeString()} · last ${range} in ` +
        `${h.step_s} s buckets · from ${h.source}`;
    } catch (err) {
      errors += 1;
      document.body.dataset.pollErrors = String(errors);
      showError(`Polling ${new URL(url).pathname} failed: ${err.name === 'AbortError' ? 'timed out' : err.message}`);
    } finally {
      clearTimeout(timer);
    }
  }

  async function loop() {
    await poll();
    setTimeout(loop, POLL_MS);  // after completion, so slow answers never pile up
  }

  function init() {
    document.querySelectorAll('#ranges button').forEach((b) => b.classList.toggle('on', b.dataset.range === range));
    document.querySelectorAll('#ranges button').forEach((b) => b.addEventListener('click', () => {
      range = b.dataset.range;
      document.querySelectorAll('#ranges button').forEach((o) => o.classList.toggle('on', o === b));
      poll();
    }));
    $('#key').value = key;
    $('#key-form').addEventListener('submit', (e) => {
      e.preventDefault();
      key = $('#key').value.trim();
      if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
      poll();
    });
    makeCharts();
    loop();
  }

  init();
})();
