// brain-pipeline dashboard: plain ES module, no build step. Everything it loads comes from this service (CSP
// default-src 'none', script-src 'self'); it reads the HTTP API and follows the event and log streams (SSE).
import uPlot from './uplot.js';

const STAGES = ['transform', 'load', 'gate', 'train'];
const STAGE_LABELS = { transform: 'Transform', load: 'Load', gate: 'Gate', train: 'Train' };
const STAGE_COLOURS = { transform: '#1d5fa8', load: '#1f7a3a', gate: '#8a5a00', train: '#7a2fa8' };
const EVENT_NAMES = ['transform.trigger', 'transform.done', 'data.new', 'load.done', 'model.trigger', 'model.mismatch', 'model.done'];
/** Runs per page of the grid: 25, or `?limit=N` (1 to 200) in the page's address. */
const PAGE_SIZE = Math.min(200, Math.max(1, Number.parseInt(new URLSearchParams(location.search).get('limit') ?? '', 10) || 25));
/** Lines asked for when a run's log opens, and per "load earlier lines". */
const LOG_PAGE = 500;
/** Lines kept in the page while following live: older ones are dropped (and can be loaded again). */
const LOG_LIVE_CAP = 2000;
/** Lines the page holds at most: a huge log never hangs the browser. */
const LOG_MAX = 10000;

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

/** @param {string} tag @param {Record<string, string>} [attrs] @param {(Node | string | null | undefined)[]} [children] */
function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

/** Column headings of each table, next to the code that fills its rows. */
const COLUMNS = {
  runs: ['Run', 'Started (UTC)', 'Trigger', 'Result', ...STAGES.map((s) => STAGE_LABELS[s])],
  timeline: ['Stage', 'Outcome', 'Start (UTC)', 'End (UTC)', 'Duration', { label: 'Share of the run' }],
  events: ['At (UTC)', 'Subject', 'Details'],
};
// Each table sits in a scrolling region named by its section's heading, reachable with the keyboard.
for (const box of document.querySelectorAll('[data-table]')) {
  const id = box.getAttribute('data-table') ?? '';
  const heads = COLUMNS[id].map((c) => el('th', { scope: 'col' }, [typeof c === 'string' ? c : el('span', { class: 'sr-only' }, [c.label])]));
  const label = box.closest('section')?.getAttribute('aria-labelledby') ?? '';
  for (const [k, v] of Object.entries({ role: 'region', 'aria-labelledby': label, tabindex: '0' })) box.setAttribute(k, v);
  box.append(el('table', { id, class: id }, [el('thead', {}, [el('tr', {}, heads)]), el('tbody')]));
}

// ---------------------------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------------------------

function formatDuration(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${Math.round(s % 60)} s`;
  const h = Math.floor(m / 60);
  return h < 48 ? `${h} h ${m % 60} m` : `${Math.floor(h / 24)} d ${h % 24} h`;
}

function formatTime(iso) {
  if (typeof iso !== 'string') return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toISOString().slice(0, 19).replace('T', ' ');
}

function formatAgo(iso) {
  const ms = Date.parse(iso) - Date.now();
  if (!Number.isFinite(ms)) return '';
  return ms >= 0 ? `in ${formatDuration(ms)}` : `${formatDuration(-ms)} ago`;
}

/** The colour class of an outcome (the text is always shown too: colour is never the only sign). */
function toneOf(outcome) {
  switch (outcome) {
    case 'new-data':
    case 'loaded':
    case 'trained':
    case 'up-to-date':
    case 'mismatch':
      return 'o-ok';
    case 'running':
    case 'queued':
      return 'o-running';
    case 'busy':
    case 'skipped':
    case 'rejected':
      return 'o-warn';
    case 'failed':
    case 'timeout':
    case 'error':
      return 'o-bad';
    default:
      return '';
  }
}

function outcomeCell(outcome, durationMs, title) {
  const span = el('span', { class: `cell ${toneOf(outcome)}` }, [outcome, durationMs !== undefined ? el('small', {}, [formatDuration(durationMs)]) : null]);
  if (title) span.title = title;
  return span;
}

const pipelineOf = (subject) => (subject === 'transform.trigger' ? 'transform' : subject === 'model.trigger' ? 'model' : subject);

// ---------------------------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, opts = {}) {
  const res = await fetch(path, {
    method: opts.method ?? 'GET',
    headers: { accept: 'application/json', ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
    cache: 'no-store',
  });
  let body;
  try {
    body = await res.json();
  } catch {
    body = undefined;
  }
  if (!res.ok) throw new ApiError(res.status, body?.code ?? 'HTTP', body?.error ?? `HTTP ${res.status}`);
  return body;
}

// ---------------------------------------------------------------------------------------------------------------
// The event stream: one EventSource per page, resumed after a drop (the browser sends Last-Event-ID)
// ---------------------------------------------------------------------------------------------------------------

/** Follows GET /api/events; `onEvent(subject, data)` for each pipeline event. */
function followEvents(onEvent, onReopen) {
  const live = $('live');
  let lastId = null;
  let retry = 1000;
  let es;
  const open = () => {
    // A fresh EventSource after the browser gave up resumes where the last one stopped (no gap, no repeat).
    es = new EventSource(lastId !== null ? `/api/events?since=${encodeURIComponent(lastId)}` : '/api/events');
    es.addEventListener('open', () => {
      retry = 1000;
      live.textContent = 'live';
      live.className = 'live on';
    });
    es.addEventListener('error', () => {
      live.textContent = 'reconnecting…';
      live.className = 'live off';
      if (es.readyState === EventSource.CLOSED) {
        setTimeout(() => {
          open();
          onReopen();
        }, retry);
        retry = Math.min(retry * 2, 30_000);
      }
    });
    es.addEventListener('hello', (e) => {
      lastId = e.lastEventId || lastId;
    });
    const names = [...EVENT_NAMES, ...EVENT_NAMES.map((n) => `rejected.${n}`)];
    for (const name of names) {
      es.addEventListener(name, (e) => {
        lastId = e.lastEventId || lastId;
        let data;
        try {
          data = JSON.parse(e.data);
        } catch {
          return;
        }
        onEvent(name, data);
      });
    }
  };
  open();
}

// ---------------------------------------------------------------------------------------------------------------
// Who am I, and what may I do
// ---------------------------------------------------------------------------------------------------------------

async function loadMe() {
  try {
    const me = await api('/api/me');
    $('who').textContent = me.user !== null ? `signed in as ${me.user}` : me.auth ? '' : 'no authentication (local)';
    return me;
  } catch (err) {
    $('who').textContent = `could not check permissions: ${err.message}`;
    return { user: null, auth: true, may: { trigger: false, pause: false }, why: { trigger: err.message, pause: err.message } };
  }
}

function explain(button, whyEl, allowed, why) {
  for (const b of Array.isArray(button) ? button : [button]) b.disabled = !allowed;
  whyEl.hidden = allowed;
  whyEl.textContent = allowed ? '' : (why ?? 'Not allowed for this user.');
}

// ---------------------------------------------------------------------------------------------------------------
// The grid page
// ---------------------------------------------------------------------------------------------------------------

async function gridPage() {
  $('view-grid').hidden = false;
  document.title = 'Runs · brain-pipeline';
  /** @type {Map<string, any>} */
  const runs = new Map();
  let next = null;
  const tbody = /** @type {HTMLTableSectionElement} */ ($('runs').querySelector('tbody'));
  const result = $('action-result');
  const say = (text, isError = false, link) => {
    result.replaceChildren(text, ...(link ? [' ', el('a', { href: `/runs/${encodeURIComponent(link)}` }, ['Open the run'])] : []));
    result.className = `result${isError ? ' error' : ''}`;
  };

  // --- the table -----------------------------------------------------------------------------------------------
  const order = () => [...runs.values()].sort((a, b) => (a.startedAt < b.startedAt ? 1 : a.startedAt > b.startedAt ? -1 : b.cursor - a.cursor));
  function row(run) {
    const tr = el('tr', { 'data-run': run.runId });
    const link = el('a', { href: `/runs/${encodeURIComponent(run.runId)}` }, [run.runId]);
    tr.append(
      el('th', { scope: 'row' }, [link]),
      el('td', {}, [formatTime(run.startedAt)]),
      el('td', { class: 'reason' }, [`${pipelineOf(run.trigger.subject)}${run.trigger.reason ? `: ${run.trigger.reason}` : ''}`]),
      el('td', {}, [outcomeCell(run.result, run.endedAt ? Date.parse(run.endedAt) - Date.parse(run.startedAt) : undefined)]),
    );
    for (const stage of STAGES) {
      const s = run.stages[stage];
      const td = el('td', { 'data-stage': stage });
      td.append(s ? outcomeCell(s.outcome, s.durationMs, s.error) : el('span', { class: 'cell o-none' }, ['—']));
      tr.append(td);
    }
    return tr;
  }
  function render() {
    const rows = order().map(row);
    tbody.replaceChildren(...rows);
    $('runs-empty').hidden = runs.size > 0;
    $('older').hidden = next === null;
    scheduleChart();
  }

  async function loadPage(before) {
    const page = await api(`/api/runs?limit=${PAGE_SIZE}${before !== undefined ? `&before=${before}` : ''}`);
    for (const r of page.runs) runs.set(r.runId, r);
    if (before === undefined) {
      // The first page again (after a reconnect): keep the older pages' cursor unless there were none.
      if (next === null || runs.size <= page.runs.length) next = page.next;
    } else next = page.next;
    render();
  }

  // --- live: an event refetches only its run ----------------------------------------------------------------------
  const pending = new Map();
  /** A run shown from its trigger or refusal event until its record exists. */
  function placeholder(runId, subject, data) {
    const known = runs.get(runId);
    const rejected = subject.startsWith('rejected.');
    runs.set(runId, {
      runId,
      startedAt: known?.startedAt ?? data.at ?? new Date().toISOString(),
      trigger: known?.trigger ?? { subject: rejected ? subject.slice('rejected.'.length) : subject, reason: data.reason ?? null },
      result: rejected ? 'rejected' : 'queued',
      stages: {},
      cursor: Number.MAX_SAFE_INTEGER,
    });
  }
  function refreshRun(runId, subject, data) {
    // A new run's trigger shows at once; its record is read a moment later.
    if (!runs.has(runId) && (subject === 'transform.trigger' || subject === 'model.trigger')) {
      placeholder(runId, subject, data);
      render();
    }
    clearTimeout(pending.get(runId));
    pending.set(
      runId,
      setTimeout(async () => {
        pending.delete(runId);
        try {
          const run = await api(`/api/runs/${encodeURIComponent(runId)}`);
          delete run.events;
          runs.set(runId, run);
        } catch (err) {
          if (!(err instanceof ApiError && err.status === 404)) return;
          // Triggered, not begun yet (or refused): shown from its event until its record exists.
          if (!runs.has(runId) || subject.startsWith('rejected.')) placeholder(runId, subject, data);
        }
        render();
      }, 100),
    );
  }

  // --- status panel ---------------------------------------------------------------------------------------------
  let me = { may: { trigger: false, pause: false }, why: {} };
  let paused = false;
  function renderSchedule(s) {
    paused = s.paused;
    const by = s.changedBy ? ` by ${s.changedBy}` : '';
    const when = s.changedAt ? ` (${formatTime(s.changedAt)} UTC)` : '';
    $('schedule-state').textContent = s.paused
      ? `Paused${by}${when}. Hand triggers still run. Schedule: ${s.schedule} (UTC).`
      : `Running: ${s.schedule} (UTC); next run ${s.nextRun ? `${formatTime(s.nextRun)} UTC, ${formatAgo(s.nextRun)}` : 'none'}.`;
    $('pause-toggle').textContent = s.paused ? 'Resume schedule' : 'Pause schedule';
  }
  async function loadStatus() {
    try {
      const st = await api('/api/status');
      $('services').replaceChildren(
        ...st.services.map((s) =>
          el('li', {}, [
            el('span', { class: `dot ${s.up ? 'up' : 'down'}` }, [s.up ? '● up' : '○ down']),
            el('span', {}, [s.service]),
            el('span', { class: 'muted' }, [s.instances.length > 1 ? `${s.instances.length} instances` : (s.instances[0]?.holder ?? '')]),
          ]),
        ),
      );
      $('locks').replaceChildren(
        ...st.locks.map((l) =>
          el(
            'li',
            {},
            l.held
              ? [
                  el('span', { class: 'dot held' }, ['● held']),
                  el('span', {}, [l.key]),
                  l.runId ? el('a', { href: `/runs/${encodeURIComponent(l.runId)}` }, [l.runId]) : el('span', {}, [l.invalid ?? '']),
                  el('span', { class: 'muted' }, [
                    [l.stage ? `stage ${l.stage}` : '', l.holder ? `by ${l.holder}` : '', l.ageMs !== undefined ? `for ${formatDuration(l.ageMs)}` : ''].filter(Boolean).join(', '),
                  ]),
                ]
              : [el('span', { class: 'dot' }, ['○ free']), el('span', {}, [l.key])],
          ),
        ),
      );
      renderSchedule(st.schedule);
    } catch (err) {
      $('services').replaceChildren(el('li', { class: 'error' }, [`status unavailable: ${err.message}`]));
    }
    document.body.dataset.status = 'loaded';
  }
  let statusTimer;
  const scheduleStatus = (ms = 1000) => {
    clearTimeout(statusTimer);
    statusTimer = setTimeout(() => void loadStatus(), ms);
  };

  // --- actions -----------------------------------------------------------------------------------------------------
  const triggers = [$('trigger-transform'), $('trigger-model')];
  async function trigger(pipeline) {
    const reason = /** @type {HTMLInputElement} */ ($('reason')).value.trim();
    for (const b of triggers) b.disabled = true;
    try {
      const { runId } = await api('/api/runs', { method: 'POST', body: { pipeline, ...(reason !== '' ? { reason } : {}) } });
      say(`Triggered ${pipeline} run ${runId}.`, false, runId);
      /** @type {HTMLInputElement} */ ($('reason')).value = '';
    } catch (err) {
      say(`Could not trigger: ${err.message}`, true);
    } finally {
      for (const b of triggers) b.disabled = !me.may.trigger;
    }
  }
  $('trigger-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (me.may.trigger) void trigger('transform');
  });
  $('trigger-model').addEventListener('click', () => void trigger('model'));
  $('pause-toggle').addEventListener('click', async () => {
    const action = paused ? 'resume' : 'pause';
    const button = /** @type {HTMLButtonElement} */ ($('pause-toggle'));
    button.disabled = true;
    try {
      renderSchedule(await api(`/api/schedule/${action}`, { method: 'POST' }));
      say(action === 'pause' ? 'Schedule paused: no scheduled runs until it is resumed.' : 'Schedule resumed.');
    } catch (err) {
      say(`Could not ${action}: ${err.message}`, true);
    } finally {
      button.disabled = !me.may.pause;
    }
  });
  $('older').addEventListener('click', () => {
    if (next !== null) void loadPage(next).catch((err) => say(`Could not load older runs: ${err.message}`, true));
  });

  // --- chart ---------------------------------------------------------------------------------------------------------
  let plot = null;
  let chartTimer;
  function scheduleChart() {
    clearTimeout(chartTimer);
    chartTimer = setTimeout(drawChart, 150);
  }
  function drawChart() {
    const list = order()
      .filter((r) => Object.keys(r.stages).length > 0)
      .slice(0, 100)
      .reverse();
    // uPlot wants ascending x: runs at the same second are spread by a millisecond.
    const xs = [];
    for (const r of list) {
      const x = Date.parse(r.startedAt) / 1000;
      xs.push(xs.length > 0 && x <= xs[xs.length - 1] ? xs[xs.length - 1] + 0.001 : x);
    }
    const data = [xs, ...STAGES.map((s) => list.map((r) => (r.stages[s] ? r.stages[s].durationMs / 1000 : null)))];
    const box = $('chart');
    const width = Math.max(280, box.clientWidth);
    if (plot === null) {
      plot = new uPlot(
        {
          width,
          height: 240,
          scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] } },
          axes: [{}, { label: 'seconds', size: 60 }],
          series: [
            { label: 'run start (local time)' },
            ...STAGES.map((s) => ({ label: STAGE_LABELS[s], stroke: STAGE_COLOURS[s], width: 2, points: { show: true, size: 6 }, spanGaps: true })),
          ],
        },
        data,
        box,
      );
    } else {
      plot.setData(data);
      if (Math.abs(plot.width - width) > 4) plot.setSize({ width, height: 240 });
    }
  }
  let resizeTimer;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawChart, 200);
  });

  // --- start ----------------------------------------------------------------------------------------------------
  followEvents(
    (subject, data) => {
      if (typeof data.runId === 'string') refreshRun(data.runId, subject, data);
      scheduleStatus();
    },
    () => void loadPage().catch(() => undefined),
  );
  // The status panel loads on its own: the services' discovery takes a moment.
  void loadStatus();
  const [meNow] = await Promise.all([loadMe(), loadPage().catch((err) => say(`Could not load runs: ${err.message}`, true))]);
  me = meNow;
  explain(triggers, $('trigger-why'), me.may.trigger, me.why.trigger);
  explain($('pause-toggle'), $('pause-why'), me.may.pause, me.why.pause);
  /** @type {HTMLInputElement} */ ($('reason')).disabled = !me.may.trigger;
  setInterval(() => void loadStatus(), 15_000);
  // A step's beginning has no event: the runs still going are asked again now and then (only those, at most ten).
  setInterval(() => {
    const active = order().filter((r) => r.result === 'running' || r.result === 'queued');
    for (const r of active.slice(0, 10)) if (!pending.has(r.runId)) refreshRun(r.runId, r.trigger.subject, {});
  }, 3000);
  document.body.dataset.ready = 'grid';
}

// ---------------------------------------------------------------------------------------------------------------
// The run page
// ---------------------------------------------------------------------------------------------------------------

function eventDetails(body) {
  if (body === null || typeof body !== 'object') return String(body);
  const parts = [];
  for (const [k, v] of Object.entries(body)) {
    if (k === 'v' || k === 'runId' || k === 'at') continue;
    if (k === 'durationMs' && typeof v === 'number') parts.push(`duration ${formatDuration(v)}`);
    else parts.push(`${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`);
  }
  return parts.join(' · ');
}

async function runPage(runId) {
  $('view-run').hidden = false;
  document.title = `Run ${runId} · brain-pipeline`;
  $('run-title').textContent = `Run ${runId}`;
  const logBox = $('log');
  const logState = $('log-state');
  const more = /** @type {HTMLButtonElement} */ ($('log-more'));
  let ended = false;

  // --- the run: summary, timeline, events ---------------------------------------------------------------------------
  async function loadRun() {
    let run;
    try {
      run = await api(`/api/runs/${encodeURIComponent(runId)}`);
    } catch (err) {
      $('run-summary').replaceChildren(
        el('dt', {}, ['Status']),
        el('dd', { class: 'error' }, [err instanceof ApiError && err.status === 404 ? 'No such run (yet): it appears once its first stage begins.' : err.message]),
      );
      return null;
    }
    const span = (run.endedAt ? Date.parse(run.endedAt) : Date.now()) - Date.parse(run.startedAt);
    $('run-summary').replaceChildren(
      el('dt', {}, ['Result']),
      el('dd', {}, [outcomeCell(run.result)]),
      el('dt', {}, ['Pipeline']),
      el('dd', {}, [`${pipelineOf(run.trigger.subject)} (${run.trigger.subject})`]),
      el('dt', {}, ['Reason']),
      el('dd', {}, [run.trigger.reason ?? '—']),
      el('dt', {}, ['Started']),
      el('dd', {}, [`${formatTime(run.startedAt)} UTC`]),
      el('dt', {}, ['Ended']),
      el('dd', {}, [run.endedAt ? `${formatTime(run.endedAt)} UTC, after ${formatDuration(span)}` : 'still running']),
    );
    const t0 = Date.parse(run.startedAt);
    const rows = STAGES.filter((s) => run.stages[s]).map((s) => {
      const st = run.stages[s];
      const start = Date.parse(st.startedAt ?? run.startedAt);
      const bar = el('span');
      // CSSOM properties, not a style attribute: allowed by the CSP.
      bar.style.left = `${span > 0 ? Math.min(100, ((start - t0) / span) * 100) : 0}%`;
      bar.style.width = `${span > 0 ? Math.min(100, (st.durationMs / span) * 100) : 100}%`;
      return el('tr', { 'data-stage': s }, [
        el('th', { scope: 'row' }, [STAGE_LABELS[s]]),
        el('td', {}, [outcomeCell(st.outcome, undefined, st.error)]),
        el('td', {}, [formatTime(st.startedAt)]),
        el('td', {}, [st.endedAt ? formatTime(st.endedAt) : '…']),
        el('td', {}, [formatDuration(st.durationMs)]),
        el('td', {}, [el('div', { class: 'bar', role: 'img', 'aria-label': `${Math.round(span > 0 ? (st.durationMs / span) * 100 : 100)}% of the run` }, [bar])]),
      ]);
    });
    /** @type {HTMLTableSectionElement} */ ($('timeline').querySelector('tbody')).replaceChildren(...rows);
    /** @type {HTMLTableSectionElement} */ ($('events').querySelector('tbody')).replaceChildren(
      ...run.events.map((e) => el('tr', {}, [el('td', {}, [formatTime(e.at)]), el('td', {}, [e.subject]), el('td', { class: 'details' }, [eventDetails(e.body)])])),
    );
    return run;
  }

  // --- the log: the tail, live lines, earlier lines on demand --------------------------------------------------------
  let hasEarlier = false;
  const lineEl = (l) => {
    const d = el('div', { class: `line${l.stream === 'stderr' ? ' stderr' : ''}`, 'data-cursor': `${l.seq}-${l.i}` }, [el('span', { class: 'stage' }, [l.stage]), l.line]);
    return d;
  };
  const firstCursor = () => /** @type {HTMLElement | null} */ (logBox.firstElementChild)?.dataset.cursor ?? null;
  const showMore = () => {
    more.hidden = !hasEarlier;
    more.disabled = logBox.childElementCount >= LOG_MAX;
    if (more.disabled) more.textContent = `Showing ${LOG_MAX} lines: \`brain logs ${runId}\` has the rest`;
  };
  function append(lines) {
    const atBottom = logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 24;
    logBox.append(...lines.map(lineEl));
    while (logBox.childElementCount > LOG_LIVE_CAP) {
      logBox.firstElementChild?.remove();
      hasEarlier = true;
    }
    if (atBottom) logBox.scrollTop = logBox.scrollHeight;
    showMore();
  }
  more.addEventListener('click', async () => {
    const before = firstCursor();
    if (before === null) return;
    more.disabled = true;
    try {
      const page = await api(`/api/runs/${encodeURIComponent(runId)}/logs?limit=${LOG_PAGE}&before=${encodeURIComponent(before)}`);
      const height = logBox.scrollHeight;
      logBox.prepend(...page.lines.map(lineEl));
      logBox.scrollTop += logBox.scrollHeight - height;
      hasEarlier = page.before !== null;
    } catch (err) {
      logState.textContent = `Could not load earlier lines: ${err.message}`;
    }
    more.disabled = false;
    showMore();
  });

  function followLog() {
    const es = new EventSource(`/api/runs/${encodeURIComponent(runId)}/logs?limit=${LOG_PAGE}`);
    logState.textContent = 'following…';
    es.addEventListener('tail', (e) => {
      const { lines, before } = JSON.parse(e.data);
      logBox.replaceChildren();
      hasEarlier = before !== null;
      append(lines);
      logBox.scrollTop = logBox.scrollHeight;
    });
    es.addEventListener('lines', (e) => append(JSON.parse(e.data).lines));
    es.addEventListener('end', (e) => {
      ended = true;
      es.close();
      logState.textContent = `run ended (${JSON.parse(e.data).result}); the log is kept after its containers are gone`;
      document.body.dataset.logEnded = 'true';
    });
    es.addEventListener('error', () => {
      if (ended) return;
      if (es.readyState === EventSource.CLOSED) {
        logState.textContent = 'log stream closed; retrying…';
        setTimeout(followLog, 2000);
      } else logState.textContent = 'reconnecting…';
    });
  }

  let runTimer;
  followEvents(
    (_subject, data) => {
      if (data.runId !== runId) return;
      clearTimeout(runTimer);
      runTimer = setTimeout(() => void loadRun(), 100);
    },
    () => void loadRun(),
  );
  const run = await loadRun();
  if (run !== null) followLog();
  else {
    // Not begun yet: the log follows once the run appears.
    const wait = setInterval(async () => {
      if ((await loadRun()) !== null) {
        clearInterval(wait);
        followLog();
      }
    }, 2000);
  }
  document.body.dataset.ready = 'run';
}

// ---------------------------------------------------------------------------------------------------------------

const match = /^\/runs\/([^/]+)\/?$/.exec(location.pathname);
if (match) void runPage(decodeURIComponent(match[1]));
else void gridPage();
