import t from 'tap';
import { request as httpRequest } from 'node:http';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { createLogger } from '../shared/logger';
import { EVENTS_STREAM } from '../shared/nats';
import { ensureTopology, loadConfig, runServices, type RunningServices } from '../services/composition-root';
import { createWeb, type Web } from '../services/web/service';
import { startNatsServer, type NatsServer } from '../kit/nats-server';
import { makeRunDirs, type RunDirs } from '../kit/run-dirs';
import { standInStageEnv } from '../kit/stand-ins';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const quiet = () => new Writable({ write: (_c, _e, cb) => cb() });

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a JSON response of any shape; the tests assert on its fields
  json: any;
  text: string;
}

async function http(port: number, method: string, path: string, opts: { body?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { method, headers: opts.headers ?? {}, ...(opts.body !== undefined ? { body: opts.body } : {}) });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: Object.fromEntries(res.headers.entries()), json, text };
}

const postJson = (port: number, path: string, body: unknown) => http(port, 'POST', path, { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });

/** An SSE client over node:http, so a test can cut its connection and resume with Last-Event-ID. */
function sse(port: number, path: string, headers: Record<string, string> = {}) {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- an event's JSON data of any shape; the tests assert on its fields
  const events: { id?: string; event?: string; data: any }[] = [];
  const comments: string[] = [];
  let buffer = '';
  const req = httpRequest({ host: '127.0.0.1', port, path, headers: { accept: 'text/event-stream', ...headers } });
  const opened = new Promise<number>((resolve, reject) => {
    req.on('response', (res) => {
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffer += chunk;
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          // eslint-disable-next-line @typescript-eslint/no-explicit-any -- an event's JSON data of any shape; the tests assert on its fields
          const e: { id?: string; event?: string; data: any } = { data: undefined };
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) comments.push(line);
            else if (line.startsWith('id: ')) e.id = line.slice(4);
            else if (line.startsWith('event: ')) e.event = line.slice(7);
            else if (line.startsWith('data: ')) e.data = JSON.parse(line.slice(6));
          }
          if (e.data !== undefined) events.push(e);
        }
      });
      res.on('error', () => undefined);
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
  });
  req.end();
  return {
    events,
    comments,
    opened,
    ended: new Promise<void>((resolve) => req.on('close', () => resolve())),
    close: () => req.destroy(),
    async until(what: string, cond: () => boolean, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      while (!cond()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(events.map((e) => [e.id, e.event]))}`);
        await sleep(25);
      }
    },
  };
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

let nats: NatsServer;
let dirs: RunDirs;
let client: NatsConnection;
let services: RunningServices;
let web: Web;
let port: number;
const webLog: string[] = [];

t.before(async () => {
  nats = await startNatsServer();
  dirs = makeRunDirs('brain-web-');
  // What the stand-in images do: new data, both loads, a mismatch, training.
  const envFiles = {
    'transform.env': "NEW_DATA='1'",
    'linage_processed.env': "TARGET='processed'",
    'linage_viz.env': "TARGET='viz'",
    'model_trigger.env': "MISMATCH='1'",
    'model.env': '',
  };
  for (const [file, text] of Object.entries(envFiles)) writeFileSync(join(dirs.env, file), `${text}\n`);
  const env = { NATS_URL: nats.url, BRAIN_ENV_DIR: dirs.env, ...standInStageEnv(dirs), HEALTH_PORT: '0', HEALTH_HOST: '127.0.0.1', LOG_LEVEL: 'warn' };
  const names = ['transformer', 'loader', 'model-gate', 'trainer'] as const;
  const config = loadConfig(env, names);
  client = await connect({ servers: nats.url, name: 'test-web' });
  await ensureTopology(client, { lockTtlMs: config.lockTtlMs, ackWaitMs: config.ackWaitMs });
  services = await runServices(names, config, { logDestination: quiet() });
  web = createWeb({
    connect: ({ name }) => connect({ servers: nats.url, name }),
    logger: createLogger('web', 'info', new Writable({ write: (c: Buffer, _e, cb) => (webLog.push(c.toString()), cb()) })),
    config: { host: '127.0.0.1', port: 0, transformSchedule: '0 * * * *', heartbeatMs: 1000, logPollMs: 200 },
  });
  await web.start();
  port = web.port;
});

t.teardown(async () => {
  await web?.stop();
  await services?.stop();
  await client?.close();
  await nats?.stop();
  await nats?.cleanup();
  if (dirs !== undefined) rmSync(dirs.root, { recursive: true, force: true });
});

const runOf = (runId: string) =>
  until(
    `run ${runId} to end`,
    async () => {
      const r = await http(port, 'GET', `/api/runs/${runId}`);
      return r.status === 200 && r.json.result !== 'running' ? r.json : undefined;
    },
    60_000,
  );

t.test('/healthz and /metrics answer without credentials; every answer has a strict CSP', async (t) => {
  const health = await http(port, 'GET', '/healthz');
  t.equal(health.status, 200);
  t.same(health.json, { ok: true, service: 'web', auth: false, nats: 'connected' });
  const metrics = await http(port, 'GET', '/metrics');
  t.equal(metrics.status, 200);
  t.match(metrics.text, /brain_web_requests_total\{.*route="\/healthz".*status="200"/);
  for (const r of [health, metrics, await http(port, 'GET', '/api/runs'), await http(port, 'GET', '/nope')]) {
    t.match(r.headers['content-security-policy'], /^default-src 'none'; script-src 'self';/);
    t.equal(r.headers['x-content-type-options'], 'nosniff');
  }
  t.equal(web.authRequired, false, 'NATS without authentication: neither has the web service');
});

t.test('bad input gets 400 with a clear error naming the field', async (t) => {
  const cases: [string, string, unknown, RegExp][] = [
    ['GET', '/api/runs?limit=0', undefined, /limit: must be a whole number from 1 to 200/],
    ['GET', '/api/runs?limit=abc', undefined, /limit/],
    ['GET', '/api/runs?colour=red', undefined, /unknown field\(s\) "colour"/],
    ['GET', '/api/runs/bad.run.id', undefined, /runId: runId must be 1-64 characters/],
    ['GET', '/api/runs/r1/logs?before=x', undefined, /before: must be a cursor/],
    ['GET', '/api/events?since=-1', undefined, /since/],
    ['POST', '/api/runs', { pipeline: 'deploy' }, /pipeline: must be "transform" or "model"/],
    ['POST', '/api/runs', { pipeline: 'model', image: 'evil:latest' }, /unknown field\(s\) "image"/],
    ['POST', '/api/runs', { pipeline: 'model', runId: 'a b' }, /runId/],
    ['POST', '/api/runs', {}, /pipeline/],
    ['POST', '/api/v1/dags/model_trigger_dag/dagRuns', { dag_run_id: 'x', mount: '/' }, /unknown field\(s\) "mount"/],
  ];
  for (const [method, path, body, error] of cases) {
    const r = method === 'GET' ? await http(port, 'GET', path) : await postJson(port, path, body);
    t.equal(r.status, 400, `${method} ${path} ${JSON.stringify(body) ?? ''}`);
    t.match(r.json?.error, error);
    t.equal(r.json?.code, 'BAD_REQUEST');
  }
  const notJson = await http(port, 'POST', '/api/runs', { body: '{pipeline:', headers: { 'content-type': 'application/json' } });
  t.equal(notJson.status, 400);
  t.match(notJson.json.error, /body is not JSON/);
  const unknownRun = await http(port, 'GET', '/api/runs/nosuchrun');
  t.equal(unknownRun.status, 404);
  t.match(unknownRun.json.error, /no run nosuchrun/);
  t.equal((await http(port, 'GET', '/api/runs/nosuchrun/logs')).status, 404);
  t.equal((await http(port, 'GET', '/api/v1/dags/other_dag/dagRuns/x')).status, 404);
  const stored = (await (await jetstreamManager(client)).streams.info(EVENTS_STREAM)).state.messages;
  t.equal(stored, 0, 'nothing was published by refused requests');
});

t.test('POST /api/runs runs a whole chain; the run, its events and its container lines are served after the containers are gone', async (t) => {
  const posted = await postJson(port, '/api/runs', { pipeline: 'transform', reason: 'from the test' });
  t.equal(posted.status, 202);
  const runId = posted.json.runId as string;
  t.match(runId, /^w\d{8}T\d{6}Z-[0-9a-f]{6}$/);
  const run = await runOf(runId);
  t.equal(run.result, 'trained');
  t.same(run.trigger, { subject: 'transform.trigger', reason: 'from the test' });
  t.same(Object.keys(run.stages).sort(), ['gate', 'load', 'train', 'transform']);
  t.match(run.stages, {
    transform: { outcome: 'new-data', exitCode: 0, durationMs: Number },
    load: { outcome: 'loaded', exitCode: 0 },
    gate: { outcome: 'mismatch', exitCode: 0 },
    train: { outcome: 'trained', exitCode: 0 },
  });
  t.same(
    run.events.map((e: { subject: string }) => e.subject),
    ['transform.trigger', 'transform.done', 'data.new', 'load.done', 'model.trigger', 'model.mismatch', 'model.done'],
    'its events in order',
  );
  t.ok(run.events[0].seq > 0, 'a trigger carries its stream sequence');

  const again = await postJson(port, '/api/runs', { pipeline: 'transform', runId });
  t.equal(again.status, 409, 'a used run id is refused');

  const list = await http(port, 'GET', '/api/runs?limit=5');
  t.equal(list.status, 200);
  t.equal(list.json.runs[0].runId, runId, 'newest first');
  t.equal(list.json.next, null, 'one run: no older page');

  const logs = await http(port, 'GET', `/api/runs/${runId}/logs`);
  t.equal(logs.status, 200);
  t.equal(logs.json.result, 'trained');
  const stages = new Set(logs.json.lines.map((l: { stage: string }) => l.stage));
  t.same([...stages].sort(), ['load-processed', 'load-viz', 'model-trigger', 'train', 'transform'], 'every stage has lines');
  t.ok(
    logs.json.lines.some((l: { line: string }) => l.line.includes('New data was transformed')),
    'the transform phrase is there',
  );
  // Paging: the last two lines, then the ones before them, meet without gap or overlap.
  const last2 = await http(port, 'GET', `/api/runs/${runId}/logs?limit=2`);
  t.equal(last2.json.lines.length, 2);
  const before = await http(port, 'GET', `/api/runs/${runId}/logs?limit=3&before=${last2.json.before}`);
  t.same(
    [...before.json.lines, ...last2.json.lines].map((l: { line: string }) => l.line),
    logs.json.lines.slice(-5).map((l: { line: string }) => l.line),
  );
});

t.test('the Airflow route takes the seed curl body {} and reports queued, then the outcome', async (t) => {
  const posted = await http(port, 'POST', '/api/v1/dags/model_trigger_dag/dagRuns', { body: '{}', headers: { 'content-type': 'application/json' } });
  t.equal(posted.status, 200);
  t.match(posted.json, { dag_id: 'model_trigger_dag', state: 'queued', dag_run_id: /^w/, external_trigger: true, conf: {} });
  const id = posted.json.dag_run_id as string;
  const done = await until(
    'the DAG run to succeed',
    async () => {
      const r = await http(port, 'GET', `/api/v1/dags/model_trigger_dag/dagRuns/${id}`);
      t.equal(r.status, 200);
      t.ok(['queued', 'running', 'success'].includes(r.json.state), r.json.state);
      return r.json.state === 'success' ? r.json : undefined;
    },
    60_000,
  );
  t.equal(done.result, 'trained');
  const run = await runOf(id);
  t.same(run.trigger, { subject: 'model.trigger', reason: 'airflow api' });
  t.notOk(run.stages.transform, 'a model run has no transform');

  const named = await postJson(port, '/api/v1/dags/brain_dags/dagRuns', { dag_run_id: 'airflow_named_1', conf: {}, note: 'nightly' });
  t.equal(named.status, 200);
  t.equal(named.json.dag_run_id, 'airflow_named_1');
  const transformRun = await runOf('airflow_named_1');
  t.same(transformRun.trigger, { subject: 'transform.trigger', reason: 'nightly' });
  t.equal((await http(port, 'GET', '/api/v1/dags/model_trigger_dag/dagRuns/airflow_named_1')).status, 404, 'a run of the other DAG is not this DAG’s');
  t.equal((await http(port, 'GET', '/api/v1/dags/brain_dags/dagRuns/airflow_named_1')).json.state, 'success');
});

t.test('GET /api/events: id is the stream sequence; a client reconnecting with Last-Event-ID across a dropped connection gets exactly what followed', async (t) => {
  const first = sse(port, '/api/events');
  t.equal(await first.opened, 200);
  await first.until('hello', () => first.events.length >= 1);
  t.equal(first.events[0]?.event, 'hello');
  const a = await postJson(port, '/api/runs', { pipeline: 'model', reason: 'sse one' });
  await first.until('the first run ends', () => first.events.some((e) => e.event === 'model.done' && e.data.runId === a.json.runId));
  first.close();
  await first.ended;
  const lastId = first.events[first.events.length - 1]?.id as string;

  // While no client is connected, another run happens.
  const b = await postJson(port, '/api/runs', { pipeline: 'model', reason: 'sse two' });
  await runOf(b.json.runId);

  const second = sse(port, '/api/events', { 'last-event-id': lastId });
  t.equal(await second.opened, 200);
  await second.until('the second run', () => second.events.some((e) => e.event === 'model.done' && e.data.runId === b.json.runId));
  await sleep(300);
  second.close();

  const ids = [...first.events.slice(1), ...second.events].map((e) => Number(e.id));
  const stored: number[] = [];
  const consumer = await jetstream(client).consumers.get(EVENTS_STREAM, { opt_start_seq: Number(first.events[0]?.id) + 1, deliver_policy: 'by_start_sequence' as never });
  for await (const m of await consumer.fetch({ max_messages: 1000, expires: 1000 })) stored.push(m.seq);
  t.same(ids, stored, 'every stored event once, in order: no gap, no repeat');
  t.ok(
    second.events.every((e) => e.event !== 'hello'),
    'a resumed stream starts straight after the given id',
  );
  t.ok(
    first.comments.some((c) => c.startsWith(': keep-alive')),
    'heartbeat comments on the stream',
  );
});

t.test('the logs of a running run follow live over SSE and end with the run', async (t) => {
  // The stand-in training sleeps while printing, so the stream follows it live.
  const posted = await postJson(port, '/api/runs', { pipeline: 'model', reason: 'logs live' });
  const runId = posted.json.runId as string;
  await until('the run to be recorded', async () => ((await http(port, 'GET', `/api/runs/${runId}`)).status === 200 ? true : undefined));
  const stream = sse(port, `/api/runs/${runId}/logs`);
  t.equal(await stream.opened, 200);
  await stream.until('the end', () => stream.events.some((e) => e.event === 'end'), 60_000);
  t.equal(stream.events[0]?.event, 'tail');
  const end = stream.events.find((e) => e.event === 'end');
  t.same(end?.data, { result: 'trained' });
  const lines = stream.events.flatMap((e) => (e.event === 'tail' || e.event === 'lines' ? e.data.lines : []));
  const stored = await http(port, 'GET', `/api/runs/${runId}/logs?limit=5000`);
  t.same(
    lines.map((l: { seq: number; i: number }) => `${l.seq}.${l.i}`),
    stored.json.lines.map((l: { seq: number; i: number }) => `${l.seq}.${l.i}`),
    'each stored line once, in order',
  );
  await stream.ended;
});

t.test('the schedule: GET shows it with its next tick; pause and resume are durable', async (t) => {
  const shown = await http(port, 'GET', '/api/schedule');
  t.equal(shown.status, 200);
  t.match(shown.json, { paused: false, schedule: '0 * * * *', nextRun: /^\d{4}-\d\d-\d\dT\d\d:00:00\.000Z$/ });
  const paused = await http(port, 'POST', '/api/schedule/pause');
  t.equal(paused.status, 200);
  t.match(paused.json, { paused: true, nextRun: null });
  // A new web service (a restart) reads the same durable state.
  const other = createWeb({
    connect: ({ name }) => connect({ servers: nats.url, name }),
    logger: createLogger('web', 'silent'),
    config: { host: '127.0.0.1', port: 0, transformSchedule: '0 * * * *' },
  });
  await other.start();
  t.teardown(() => other.stop());
  t.equal((await http(other.port, 'GET', '/api/schedule')).json.paused, true);
  t.equal((await http(other.port, 'POST', '/api/schedule/resume', { body: '', headers: { 'content-type': 'application/json' } })).json.paused, false);
  t.equal((await http(port, 'GET', '/api/schedule')).json.paused, false);
});

t.test('paging: limit and the next cursor walk every run once, newest first', async (t) => {
  const all: string[] = [];
  let before: number | null | undefined;
  do {
    const page = await http(port, 'GET', `/api/runs?limit=2${before != null ? `&before=${before}` : ''}`);
    t.equal(page.status, 200);
    t.ok(page.json.runs.length <= 2);
    all.push(...page.json.runs.map((r: { runId: string }) => r.runId));
    before = page.json.next;
  } while (before !== null);
  const one = await http(port, 'GET', '/api/runs?limit=200');
  t.same(
    all,
    one.json.runs.map((r: { runId: string }) => r.runId),
  );
  t.equal(new Set(all).size, all.length, 'no run twice');
  t.ok(all.length >= 5, `${all.length} runs`);
  t.notOk(webLog.join('').includes('"level":50'), 'the web service logged no error');
});
