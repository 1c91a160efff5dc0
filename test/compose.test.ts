/**
 * Compose smoke test: the repository's docker-compose.yml with images made on this machine
 * (no registry), the stand-in stage images, a full chain triggered by the operator user.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type Msg, type NatsConnection } from '@nats-io/transport-node';
import { errors } from '@nats-io/nats-core';
import { jetstreamManager } from '@nats-io/jetstream';
import { ENV_FILES, SERVICE_NAMES } from '../services';
import { EVENTS_STREAM, isPermissionDenied } from '../shared/nats';
import { REPO_ROOT, buildComposeImages, localComposeProject, natsUserName, type ComposeNatsUser } from '../kit/compose';
import { uid } from '../kit/pipeline';
import { makeRunDirs } from '../kit/run-dirs';

const DOCKER_SERVICES = ['transformer', 'loader', 'model-gate', 'trainer'];

/** Runs the `brain` CLI from the host as a NATS user; resolves with its exit code and output. */
function brain(cwd: string, env: Record<string, string>, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('node', [join(REPO_ROOT, 'bin', 'brain.js'), ...args], { cwd, env: { PATH: process.env.PATH ?? '', ...env }, timeout: 60_000 }, (err, stdout, stderr) =>
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr }),
    );
  });
}

t.test('compose stack: healthy, role permissions, a full chain, clean teardown', async (t) => {
  await buildComposeImages();

  const dirs = makeRunDirs('brain-compose-');
  const { root } = dirs;
  const envFiles: Record<keyof typeof ENV_FILES, string> = {
    transform: 'NEW_DATA=1\n',
    loadProcessed: 'TARGET=processed\n',
    loadViz: 'TARGET=viz\n',
    modelTrigger: 'MISMATCH=1\n',
    train: '',
  };
  for (const [key, text] of Object.entries(envFiles)) writeFileSync(join(dirs.env, ENV_FILES[key as keyof typeof ENV_FILES]), text);

  // No password is configured: the stack makes its own on the first start.
  const { project } = localComposeProject('braintest', dirs, { LOG_LEVEL: 'debug' }, 'generated');
  const runIds: string[] = [];
  const connections: NatsConnection[] = [];
  t.teardown(async () => {
    await Promise.allSettled(connections.map((nc) => nc.close()));
    try {
      await project.destroy(runIds);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  await project.compose('up', '-d', '--no-build').catch(async (err: Error) => {
    throw new Error(`${err.message}\n${await project.compose('logs', '--no-color', '--tail', '30')}`);
  });
  const containers = await project.waitHealthy(1 + SERVICE_NAMES.length, 120_000);
  t.pass(`nats and the ${SERVICE_NAMES.length} services (${SERVICE_NAMES.join(', ')}) are healthy, after the one-shot setup exited 0`);
  const setupLog = await project.compose('logs', '--no-color', 'setup');
  for (const part of ['the BRAIN_EVENTS stream', 'the locks bucket (KV_locks)', 'the runs bucket (KV_runs)', 'the transformer consumer']) {
    t.match(setupLog, `created ${part}`, `setup (as admin) created ${part}`);
  }

  const pass = await project.natsPasswords();
  const users = Object.keys(pass) as ComposeNatsUser[];
  for (const user of users) t.match(pass[user], /^p[0-9a-f]{32}$/, `${natsUserName(user)}: a random 128-bit password, shown by passwords.sh show`);
  t.equal(new Set(Object.values(pass)).size, users.length, 'each user has its own');

  const byService = new Map(containers.map((c) => [c.Config.Labels['com.docker.compose.service'], c]));
  for (const name of SERVICE_NAMES) {
    const c = byService.get(name);
    const socket = c?.Mounts.some((m) => m.Destination === '/var/run/docker.sock') ?? false;
    t.equal(socket, DOCKER_SERVICES.includes(name), `${name}: Docker socket ${socket ? 'mounted' : 'not mounted'}`);
  }
  t.equal(byService.get('scheduler')?.Config.User, 'node', 'the scheduler runs as the non-root node user');
  t.equal(byService.get('web')?.Config.User, '1002:1002', 'the web service runs as its own non-root uid');

  const servers = `nats://${await project.published('nats', 4222)}`;
  t.match(servers, /^nats:\/\/127\.0\.0\.1:\d+$/, 'NATS published on loopback only');
  for (const user of users) {
    const name = natsUserName(user);
    const refusedLogin = await connect({ servers, user: name, pass: `${name}-change-me`, name: 'compose-test-change-me' }).then(
      async (nc) => {
        await nc.close();
        return null;
      },
      (err: unknown) => err,
    );
    t.ok(refusedLogin instanceof errors.AuthorizationError, `${name}-change-me is not ${name}'s password`);
  }

  // Each service reads only its own password file; the scheduler (no Docker socket) cannot read another's.
  t.equal((await project.compose('exec', '-T', 'scheduler', 'cat', '/run/brain-secrets/scheduler')).trim(), pass.scheduler, 'the scheduler reads its own');
  for (const other of ['transformer', 'admin', 'operator']) {
    const read = await project.compose('exec', '-T', 'scheduler', 'cat', `/run/brain-secrets/${other}`).then(
      () => 'read',
      () => 'refused',
    );
    t.equal(read, 'refused', `the scheduler cannot read ${other}'s password`);
  }
  t.equal((await project.compose('exec', '-T', 'web', 'cat', '/run/brain-secrets/web')).trim(), pass.web, 'the web service reads its own');
  for (const [reader, other] of [
    ['web', 'scheduler'],
    ['web', 'operator'],
    ['scheduler', 'web'],
  ] as const) {
    const read = await project.compose('exec', '-T', reader, 'cat', `/run/brain-secrets/${other}`).then(
      () => 'read',
      () => 'refused',
    );
    t.equal(read, 'refused', `the ${reader} service cannot read ${other}'s password`);
  }

  // NATS's monitoring port (no authentication) is not reachable from the other containers.
  const fetchFrom = (service: string, url: string) =>
    project.compose('exec', '-T', service, 'node', '-e', `fetch(${JSON.stringify(url)}).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(3))`).then(
      () => 'reached',
      () => 'unreachable',
    );
  t.equal(await fetchFrom('scheduler', 'http://transformer:8080/healthz'), 'reached', 'control: the scheduler reaches another container');
  t.equal(await fetchFrom('scheduler', 'http://nats:8222/healthz'), 'unreachable', 'NATS monitoring is unreachable from the compose network');
  t.equal(await fetchFrom('transformer', 'http://nats:8222/varz'), 'unreachable', 'from the Docker-socket services too');

  const monitor = await connect({ servers, user: 'monitor', pass: pass.monitor, name: 'compose-test-monitor' });
  const operator = await connect({ servers, user: 'operator', pass: pass.operator, name: 'compose-test-operator' });
  connections.push(monitor, operator);

  const events: { subject: string; data: Record<string, unknown> }[] = [];
  const waiters: (() => void)[] = [];
  for (const subject of ['transform.>', 'data.>', 'load.>', 'model.>', 'rejected.>']) {
    monitor.subscribe(subject, {
      callback: (_err, msg: Msg) => {
        events.push({ subject: msg.subject, data: msg.json<Record<string, unknown>>() });
        for (const w of waiters) w();
      },
    });
  }
  await monitor.flush();
  const waitFor = (pred: (e: (typeof events)[number]) => boolean, what: string, timeoutMs = 60_000) =>
    new Promise<(typeof events)[number]>((resolve, reject) => {
      const check = () => {
        const found = events.find(pred);
        if (found === undefined) return;
        clearTimeout(timer);
        resolve(found);
      };
      const timer = setTimeout(
        () => reject(new Error(`timed out waiting for ${what}; saw:\n${events.map((e) => `${e.subject} ${JSON.stringify(e.data)}`).join('\n')}`)),
        timeoutMs,
      );
      waiters.push(check);
      check();
    });

  const violations: string[] = [];
  void (async () => {
    for await (const s of monitor.status()) if (s.type === 'error') violations.push(s.error.message);
  })();
  const refused = uid('mon');
  runIds.push(refused);
  monitor.publish('transform.trigger', JSON.stringify({ runId: refused, reason: 'test' }));
  await monitor.flush();

  const runId = uid();
  runIds.push(runId);
  operator.publish('transform.trigger', JSON.stringify({ runId, reason: 'test' }));
  await operator.flush();

  const end = await waitFor((e) => e.data.runId === runId && e.subject === 'model.done', `model.done of ${runId}`);
  t.equal(end.data.outcome, 'trained', 'the operator-triggered run trained a model');
  t.same(
    events.filter((e) => e.data.runId === runId).map((e) => e.subject),
    ['transform.trigger', 'transform.done', 'data.new', 'load.done', 'model.trigger', 'model.mismatch', 'model.done'],
    'each event once, in order',
  );
  t.match(violations.join('\n'), /Permissions Violation for Publish to "transform.trigger"/, 'the monitor may not publish transform.trigger');
  t.same(
    events.filter((e) => e.data.runId === refused),
    [],
    'nothing ran for the monitor’s trigger',
  );
  t.same(readdirSync(join(dirs.aws, 'remote', 'processed')), [`${runId}.csv`], 'processed data pushed to the remote');
  t.same(readdirSync(join(dirs.aws, 'remote', 'viz')), [`${runId}.png`], 'viz data pushed to the remote');
  t.ok(existsSync(join(dirs.aws, 'models', `${runId}.bin`)), 'model written');

  // The web service, through its port published on the host's loopback: NATS credentials by HTTP Basic.
  const webAt = await project.published('web', 8088);
  t.match(webAt, /^127\.0\.0\.1:\d+$/, 'the web service is published on loopback only');
  const runsPage = (user?: 'monitor' | 'operator') =>
    fetch(`http://${webAt}/api/runs?limit=5`, user !== undefined ? { headers: { authorization: `Basic ${Buffer.from(`${user}:${pass[user]}`).toString('base64')}` } } : {});
  const anonymous = await runsPage();
  t.equal(anonymous.status, 401, 'GET /api/runs without credentials: 401');
  t.match(anonymous.headers.get('www-authenticate'), /^Basic /, 'asking for Basic credentials');
  for (const user of ['monitor', 'operator'] as const) {
    const res = await runsPage(user);
    t.equal(res.status, 200, `GET /api/runs with the generated ${user} credentials: 200`);
    const body = (await res.json()) as { runs: { runId: string; result: string }[] };
    t.match(
      body.runs.find((r) => r.runId === runId),
      { result: 'trained' },
      `${user} sees the run, trained`,
    );
  }

  // The services' users only read the topology: the transformer's cannot cut the event stream.
  const transformer = await connect({ servers, user: 'transformer', pass: pass.transformer, name: 'compose-test-transformer', inboxPrefix: '_INBOX_transformer' });
  connections.push(transformer);
  const cut = await (await jetstreamManager(transformer)).streams.update(EVENTS_STREAM, { max_msgs: 1 }).then(
    () => null,
    (err: unknown) => err,
  );
  t.ok(isPermissionDenied(cut), 'the transformer user may not update BRAIN_EVENTS');
  t.equal((await (await jetstreamManager(monitor)).streams.info(EVENTS_STREAM)).config.max_msgs, -1, 'BRAIN_EVENTS is unchanged');

  const as = (user: keyof typeof pass) => ({ NATS_URL: servers, NATS_USER: user, NATS_PASS: pass[user] });
  const status = await brain(root, as('monitor'), 'status');
  t.equal(status.code, 0, 'brain status as monitor', { stderr: status.stderr });
  for (const name of SERVICE_NAMES) t.match(status.stdout, new RegExp(`${name}\\s+up\\b`), `brain status lists ${name} as up`);
  const runs = await brain(root, as('monitor'), 'runs', '--limit', '5');
  t.equal(runs.code, 0, 'brain runs as monitor', { stderr: runs.stderr });
  t.match(runs.stdout, runId, 'brain runs shows the run');
  const forbidden = await brain(root, as('monitor'), 'trigger', 'model');
  t.not(forbidden.code, 0, 'brain trigger as monitor fails');
  t.match(forbidden.stderr, /Permissions Violation for Publish to "model.trigger"/, 'with a one-line permission error');
  const forced = await brain(root, as('operator'), 'trigger', 'model', '--wait');
  t.equal(forced.code, 0, 'brain trigger model --wait as operator', { stderr: forced.stderr });
  t.match(forced.stdout, /model trained/, 'the operator forced a training run');
});
