/**
 * Compose smoke test: the repository's docker-compose.yml with its example override (docker-compose.example.yml), as a
 * newcomer runs it, on images made on this machine (no registry): the brain image built from the Dockerfile as written
 * (its `npm ci` stage included) and the example stages from examples/stages; a whole run triggered through the web API
 * as the operator, the files the example stages move, and nothing left after `down -v`.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type Msg, type NatsConnection } from '@nats-io/transport-node';
import { errors } from '@nats-io/nats-core';
import { jetstreamManager } from '@nats-io/jetstream';
import Docker from 'dockerode';
import { SERVICE_NAMES } from '../services';
import { LABELS } from '../shared/docker';
import { PROBE_HEADER } from '../shared/events';
import { EVENTS_STREAM, isPermissionDenied } from '../shared/nats';
import { EXAMPLE_TEST_IMAGE, REPO_ROOT, buildComposeImages, localComposeProject, natsUserName, type ComposeNatsUser } from '../kit/compose';
import { uid } from '../kit/pipeline';
import { makeRunDirs } from '../kit/run-dirs';
import { takeSwarmLock } from './helpers/swarm-lock';

const DOCKER_SERVICES = ['transformer', 'loader', 'model-gate', 'trainer'];

/** Runs the `brain` CLI from the host as a NATS user; resolves with its exit code and output. */
function brain(cwd: string, env: Record<string, string>, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('node', [join(REPO_ROOT, 'bin', 'brain.js'), ...args], { cwd, env: { PATH: process.env.PATH ?? '', ...env }, timeout: 60_000 }, (err, stdout, stderr) =>
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr }),
    );
  });
}

// A cold build (npm ci from the registry inside the image build, then tsc) alone takes minutes on 2 busy cores.
t.setTimeout(900_000);

t.test('compose stack with the example stages: built as written, healthy, role permissions, a whole run from the web API, clean teardown', async (t) => {
  const { buildMs } = await buildComposeImages();
  t.pass(`compose built the brain image from the Dockerfile as written (npm ci, npm run build, prune) and the example stages in ${(buildMs / 1000).toFixed(1)} s`);
  // A swarm test file's init or leave of the engine's swarm cuts the compose network's DNS and connections (ENOTFOUND
  // nats, heartbeats missed): the stack runs while no swarm file changes the engine (the build above needs no lock).
  await takeSwarmLock(t);

  const dirs = makeRunDirs('brain-compose-');
  const { root } = dirs;
  // Host folders that do not exist yet, as on a fresh machine: the override's one-shot `examples` service makes them.
  const data = join(root, 'example');

  // No password is configured: the stack makes its own on the first start. The hourly schedule ticks half an hour
  // away, so no scheduled run joins the test's.
  const schedule = `${(new Date().getUTCMinutes() + 30) % 60} * * * *`;
  const { project: base } = localComposeProject('braintest', dirs, { LOG_LEVEL: 'debug', TRANSFORM_SCHEDULE: schedule }, 'generated');
  const project = base.withExamples(data);
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

  // Without the override the stack is as before: no example service, the stage images of the settings.
  const baseServices = (await base.compose('config', '--services')).trim().split('\n').sort();
  t.same(baseServices, ['nats', 'setup', ...SERVICE_NAMES].sort(), 'docker-compose.yml alone: nats, setup and the services, no examples');
  t.match(await base.compose('config'), 'TRANSFORM_IMAGE: brain-test-transform:latest', 'docker-compose.yml alone takes TRANSFORM_IMAGE from the settings');
  t.match(await project.compose('config'), `TRANSFORM_IMAGE: ${EXAMPLE_TEST_IMAGE}`, 'with the override, every stage runs the example image');

  const upAt = Date.now();
  await project.compose('up', '-d', '--no-build').catch(async (err: Error) => {
    throw new Error(`${err.message}\n${await project.compose('logs', '--no-color', '--tail', '30')}`);
  });
  const containers = await project.waitHealthy(1 + SERVICE_NAMES.length, 120_000, ['setup', 'examples']);
  t.pass(`nats and the ${SERVICE_NAMES.length} services (${SERVICE_NAMES.join(', ')}) are healthy, after the one-shot setup and examples exited 0`);
  t.comment(`up and healthy in ${((Date.now() - upAt) / 1000).toFixed(1)} s`);
  t.same(readdirSync(data).sort(), ['aws', 'processed', 'viz'], 'the examples service made the host folders');
  const setupLog = await project.compose('logs', '--no-color', 'setup');
  for (const part of ['the BRAIN_EVENTS stream', 'the locks bucket (KV_locks)', 'the runs bucket (KV_runs)', 'the transformer consumer']) {
    t.match(setupLog, `created ${part}`, `setup (as admin) created ${part}`);
  }
  const devDependency = await project.compose('exec', '-T', 'web', 'ls', '/app/node_modules/typescript').then(
    () => 'present',
    () => 'absent',
  );
  t.equal(devDependency, 'absent', 'the image holds production dependencies only (the build stage pruned typescript)');
  // The build stage's `npm run build` made the CLI's bundle too, and the launcher runs a NATS-only command from it.
  await project.compose('exec', '-T', 'web', 'ls', '/app/dist/cli/brain.bundle.js');
  t.match(await project.compose('exec', '-T', 'web', 'node', '/app/bin/brain.js', 'runs', '--help'), /Usage: brain runs/, 'the image’s brain runs from its CLI bundle');

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

  // Each service reads only its own password file; the scheduler (no Docker socket) cannot read another's. (Each
  // `compose exec` costs a second or so: they run at once.)
  const readAs = (reader: string, user: string) => project.compose('exec', '-T', reader, 'cat', `/run/brain-secrets/${user}`);
  const refusedReads = [
    ['scheduler', 'transformer'],
    ['scheduler', 'admin'],
    ['scheduler', 'operator'],
    ['web', 'scheduler'],
    ['web', 'operator'],
    ['scheduler', 'web'],
  ] as const;
  const [ownScheduler, ownWeb, ...others] = await Promise.all([
    readAs('scheduler', 'scheduler'),
    readAs('web', 'web'),
    ...refusedReads.map(([reader, user]) =>
      readAs(reader, user).then(
        () => 'read',
        () => 'refused',
      ),
    ),
  ]);
  t.equal(ownScheduler?.trim(), pass.scheduler, 'the scheduler reads its own');
  t.equal(ownWeb?.trim(), pass.web, 'the web service reads its own');
  refusedReads.forEach(([reader, user], i) => t.equal(others[i], 'refused', `the ${reader} service cannot read ${user}'s password`));

  // NATS's monitoring port (no authentication) is not reachable from the other containers.
  const fetchFrom = (service: string, url: string) =>
    project.compose('exec', '-T', service, 'node', '-e', `fetch(${JSON.stringify(url)}).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(3))`).then(
      () => 'reached',
      () => 'unreachable',
    );
  const [control, fromScheduler, fromTransformer] = await Promise.all([
    fetchFrom('scheduler', 'http://transformer:8080/healthz'),
    fetchFrom('scheduler', 'http://nats:8222/healthz'),
    fetchFrom('transformer', 'http://nats:8222/varz'),
  ]);
  t.equal(control, 'reached', 'control: the scheduler reaches another container');
  t.equal(fromScheduler, 'unreachable', 'NATS monitoring is unreachable from the compose network');
  t.equal(fromTransformer, 'unreachable', 'from the Docker-socket services too');

  const monitor = await connect({ servers, user: 'monitor', pass: pass.monitor, name: 'compose-test-monitor' });
  const operator = await connect({ servers, user: 'operator', pass: pass.operator, name: 'compose-test-operator' });
  connections.push(monitor, operator);

  const events: { subject: string; data: Record<string, unknown> }[] = [];
  const waiters: (() => void)[] = [];
  for (const subject of ['transform.>', 'data.>', 'load.>', 'model.>', 'rejected.>']) {
    monitor.subscribe(subject, {
      callback: (_err, msg: Msg) => {
        if (msg.headers?.has(PROBE_HEADER) === true) return; // the web service's permission probes (/api/me) are no events
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

  const webAt = await project.published('web', 8088);
  t.match(webAt, /^127\.0\.0\.1:\d+$/, 'the web service is published on loopback only');
  const basic = (user: 'monitor' | 'operator') => ({ authorization: `Basic ${Buffer.from(`${user}:${pass[user]}`).toString('base64')}` });
  // The newcomer signs in as the operator (the password passwords.sh shows): the dashboard's trigger button is enabled.
  const me = await fetch(`http://${webAt}/api/me`, { headers: basic('operator') });
  t.match(await me.json(), { user: 'operator', may: { trigger: true } }, 'GET /api/me as operator: may trigger (the button is enabled)');
  // Its "Trigger transform": POST /api/runs as the operator.
  const runId = uid();
  runIds.push(runId);
  const triggered = await fetch(`http://${webAt}/api/runs`, {
    method: 'POST',
    headers: { ...basic('operator'), 'content-type': 'application/json' },
    body: JSON.stringify({ pipeline: 'transform', runId, reason: 'first run' }),
  });
  const triggeredAt = Date.now();
  t.equal(triggered.status, 202, 'POST /api/runs as operator: 202');
  t.same(await triggered.json(), { runId }, 'with the run id');

  const end = await waitFor((e) => e.data.runId === runId && e.subject === 'model.done', `model.done of ${runId}`);
  t.equal(end.data.outcome, 'trained', 'the run triggered from the web API trained a model on the example stages');
  t.comment(`the whole run took ${((Date.now() - triggeredAt) / 1000).toFixed(1)} s`);
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
  // What the example stages did on the host folders: a CSV and a chart, pushed by the loads (which emptied the
  // folders), and a model file.
  t.same(readdirSync(join(data, 'aws', 'example-remote', 'processed')), [`${runId}.csv`], 'the transform’s CSV pushed to the example remote');
  t.same(readdirSync(join(data, 'aws', 'example-remote', 'viz')), [`${runId}.svg`], 'its chart too');
  t.same([...readdirSync(join(data, 'processed')), ...readdirSync(join(data, 'viz'))], [], 'the loads emptied the processed and viz folders');
  t.match(readFileSync(join(data, 'aws', 'example-models', `${runId}.txt`), 'utf8'), `model of ${runId}`, 'training wrote the model file');

  // The run as the dashboard shows it, and its container lines after the containers are gone.
  const runsPage = (user?: 'monitor' | 'operator') => fetch(`http://${webAt}/api/runs?limit=5`, user !== undefined ? { headers: basic(user) } : {});
  const anonymous = await runsPage();
  t.equal(anonymous.status, 401, 'GET /api/runs without credentials: 401');
  t.match(anonymous.headers.get('www-authenticate'), /^Basic /, 'asking for Basic credentials');
  for (const user of ['monitor', 'operator'] as const) {
    const res = await runsPage(user);
    t.equal(res.status, 200, `GET /api/runs with the generated ${user} credentials: 200`);
    const body = (await res.json()) as { runs: { runId: string; result: string }[] };
    t.match(
      body.runs.find((r) => r.runId === runId),
      { result: 'trained', stages: { transform: { outcome: 'new-data' }, load: { outcome: 'loaded' }, gate: { outcome: 'mismatch' }, train: { outcome: 'trained' } } },
      `${user} sees the run, trained, with its four steps`,
    );
  }
  const logs = (await (await fetch(`http://${webAt}/api/runs/${runId}/logs?limit=500`, { headers: basic('monitor') })).json()) as { lines: { stage: string; line: string }[] };
  const linesOf = (stage: string) => logs.lines.filter((l) => l.stage === stage).map((l) => l.line);
  t.ok(linesOf('transform').includes('New data was transformed'), 'the run’s log: the example transform printed the seed’s new-data phrase');
  t.ok(linesOf('model-trigger').includes('File counts differ between the dataset commit and master.'), 'the example gate printed the seed’s mismatch phrase');
  t.ok(linesOf('train').includes('epoch 3/3 loss=0.21'), 'training printed its progress');
  t.ok(linesOf('load-processed').length > 0 && linesOf('load-viz').length > 0, 'both loads logged');
  const page = await fetch(`http://${webAt}/`, { headers: basic('monitor') });
  t.equal(page.status, 200, 'the dashboard page is served from the image');
  t.match(await page.text(), /<html/i, 'as HTML');

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

  // down -v leaves nothing: no container of the project or of its runs, no volume.
  await Promise.allSettled(connections.map((nc) => nc.close()));
  await project.destroy(runIds);
  t.same(await project.containers(), [], 'down -v: no container of the project is left');
  const docker = new Docker();
  t.same(await docker.listContainers({ all: true, filters: { label: [`${LABELS.managed}=true`, `${LABELS.runId}=${runId}`] } }), [], 'nor a stage container of the run');
  const { Volumes } = await docker.listVolumes({ filters: { label: [`com.docker.compose.project=${project.name}`] } });
  t.same(Volumes ?? [], [], 'nor a volume');
});
