/* itsproxy live dashboard.
 * Polls the stats JSON (cumulative counters) every 2 s, keeps ~10 min of snapshots and derives
 * rates and windowed latency quantiles from the deltas, as Prometheus' rate() would.
 * Test hooks: body[data-polls], body[data-poll-errors], .chart[data-series-points]. */
(() => {
  'use strict';
  const POLL_MS = 2000;
  const HISTORY_S = 600;       // rolling window kept and drawn
  const RECENT_S = 30;         // window for tiles and latency quantiles
  const ALL = '__all__';
  const KEY_STORE = 'itsproxy.apiKey';
  const COLORS = { req: '#2563eb', sel: '#2563eb', extra: '#f59e0b', p50: '#0f766e', p95: '#c2410c', bar: '#7c3aed' };

  const $ = (sel) => document.querySelector(sel);
  const statsUrl = document.body.dataset.statsUrl || '/v1/its/stats';
  const history = [];          // [{t: server unix seconds, snap}]
  const charts = {};
  let route = ALL, polls = 0, errors = 0;

  // ---------- formatting ----------
  const dash = '—';
  const ok = (x) => x !== null && x !== undefined && Number.isFinite(x);
  function fmtNum(x, digits = 3) {
    if (!ok(x)) return dash;
    const a = Math.abs(x);
    if (a >= 1e9) return (x / 1e9).toPrecision(digits) + 'B';
    if (a >= 1e6) return (x / 1e6).toPrecision(digits) + 'M';
    if (a >= 1e4) return (x / 1e3).toPrecision(digits) + 'k';
    if (a >= 100 || Number.isInteger(x)) return Math.round(x).toLocaleString('en-US');
    if (a >= 10) return x.toFixed(1);
    return a === 0 ? '0' : x.toFixed(2);
  }
  function fmtSec(s) {
    if (!ok(s)) return dash;
    if (s === 0) return '0';
    // No-break spaces: a narrow tile may wrap between two durations, never inside one.
    if (s < 0.01) return (s * 1000).toFixed(1) + '\u00a0ms';
    if (s < 1) return Math.round(s * 1000) + '\u00a0ms';
    if (s < 60) return s.toFixed(2) + '\u00a0s';
    return (s / 60).toFixed(1) + '\u00a0min';
  }
  function fmtUsd(x) {
    if (!ok(x)) return dash;
    if (x === 0) return '$0.00';
    if (x < 0.01) return '$' + x.toPrecision(3);
    if (x < 100) return '$' + x.toFixed(x < 1 ? 4 : 2);
    return '$' + Math.round(x).toLocaleString('en-US');
  }
  const fmtPct = (x) => (ok(x) ? (x * 100).toFixed(1) + '%' : dash);

  // ---------- data ----------
  const view = (snap) => (snap ? (route === ALL ? snap.total : snap.routes[route]) || null : null);

  // Prometheus' histogram_quantile: linear interpolation inside the bucket holding the rank.
  function quantile(q, les, cumulative, count) {
    if (!(count > 0)) return null;
    const rank = q * count;
    for (let i = 0; i < les.length; i++) {
      if (cumulative[i] >= rank) {
        const lower = i === 0 ? 0 : les[i - 1], below = i === 0 ? 0 : cumulative[i - 1];
        const n = cumulative[i] - below;
        return n > 0 ? lower + (les[i] - lower) * (rank - below) / n : les[i];
      }
    }
    return les.length ? les[les.length - 1] : null;  // rank in +Inf: highest finite bound
  }

  // Latency quantile of the requests that finished between two snapshots.
  function windowQuantile(q, a, b) {
    if (!a || !b) return null;
    const lb = b.latency_s.buckets, la = a.latency_s.buckets;
    const byLe = new Map(la.le.map((le, i) => [le, la.cumulative[i]]));
    const cum = lb.le.map((le, i) => lb.cumulative[i] - (byLe.get(le) || 0));
    const count = b.latency_s.count - a.latency_s.count;
    return cum.some((c) => c < 0) ? null : quantile(q, lb.le, cum, count);
  }

  // A per-second rate; null across a counter reset (the proxy restarted).
  function rate(a, b, get, dt) {
    if (!a || !b || !(dt > 0)) return null;
    const d = get(b) - get(a);
    return d < 0 ? null : d / dt;
  }

  // Index of the newest snapshot at least `seconds` older than history[i] (else the oldest).
  function baseIndex(i, seconds) {
    let j = 0;
    for (let k = i - 1; k >= 0; k--) if (history[i].t - history[k].t >= seconds) { j = k; break; }
    return j;
  }

  function buildSeries() {
    const s = { t: [], rps: [], sel: [], extra: [], stack: [], p50: [], p95: [] };
    for (let i = 1; i < history.length; i++) {
      const a = view(history[i - 1].snap), b = view(history[i].snap);
      const dt = history[i].t - history[i - 1].t;
      const w = view(history[baseIndex(i, RECENT_S)].snap);
      const sel = rate(a, b, (v) => v.tokens.selected, dt), extra = rate(a, b, (v) => v.tokens.extra, dt);
      s.t.push(history[i].t);
      s.rps.push(rate(a, b, (v) => v.requests, dt));
      s.sel.push(sel);
      s.extra.push(extra);
      s.stack.push(ok(sel) && ok(extra) ? sel + extra : null);
      s.p50.push(windowQuantile(0.5, w, b));
      s.p95.push(windowQuantile(0.95, w, b));
    }
    return s;
  }

  // ---------- charts ----------
  const axisFmt = (fmt) => (u, splits) => splits.map((v) => fmt(v));
  function timeChart(id, series, axisValues) {
    const el = document.getElementById(id);
    const opts = {
      width: el.clientWidth || 480, height: 220,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [{}, { values: axisFmt(axisValues), size: 60 }],
      series: [{}].concat(series),
    };
    return new uPlot(opts, [[], ...series.map(() => [])], el);
  }

  function agreementChart(id) {
    const el = document.getElementById(id);
    const opts = {
      width: el.clientWidth || 480, height: 220,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: false, range: [0, 1] }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [{ values: axisFmt((v) => Math.round(v * 100) + '%'), label: "winner's vote share" },
             { values: axisFmt((v) => fmtNum(v)), size: 50, label: 'requests' }],
      series: [{ label: 'vote share', value: (u, v) => (ok(v) ? `${Math.round((v - 0.05) * 100)}–${Math.round((v + 0.05) * 100)}%` : dash) },
               { label: 'requests', stroke: COLORS.bar, fill: COLORS.bar + 'aa', width: 1,
                 paths: uPlot.paths.bars({ size: [0.85, Infinity] }), points: { show: false } }],
    };
    return new uPlot(opts, [[], []], el);
  }

  function makeCharts() {
    if (typeof uPlot === 'undefined') return;  // vendored script missing: tiles and table still work
    const line = (label, stroke, extra = {}) => ({ label, stroke, width: 2, spanGaps: false, ...extra });
    const rawLegend = (name) => (u, v, si, i) => (i == null ? dash : fmtNum(charts.series[name][i]) + '/s');
    charts.requests = timeChart('chart-requests', [line('requests/s', COLORS.req, { fill: COLORS.req + '22' })],
      (v) => fmtNum(v));
    // uPlot does not stack: draw selected+extra filled first, then selected on top of it.
    charts.tokens = timeChart('chart-tokens', [
      line('extra tokens/s', COLORS.extra, { fill: COLORS.extra + '99', value: rawLegend('extra') }),
      line('selected tokens/s', COLORS.sel, { fill: COLORS.sel + '99', value: rawLegend('sel') }),
    ], (v) => fmtNum(v));
    charts.latency = timeChart('chart-latency', [
      line('p50', COLORS.p50, { value: (u, v) => fmtSec(v) }),
      line('p95', COLORS.p95, { value: (u, v) => fmtSec(v) }),
    ], fmtSec);
    charts.agreement = agreementChart('chart-agreement');
    const ro = new ResizeObserver(() => {
      for (const [id, c] of Object.entries(charts)) {
        if (c && c.setSize) c.setSize({ width: document.getElementById('chart-' + id).clientWidth, height: 220 });
      }
    });
    document.querySelectorAll('.chart').forEach((el) => ro.observe(el));
  }

  const pointsWithData = (cols) => cols[0].filter((_, i) => cols.slice(1).some((c) => ok(c[i]))).length;
  function setChart(id, cols, points) {
    const el = document.getElementById('chart-' + id);
    if (charts[id]) charts[id].setData(cols);
    el.dataset.seriesPoints = String(points === undefined ? pointsWithData(cols) : points);
  }

  function drawCharts(s, cur) {
    if (typeof uPlot === 'undefined') return;
    charts.series = s;
    setChart('requests', [s.t, s.rps]);
    setChart('tokens', [s.t, s.stack, s.sel]);
    setChart('latency', [s.t, s.p50, s.p95]);
    const ag = cur ? cur.agreement : { le: [], counts: [] };
    setChart('agreement', [ag.le.map((le) => +(le - 0.05).toFixed(2)), ag.counts], ag.counts.filter((c) => c > 0).length);
  }

  // ---------- tiles and table ----------
  function tile(id, value, unit, sub) {
    const el = document.getElementById(id);
    el.querySelector('.value').innerHTML = '';
    el.querySelector('.value').append(value);
    if (unit) { const u = document.createElement('small'); u.textContent = unit; el.querySelector('.value').append(u); }
    el.querySelector('.sub').textContent = sub || '';
  }

  function drawTiles(cur) {
    const n = history.length - 1;
    const base = n > 0 ? view(history[baseIndex(n, RECENT_S)].snap) : null;
    const dt = n > 0 ? history[n].t - history[baseIndex(n, RECENT_S)].t : 0;
    const v = cur || null;
    const rps = rate(base, v, (x) => x.requests, dt), tps = rate(base, v, (x) => x.tokens.total, dt);
    tile('tile-rps', fmtNum(rps), '/s', v ? `${fmtNum(v.requests)} total · ${fmtNum(v.errors)} errors` : '');
    tile('tile-tps', fmtNum(tps), '/s', v ? `${fmtNum(v.tokens.total)} spent in total` : '');
    tile('tile-extra', fmtPct(v && v.tokens.total ? v.extra_ratio : null), '', 'extra ÷ all tokens spent');
    tile('tile-cost', fmtUsd(v ? v.cost_usd : null), '',
      v && v.cost_unknown_calls ? `+ ${fmtNum(v.cost_unknown_calls)} calls with unknown price` : 'known prices only');
    const ver = v ? v.verified : null;
    tile('tile-verified', fmtPct(ver ? ver.rate : null), '',
      ver && ver.pass + ver.fail ? `${fmtNum(ver.pass)} pass · ${fmtNum(ver.fail)} fail` : 'no hard checks yet');
    const wp50 = windowQuantile(0.5, base, v), wp95 = windowQuantile(0.95, base, v);
    const recent = ok(wp50);
    const p50 = recent ? wp50 : v && v.latency_s.count ? v.latency_s.p50 : null;
    const p95 = recent ? wp95 : v && v.latency_s.count ? v.latency_s.p95 : null;
    tile('tile-latency', `${fmtSec(p50)} / ${fmtSec(p95)}`, '', recent ? 'p50 / p95, last 30 s' : 'p50 / p95, since start');
    tile('tile-saved', fmtNum(v ? v.saved.candidates : null), '',
      v ? `≈ ${fmtNum(v.saved.tokens_estimate)} tokens saved by early stopping` : '');
  }

  function row(name, r) {
    const cells = [name, fmtNum(r.requests), fmtNum(r.errors), fmtNum(r.tokens.total), fmtNum(r.tokens.selected),
      fmtNum(r.tokens.extra), fmtPct(r.tokens.total ? r.extra_ratio : null),
      fmtUsd(r.cost_usd) + (r.cost_unknown_calls ? ' +?' : ''),
      `${fmtNum(r.upstream_calls.ok)} / ${fmtNum(r.upstream_calls.error)} / ${fmtNum(r.upstream_calls.cancelled)}`,
      r.latency_s.count ? fmtSec(r.latency_s.p50) : dash, r.latency_s.count ? fmtSec(r.latency_s.p95) : dash,
      r.candidates.count ? r.candidates.mean.toFixed(1) : dash, fmtPct(r.verified.rate),
      fmtNum(r.judge_checker_disagreements), fmtNum(r.saved.candidates)];
    const tr = document.createElement('tr');
    cells.forEach((text, i) => {
      const td = document.createElement('td');
      td.textContent = text;
      if (i === 2 && r.errors > 0) td.className = 'bad';
      if (i === 7 && r.cost_unknown_calls) td.title = `plus ${r.cost_unknown_calls} calls with unknown price`;
      tr.append(td);
    });
    return tr;
  }

  function drawTable(snap) {
    const body = $('#routes-table tbody'), foot = $('#routes-table tfoot');
    body.replaceChildren(...Object.entries(snap.routes).map(([name, r]) => row(name, r)));
    foot.replaceChildren(row('all routes', snap.total));
  }

  function syncRoutes(snap) {
    const sel = $('#route');
    const have = new Set([...sel.options].map((o) => o.value));
    for (const name of Object.keys(snap.routes)) {
      if (!have.has(name)) sel.append(new Option(name, name));
    }
  }

  function render() {
    if (!history.length) return;
    const latest = history[history.length - 1];
    const cur = view(latest.snap);
    drawTiles(cur);
    drawCharts(buildSeries(), cur);
    drawTable(latest.snap);
    $('#status').textContent = `updated ${new Date(latest.t * 1000).toLocaleTimeString()} · ` +
      `${fmtNum(latest.snap.inflight)} in flight · window ${Math.round(latest.t - history[0].t)} s`;
  }

  // ---------- polling ----------
  // ?key=… wins at load; the key box (kept in localStorage) replaces it once saved.
  let key = new URLSearchParams(location.search).get('key') || localStorage.getItem(KEY_STORE) || '';

  function showError(msg) {
    const b = $('#error-banner');
    if (msg) { b.textContent = msg; b.hidden = false; } else { b.hidden = true; b.textContent = ''; }
  }

  async function poll() {
    const headers = { Accept: 'application/json' };
    if (key) headers.Authorization = 'Bearer ' + key;
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), 5000);
    try {
      const res = await fetch(statsUrl, { headers, cache: 'no-store', signal: ctrl.signal });
      if (!res.ok) {
        const hint = res.status === 401 || res.status === 403 ? ' — set the API key (top right) or open the page with ?key=…' : '';
        throw new Error(`HTTP ${res.status} ${res.statusText}${hint}`);
      }
      const snap = await res.json();
      const t = snap.generated_at;
      if (history.length && t <= history[history.length - 1].t) return;
      history.push({ t, snap });
      while (history.length > 2 && t - history[0].t > HISTORY_S) history.shift();
      syncRoutes(snap);
      polls += 1;
      document.body.dataset.polls = String(polls);
      showError('');
      render();
    } catch (err) {
      errors += 1;
      document.body.dataset.pollErrors = String(errors);
      showError(`Polling ${statsUrl} failed: ${err.name === 'AbortError' ? 'timed out' : err.message}`);
    } finally {
      clearTimeout(timer);
    }
  }

  async function loop() {
    await poll();
    setTimeout(loop, POLL_MS);  // after completion, so slow answers never pile up
  }

  function init() {
    $('#route').addEventListener('change', (e) => { route = e.target.value; render(); });
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
