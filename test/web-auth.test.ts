import t from 'tap';
import { Writable } from 'node:stream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { createLogger } from '../shared/logger';
import { EVENTS_STREAM } from '../shared/nats';
import { ensureTopology } from '../services/composition-root';
import { createWeb, type Web } from '../services/web/service';
import { startAuthNatsServer, type AuthNatsServer, type NatsRole } from './helpers/nats-auth';

let nats: AuthNatsServer;
let admin: NatsConnection;
let web: Web;
const webLog: string[] = [];

t.before(async () => {
  nats = await startAuthNatsServer();
  admin = await nats.connectAs('admin', 'test-admin');
  await ensureTopology(admin, { lockTtlMs: 90_000, ackWaitMs: 30_000 });
  web = createWeb({
    // The web service has no NATS identity of its own here: every request brings its person's.
    connect: ({ creds, name }) => connect({ servers: nats.url, name, ...(creds !== undefined ? { user: creds.user, pass: creds.pass, inboxPrefix: `_INBOX_${creds.user}` } : {}) }),
    logger: createLogger('web', 'debug', new Writable({ write: (c: Buffer, _e, cb) => (webLog.push(c.toString()), cb()) })),
    config: { host: '127.0.0.1', port: 0, transformSchedule: '0 * * * *', heartbeatMs: 1000, connectionIdleMs: 500 },
  });
  await web.start();
});

t.teardown(async () => {
  await web?.stop();
  await admin?.close();
  await nats?.stop();
  nats?.cleanup();
});

const basic = (user: string, pass: string) => `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
const as = (role: NatsRole) => basic(role, nats.passwords[role]);

async function http(method: string, path: string, auth: string | undefined, body?: unknown) {
  const headers: Record<string, string> = {};
  if (auth !== undefined) headers.authorization = auth;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`http://127.0.0.1:${web.port}${path}`, {
    method,
    headers,
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a JSON response of any shape; the tests assert on its fields
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, json, text };
}

const storedEvents = async () => (await (await jetstreamManager(admin)).streams.info(EVENTS_STREAM)).state.messages;

t.test('with NATS authentication, every route needs Basic credentials that NATS accepts: none or wrong → 401 with WWW-Authenticate', async (t) => {
  t.equal(web.authRequired, true);
  const routes: [string, string, unknown?][] = [
    ['GET', '/api/runs'],
    ['GET', '/api/runs/r1'],
    ['GET', '/api/runs/r1/logs'],
    ['GET', '/api/events'],
    ['GET', '/api/schedule'],
    ['POST', '/api/runs', { pipeline: 'model' }],
    ['POST', '/api/schedule/pause'],
    ['POST', '/api/v1/dags/model_trigger_dag/dagRuns', {}],
    ['GET', '/api/v1/dags/model_trigger_dag/dagRuns/r1'],
  ];
  const wrong = [undefined, basic('operator', 'not-the-password'), basic('nobody', 'x'), 'Bearer abc', 'Basic !!!', basic('operator', '')];
  for (const [method, path, body] of routes) {
    for (const auth of wrong) {
      const r = await http(method, path, auth, body);
      t.equal(r.status, 401, `${method} ${path} with ${auth === undefined ? 'no credentials' : auth.slice(0, 12)}`);
      t.match(r.headers.get('www-authenticate'), /^Basic realm="brain-pipeline"/);
      t.equal(r.json?.code, 'UNAUTHORIZED');
    }
  }
  t.equal(await storedEvents(), 0, 'nothing published');
  const health = await http('GET', '/healthz', undefined);
  t.equal(health.status, 200, '/healthz needs no credentials');
  t.match(health.json, { ok: true, auth: true });
});

t.test('monitor reads everything and may change nothing: 403 on trigger and pause, nothing published', async (t) => {
  const runs = await http('GET', '/api/runs', as('monitor'));
  t.equal(runs.status, 200);
  t.same(runs.json, { runs: [], next: null });
  t.equal((await http('GET', '/api/schedule', as('monitor'))).json.paused, false);

  for (const [path, body] of [
    ['/api/runs', { pipeline: 'model' }],
    ['/api/runs', { pipeline: 'transform', reason: 'should not run' }],
    ['/api/v1/dags/model_trigger_dag/dagRuns', {}],
    ['/api/v1/dags/brain_dags/dagRuns', {}],
  ] as const) {
    const r = await http('POST', path, as('monitor'), body);
    t.equal(r.status, 403, `monitor POST ${path}`);
    t.equal(r.json.code, 'FORBIDDEN');
    t.match(r.json.error, /NATS user "monitor" may not do this/);
  }
  const pause = await http('POST', '/api/schedule/pause', as('monitor'));
  t.equal(pause.status, 403, 'monitor may not pause');
  t.equal((await http('GET', '/api/schedule', as('operator'))).json.paused, false, 'the schedule is unchanged');
  t.equal(await storedEvents(), 0, 'no trigger was stored');
});

t.test('operator triggers and pauses on its own connection; monitor sees it live', async (t) => {
  const stream = await fetch(`http://127.0.0.1:${web.port}/api/events`, { headers: { authorization: as('monitor'), accept: 'text/event-stream' } });
  t.equal(stream.status, 200, 'monitor may follow the events');
  const reader = stream.body!.getReader();
  const posted = await http('POST', '/api/runs', as('operator'), { pipeline: 'model', reason: 'operator via web' });
  t.equal(posted.status, 202);
  let text = '';
  const deadline = Date.now() + 10_000;
  while (!text.includes(posted.json.runId) && Date.now() < deadline) {
    const { value } = await reader.read();
    text += Buffer.from(value ?? new Uint8Array()).toString();
  }
  await reader.cancel();
  t.match(text, new RegExp(`id: \\d+\\nevent: model.trigger\\ndata: \\{[^\\n]*"runId":"${posted.json.runId}"`), 'the trigger as an SSE event with its sequence');
  t.equal(await storedEvents(), 1);

  const airflow = await http('POST', '/api/v1/dags/model_trigger_dag/dagRuns', as('operator'), '{}');
  t.equal(airflow.status, 200);
  t.equal(airflow.json.state, 'queued');
  t.equal((await http('GET', `/api/v1/dags/model_trigger_dag/dagRuns/${airflow.json.dag_run_id}`, as('monitor'))).json.state, 'queued', 'no model-gate runs here: queued');

  t.equal((await http('POST', '/api/schedule/pause', as('operator'))).json.paused, true);
  const shown = await http('GET', '/api/schedule', as('monitor'));
  t.match(shown.json, { paused: true, changedBy: 'operator', nextRun: null });
  t.equal((await http('POST', '/api/schedule/resume', as('operator'))).json.paused, false);
});

t.test('a service identity gets what NATS lets it: the scheduler may not read the runs', async (t) => {
  const r = await http('GET', '/api/runs/somerun', as('scheduler'));
  t.equal(r.status, 403);
  t.equal(r.json.code, 'FORBIDDEN');
});

t.test('no credential reaches a log line, an answer or an event', async (t) => {
  await new Promise((r) => setTimeout(r, 800)); // idle connections closed (connectionIdleMs 500)
  const everything = webLog.join('');
  for (const role of ['monitor', 'operator', 'scheduler', 'admin'] as const) {
    t.notOk(everything.includes(nats.passwords[role]), `${role}'s password is not in the web log`);
    t.notOk(everything.includes(Buffer.from(`${role}:${nats.passwords[role]}`).toString('base64')), `nor its Basic header`);
  }
  const events = await http('GET', '/api/runs?limit=10', as('monitor'));
  t.notOk(JSON.stringify(events.json).includes(nats.passwords.operator));
  t.ok(
    webLog.some((l) => l.includes('"user":"operator"')),
    'the log names the user',
  );
});
