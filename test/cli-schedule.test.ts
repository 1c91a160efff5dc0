/**
 * `brain pause`, `brain resume` and the schedule in `brain status`, through the real CLI and a real nats-server;
 * `brain service web` as its own NATS user under the repository's auth.conf.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { runSetup } from '../cli/commands/setup';
import { SERVICE_NAMES } from '../services';
import { Pipeline } from '../kit/pipeline';
import { freeLoopbackPort } from '../kit/ports';
import { spawnService } from '../kit/service-process';
import { startAuthNatsServer } from './helpers/nats-auth';

const BRAIN = resolve(__dirname, '../../bin/brain.js');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs the real CLI; resolves with its exit code and output. */
function brain(env: Record<string, string>, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, [BRAIN, ...args], { env: { PATH: process.env.PATH ?? '', NO_COLOR: '1', ...env }, timeout: 30_000 }, (err, stdout, stderr) =>
      done({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr }),
    );
  });
}

interface StatusJson {
  services: { service: string; up: boolean }[];
  schedule: { paused: boolean; schedule: string; nextRun: string | null; changedBy?: string; changedAt?: string };
}

const statusOf = async (env: Record<string, string>): Promise<StatusJson> => {
  const r = await brain(env, 'status', '--json');
  if (r.code !== 0) throw new Error(`brain status --json exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as StatusJson;
};

t.test('brain pause and resume: shown by brain status and the web service, obeyed by the scheduler', async (t) => {
  const schedule = '* * * * * *';
  const p = await Pipeline.start({ services: ['scheduler', 'web'], env: { TRANSFORM_SCHEDULE: schedule, LOG_LEVEL: 'info' } });
  t.teardown(() => p.close());
  const env = { NATS_URL: p.nats.url, TRANSFORM_SCHEDULE: schedule };
  const listening = p.logLines.map((l) => JSON.parse(l) as { msg?: string; port?: number }).find((l) => l.msg === 'web service listening');
  t.ok(listening?.port, 'the web service runs beside the scheduler (WEB_PORT=0: a free port)');
  const webSchedule = async () => (await fetch(`http://127.0.0.1:${listening?.port}/api/schedule`)).json() as Promise<StatusJson['schedule']>;
  const scheduled = () => p.events.filter((e) => e.subject === 'transform.trigger' && e.data.reason === 'schedule').length;

  const before = await statusOf(env);
  t.same(
    before.services.filter((s) => s.up).map((s) => s.service),
    ['scheduler', 'web'],
    'brain status lists the scheduler and the web service as up',
  );
  t.match(before.schedule, { paused: false, schedule, nextRun: /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z$/ }, 'running, with its next tick');
  const text = await brain(env, 'status');
  t.match(text.stdout, /^schedule\n {2}transform +next run \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in \d+ms\) {2}\[\* \* \* \* \* \*, UTC\]$/m, 'the text view shows the next run');
  await p.waitFor((e) => e.subject === 'transform.trigger' && e.data.reason === 'schedule', 5000, 'a scheduled trigger');

  const paused = await brain(env, 'pause');
  t.equal(paused.code, 0, 'brain pause', { stderr: paused.stderr });
  t.match(paused.stdout, /^schedule paused: paused \d+ms ago: no scheduled run until `brain resume` \(hand triggers still run\)\n$/);
  // A tick that read the pause just before it was set may still publish; later ones may not.
  await sleep(1200);
  const atPause = scheduled();
  await sleep(2500);
  t.equal(scheduled(), atPause, 'the scheduler publishes no tick while paused (2.5 s of a per-second schedule)');
  t.match(await statusOf(env), { schedule: { paused: true, nextRun: null, changedAt: /Z$/ } }, 'brain status --json: paused, no next run');
  t.match((await brain(env, 'status')).stdout, /^ {2}transform +paused [\d.]+m?s ago: no scheduled run until `brain resume`/m, 'brain status: paused');
  t.match(await webSchedule(), { paused: true, nextRun: null }, 'GET /api/schedule shows the pause made by the CLI');

  const resumed = await brain(env, 'resume');
  t.equal(resumed.code, 0, 'brain resume', { stderr: resumed.stderr });
  t.match(resumed.stdout, /^schedule resumed: next run \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in \d+ms\)\n$/);
  await p.waitFor(() => scheduled() > atPause, 5000, 'a scheduled trigger after the resume');
  t.pass('the scheduler ticks again');
  t.match(await statusOf(env), { schedule: { paused: false, nextRun: /Z$/ } }, 'brain status: running again');
  t.match(await webSchedule(), { paused: false }, 'and so says the web service');
});

t.test("under the repository's auth.conf: monitor is refused, operator pauses; brain service web runs as its own user", async (t) => {
  const server = await startAuthNatsServer();
  t.teardown(async () => {
    await server.stop();
    server.cleanup();
  });
  const as = (user: 'monitor' | 'operator') => ({ NATS_URL: server.url, NATS_USER: user, NATS_PASS: server.passwords[user] });
  // Before any setup: no stream, no bucket, no service.
  const bare = await brain(as('monitor'), 'status', '--json');
  t.equal(bare.code, 0, 'brain status before brain setup exits 0', { stderr: bare.stderr });
  t.match(
    JSON.parse(bare.stdout),
    {
      services: SERVICE_NAMES.map((service) => ({ service, up: false })),
      locks: [{ held: false }, { held: false }],
      schedule: { paused: false },
      lastRuns: [{ stage: 'transform' }],
    },
    'every service down, no lock held, the schedule not paused, no run yet',
  );
  const noBucket = await brain(as('operator'), 'pause');
  t.equal(noBucket.stderr, 'brain: the schedule bucket does not exist yet: run `brain setup` (or start a service)\n', 'brain pause before setup says to run brain setup');

  const lines: string[] = [];
  const setup = await runSetup(
    { NATS_URL: server.url, NATS_USER: 'admin', NATS_PASS: server.passwords.admin },
    (l) => lines.push(l),
    (l) => lines.push(l),
  );
  t.equal(setup, 0, 'brain setup as admin', { lines });

  for (const action of ['pause', 'resume']) {
    const refused = await brain(as('monitor'), action);
    t.equal(refused.code, 1, `brain ${action} as monitor exits 1`);
    t.equal(refused.stderr, `brain: NATS user "monitor" may not ${action} the schedule: the NATS server refused it (it takes the operator user)\n`, 'one clear line');
    t.equal(refused.stdout, '', 'and prints nothing else');
  }
  t.match(await statusOf(as('monitor')), { schedule: { paused: false } }, 'the schedule is unchanged');

  const paused = await brain(as('operator'), 'pause');
  t.equal(paused.code, 0, 'brain pause as operator', { stderr: paused.stderr });
  t.match(await statusOf(as('monitor')), { schedule: { paused: true, changedBy: 'operator', nextRun: null } }, 'the monitor sees who paused it');
  t.equal((await brain(as('operator'), 'resume')).code, 0, 'brain resume as operator');
  t.match(await statusOf(as('monitor')), { schedule: { paused: false, changedBy: 'operator' } }, 'resumed');

  // The web service as compose runs it: its own NATS user, people's requests on their own credentials.
  const port = await freeLoopbackPort();
  const logFrom = server.log.length;
  const web = spawnService(['service', 'web'], {
    NATS_URL: server.url,
    NATS_USER: 'web',
    NATS_PASS: server.passwords.web,
    WEB_PORT: String(port),
    WEB_HOST: '127.0.0.1',
    HEALTH_PORT: '0',
    HEALTH_HOST: '127.0.0.1',
  });
  t.teardown(async () => {
    web.signal('SIGTERM');
    await web.exited;
  });
  await web.waitForLog(/services started/);
  t.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200, 'brain service web: /healthz answers 200');
  const none = await fetch(`http://127.0.0.1:${port}/api/runs`);
  t.equal(none.status, 401, 'GET /api/runs without credentials: 401');
  t.match(none.headers.get('www-authenticate'), /^Basic /);
  const basic = `Basic ${Buffer.from(`monitor:${server.passwords.monitor}`).toString('base64')}`;
  const ok = await fetch(`http://127.0.0.1:${port}/api/runs`, { headers: { authorization: basic } });
  t.equal(ok.status, 200, "with the monitor's NATS credentials: 200");
  t.same(((await ok.json()) as { runs: unknown[] }).runs, [], 'no runs yet');
  t.ok((await statusOf(as('monitor'))).services.find((s) => s.service === 'web')?.up, 'brain status lists web as up (its user answers the services API)');
  t.same(
    server.log.slice(logFrom).filter((l) => /Violation/.test(l)),
    [],
    'no permission violation while the web service started, served and was listed',
  );
  t.notOk(
    web.output.some((l) => /"level":(50|60)/.test(l)),
    'the web service logged no error',
  );
});
