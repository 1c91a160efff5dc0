/**
 * Security promises, against a real nats-server and a real dockerd:
 * containers are shaped by configuration alone, the NATS roles of deploy/nats/auth.conf hold,
 * and env-file secrets never leave the container.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { Writable } from 'node:stream';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { LABELS } from '../shared/docker';
import { CONSUMERS, ENV_FILES, SERVICE_NAMES } from '../services';
import { STAGES } from '../shared/events';
import { EVENTS_STREAM, LOCKS_BUCKET, LOGS_STREAM, RUNS_BUCKET, bucketStream, isPermissionDenied } from '../shared/nats';
import { loadConfig, runServices, type RunningServices } from '../services/composition-root';
import { runSetup } from '../cli/commands/setup';
import { TEST_IMAGES, standInStageEnv } from '../kit/stand-ins';
import { containerEventsBetween } from '../kit/containers';
import { Pipeline, docker, uid, waitForContainer, type EnvFileKey, type RecordedEvent } from '../kit/pipeline';
import { NATS_ROLES, startAuthNatsServer, type NatsRole } from './helpers/nats-auth';

// The tests share nothing (each its own nats-server, services, run dirs and run ids): run a few at once.
t.jobs = 3;

const BRAIN = resolve(__dirname, '../../bin/brain.js');
const run = promisify(execFile);

/** Container settings an attacker would like to choose, under the names Docker's API and a careless schema would use. */
const HOSTILE_FIELDS: Record<string, unknown> = {
  image: 'evil/miner:latest',
  Image: 'evil/miner:latest',
  mounts: [{ source: '/', target: '/host' }],
  Mounts: [{ Type: 'bind', Source: '/', Target: '/host' }],
  Binds: ['/:/host'],
  env: { LD_PRELOAD: '/host/evil.so' },
  Env: ['LD_PRELOAD=/host/evil.so'],
  privileged: true,
  Privileged: true,
  network: 'host',
  NetworkMode: 'host',
  HostConfig: { Privileged: true, Binds: ['/:/host'], NetworkMode: 'host', CapAdd: ['ALL'] },
};

/** A valid body of each subject a service consumes; the run id comes first so a rejection's preview shows it. */
const VALID_BODIES: Record<string, (runId: string) => Record<string, unknown>> = {
  'transform.trigger': (runId) => ({ runId, reason: 'test' }),
  'model.trigger': (runId) => ({ runId, reason: 'test' }),
  'data.new': (runId) => ({ runId, v: 1, at: new Date().toISOString() }),
  'model.mismatch': (runId) => ({ runId, v: 1, at: new Date().toISOString(), reason: 'mismatch' }),
};

/** Names of the containers dockerd created for these runs between two times (seconds), from its own event log. */
async function containersCreatedFor(runIds: ReadonlySet<string>, since: number, until: number): Promise<string[]> {
  const events = await containerEventsBetween(docker, 'create', `${LABELS.managed}=true`, since, until);
  return events.filter((a) => runIds.has(a[LABELS.runId] ?? '')).map((a) => a.name ?? '');
}

/** Force-removes what a failed test may have left of its runs (a passing test leaves nothing). */
async function removeContainersOf(runIds: readonly string[]): Promise<void> {
  for (const runId of runIds) {
    const left = await docker.listContainers({ all: true, filters: { label: [`${LABELS.runId}=${runId}`] } });
    for (const c of left) await docker.getContainer(c.Id).remove({ force: true });
  }
}

/**
 * Starts a transform run and checks the running container against the configuration:
 * image, exactly the three configured bind mounts, no privileges, the configured network, and an
 * environment of the env file plus BRAIN_RUN_ID / BRAIN_STAGE (and the image's own variables).
 */
async function checkTransformContainer(t: tap.Test, p: Pipeline, runId: string, transformEnv: Record<string, string>, network: string | undefined): Promise<string> {
  await p.publish('transform.trigger', { runId, reason: 'inspect' });
  const found = await waitForContainer(runId, 'transform');
  const info = await docker.getContainer(found.Id).inspect();
  const image = await docker.getImage(TEST_IMAGES.transform).inspect();

  t.equal(info.Config.Image, TEST_IMAGES.transform, 'the container runs the configured TRANSFORM_IMAGE');
  t.equal(info.Image, image.Id, 'and that image, by id');
  t.same(
    info.Mounts.map((m) => ({ Type: m.Type, Source: m.Source, Destination: m.Destination })).sort((a, b) => a.Destination.localeCompare(b.Destination)),
    [
      { Type: 'bind', Source: p.dirs.aws, Destination: '/app/.aws' },
      { Type: 'bind', Source: p.dirs.processed, Destination: '/app/processed' },
      { Type: 'bind', Source: p.dirs.viz, Destination: '/app/viz' },
    ],
    'exactly the three configured bind mounts, from the configured host dirs',
  );
  t.same(info.HostConfig.Binds ?? [], [], 'no Binds');
  t.equal(info.HostConfig.Privileged, false, 'not privileged');
  t.same(info.HostConfig.CapAdd ?? [], [], 'no added capabilities');
  t.same(info.HostConfig.Devices ?? [], [], 'no devices');
  if (network === undefined) {
    t.match(info.HostConfig.NetworkMode, /^(default|bridge)$/, "Docker's default network mode");
    t.same(Object.keys(info.NetworkSettings.Networks), ['bridge'], 'attached to the default bridge only');
  } else {
    t.equal(info.HostConfig.NetworkMode, network, 'the configured CONTAINER_NETWORK');
    t.same(Object.keys(info.NetworkSettings.Networks), [network], 'attached to that network only');
  }
  const expectedEnv = [...Object.entries(transformEnv).map(([k, v]) => `${k}=${v}`), `BRAIN_RUN_ID=${runId}`, 'BRAIN_STAGE=transform', ...(image.Config.Env ?? [])];
  t.same([...info.Config.Env].sort(), expectedEnv.sort(), 'environment: the env file, BRAIN_RUN_ID, BRAIN_STAGE and the image’s own, nothing else');

  const end = await p.waitForRunEnd(runId);
  t.equal(end.data.outcome, 'no-new-data', 'the inspected run completed');
  t.same(await p.leftBehind(runId), [], 'its container was removed');
  return info.Name.replace(/^\//, '');
}

t.test('11. no event payload chooses the image, mounts, environment, privileges or network of a container', async (t) => {
  const transformEnv = { NEW_DATA: '0', SLEEP: '3', API_TOKEN: `tok-${randomBytes(6).toString('hex')}` };
  const p = await Pipeline.start({ envFiles: { transform: transformEnv } });
  const cases = Object.keys(VALID_BODIES).flatMap((subject) => [
    ...Object.keys(HOSTILE_FIELDS).map((field) => ({ subject, runId: uid('h'), fields: [field] })),
    { subject, runId: uid('h'), fields: Object.keys(HOSTILE_FIELDS) },
  ]);
  const valid = uid();
  t.teardown(async () => {
    await p.close();
    await removeContainersOf([...cases.map((c) => c.runId), valid]);
  });

  const since = Math.floor(Date.now() / 1000);
  for (const c of cases) {
    const body = VALID_BODIES[c.subject]?.(c.runId) ?? {};
    for (const field of c.fields) body[field] = HOSTILE_FIELDS[field];
    await p.publish(c.subject, body);
  }
  const rejected = (e: RecordedEvent) => e.subject.startsWith('rejected.');
  const deadline = Date.now() + 20_000;
  while (p.events.filter(rejected).length < cases.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  const reports = p.events.filter(rejected);
  t.equal(reports.length, cases.length, 'one rejection per hostile event');
  for (const c of cases) {
    const report = reports.find((r) => r.subject === `rejected.${c.subject}` && String(r.data.preview).includes(`"runId":"${c.runId}"`));
    const error = String(report?.data.error);
    t.ok(
      report !== undefined && c.fields.every((f) => error.includes(`"${f}"`)),
      `${c.subject} carrying ${c.fields.length === 1 ? c.fields[0] : 'every hostile field'} ends on rejected.${c.subject}, naming the field`,
      { error },
    );
  }
  const ids = new Set(cases.map((c) => c.runId));
  t.same(
    p.events.filter((e) => ids.has(String(e.data.runId)) && !rejected(e) && !(e.subject in VALID_BODIES)),
    [],
    'no stage ran for a hostile event',
  );
  t.same(
    p.logBatches.filter((b) => ids.has(String(b.data.runId))),
    [],
    'no container output for a hostile event',
  );
  t.same(await containersCreatedFor(ids, since, Math.floor(Date.now() / 1000) + 1), [], 'dockerd created no container for a hostile event');

  const name = await checkTransformContainer(t, p, valid, transformEnv, undefined);
  t.match(name, new RegExp(`^brain-transform-.*${valid}$`), 'the valid run’s container is named after its stage and run');
  t.same(await containersCreatedFor(new Set([valid]), since, Math.floor(Date.now() / 1000) + 1), [name], 'the same query sees the valid run’s container');
});

t.test('11. CONTAINER_NETWORK, not the event, picks the network', async (t) => {
  const transformEnv = { NEW_DATA: '0', SLEEP: '3' };
  const name = `brain-sec-${randomBytes(5).toString('hex')}`;
  const network = await docker.createNetwork({ Name: name, Driver: 'bridge', Internal: true });
  const runId = uid();
  let p: Pipeline | undefined;
  t.teardown(async () => {
    try {
      await p?.close();
      await removeContainersOf([runId]);
    } finally {
      await network.remove();
    }
  });
  p = await Pipeline.start({ env: { CONTAINER_NETWORK: name }, envFiles: { transform: transformEnv } });
  await checkTransformContainer(t, p, runId, transformEnv, name);
});

/** Subjects of the publishes the server refused this connection, as they arrive. */
function refusedPublishes(nc: NatsConnection): string[] {
  const subjects: string[] = [];
  void (async () => {
    for await (const s of nc.status()) {
      const err = s.type === 'error' ? (s.error as Error & { operation?: string; subject?: string }) : undefined;
      if (err?.name === 'PermissionViolationError' && err.operation === 'publish' && err.subject !== undefined) subjects.push(err.subject);
    }
  })();
  return subjects;
}

/** Every subject an event, rejection report or log batch is published on. */
const EVENT_SUBJECTS = [
  'transform.trigger',
  'transform.done',
  'data.new',
  'load.done',
  'model.trigger',
  'model.mismatch',
  'model.done',
  ...Object.keys(VALID_BODIES).map((s) => `rejected.${s}`),
  ...STAGES.map((stage) => `logs.${stage}.probe`),
];

/** What each user of deploy/nats/auth.conf may publish among EVENT_SUBJECTS. */
const MAY_PUBLISH: Record<NatsRole, string[]> = {
  admin: [],
  scheduler: ['transform.trigger'],
  transformer: ['transform.done', 'data.new', 'rejected.transform.trigger', 'logs.transform.probe'],
  loader: ['load.done', 'model.trigger', 'rejected.data.new', 'logs.load-processed.probe', 'logs.load-viz.probe'],
  'model-gate': ['model.done', 'model.mismatch', 'rejected.model.trigger', 'logs.model-trigger.probe'],
  trainer: ['model.done', 'rejected.model.mismatch', 'logs.train.probe'],
  monitor: [],
  operator: ['transform.trigger', 'model.trigger'],
  web: [],
};

t.test('12. the NATS users of deploy/nats/auth.conf: services run as themselves, nobody publishes beyond their role', async (t) => {
  const server = await startAuthNatsServer();
  const root = mkdtempSync(join(tmpdir(), 'brain-sec-auth-'));
  const running: RunningServices[] = [];
  const connections: NatsConnection[] = [];
  const runIds: string[] = [];
  t.teardown(async () => {
    await Promise.allSettled(running.map((r) => r.stop()));
    await Promise.allSettled(connections.map((nc) => nc.close()));
    await removeContainersOf(runIds);
    await server.stop();
    server.cleanup();
    rmSync(root, { recursive: true, force: true });
  });
  const dirs = { env: join(root, 'env'), aws: join(root, 'aws'), processed: join(root, 'processed'), viz: join(root, 'viz') };
  for (const dir of Object.values(dirs)) mkdirSync(dir);
  const envFiles: Record<EnvFileKey, string> = { transform: 'NEW_DATA=1', loadProcessed: 'TARGET=processed', loadViz: 'TARGET=viz', modelTrigger: 'MISMATCH=1', train: '' };
  for (const [key, text] of Object.entries(envFiles)) writeFileSync(join(dirs.env, ENV_FILES[key as EnvFileKey]), `${text}\n`);

  // The topology first, as the admin user: the services may only read it.
  const setupOutput: string[] = [];
  const setupCode = await runSetup(
    { NATS_URL: server.url, NATS_USER: 'admin', NATS_PASS: server.passwords.admin },
    (l) => setupOutput.push(l),
    (l) => setupOutput.push(l),
  );
  t.equal(setupCode, 0, '`brain setup` as admin creates the topology', { setupOutput });

  const as: Partial<Record<NatsRole, NatsConnection>> = {};
  const refused: Partial<Record<NatsRole, string[]>> = {};
  for (const role of NATS_ROLES) {
    const nc = await server.connectAs(role, `probe-${role}`);
    connections.push(nc);
    as[role] = nc;
    refused[role] = refusedPublishes(nc);
  }
  const monitor = as.monitor as NatsConnection;
  // What was published, as the monitor sees it on `>`; JetStream's deliveries to the services' pull requests
  // (reply subject $JS.ACK.…) match `>` too and would count each consumed event twice.
  const seen: { subject: string; data: string }[] = [];
  monitor.subscribe('>', {
    callback: (_err, msg) => {
      if (msg.reply?.startsWith('$JS.ACK.') !== true) seen.push({ subject: msg.subject, data: msg.string() });
    },
  });
  await monitor.flush();

  // Every service (the web one too), each in its own runServices as its own NATS user, like the compose stack.
  const serviceLog: string[] = [];
  const sink = new Writable({
    write: (chunk: Buffer, _enc, cb) => {
      serviceLog.push(
        ...chunk
          .toString()
          .split('\n')
          .filter((l) => l.trim() !== ''),
      );
      cb();
    },
  });
  for (const name of SERVICE_NAMES) {
    const env = {
      NATS_URL: server.url,
      NATS_USER: name,
      NATS_PASS: server.passwords[name],
      BRAIN_ENV_DIR: dirs.env,
      ...standInStageEnv(dirs),
      TRANSFORM_SCHEDULE: '0 0 1 1 *',
      HEALTH_PORT: '0',
      HEALTH_HOST: '127.0.0.1',
      WEB_PORT: '0',
      WEB_HOST: '127.0.0.1',
    };
    running.push(await runServices([name], loadConfig(env, [name]), { logDestination: sink }));
  }

  const runId = uid();
  runIds.push(runId);
  as.operator?.publish('transform.trigger', JSON.stringify({ runId, reason: 'test' }));
  await as.operator?.flush();
  const deadline = Date.now() + 60_000;
  const eventsOfRun = () =>
    seen.filter((m) => !m.subject.startsWith('logs.') && !m.subject.startsWith('$') && !m.subject.startsWith('_INBOX') && m.data.includes(`"runId":"${runId}"`));
  while (!eventsOfRun().some((m) => m.subject === 'model.done' || /"outcome":"failed"/.test(m.data)) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  t.same(
    eventsOfRun().map((m) => `${m.subject} ${(/"outcome":"([a-z-]+)"/.exec(m.data) ?? [])[1] ?? ''}`.trim()),
    ['transform.trigger', 'transform.done new-data', 'data.new', 'load.done loaded', 'model.trigger', 'model.mismatch', 'model.done trained'],
    'a full chain runs with every service as its own user, and the monitor sees each event',
    { serviceLog: serviceLog.filter((l) => /"level":(40|50|60)/.test(l)) },
  );
  for (const stage of STAGES)
    t.ok(
      seen.some((m) => m.subject === `logs.${stage}.${runId}`),
      `the monitor sees the ${stage} log lines, published under the service's user`,
    );
  t.same(
    server.log.filter((l) => /Violation/.test(l)),
    [],
    'nats-server logged no permission violation while the services ran',
  );
  t.same(
    serviceLog.filter((l) => /"level":(50|60)/.test(l)),
    [],
    'no service logged an error',
  );
  await Promise.all(running.splice(0).map((r) => r.stop()));

  // Every user publishes on every event subject: exactly its own get through, the rest are refused.
  for (const role of NATS_ROLES) {
    const nc = as[role] as NatsConnection;
    const marker = `probe-${role}-${randomBytes(4).toString('hex')}`;
    for (const subject of EVENT_SUBJECTS) nc.publish(subject, JSON.stringify({ probe: marker }));
    // The server handles a connection's messages in order: after both round trips, whatever got through has reached the monitor.
    await nc.flush();
    await monitor.flush();
    const allowed = MAY_PUBLISH[role];
    t.same(
      seen
        .filter((m) => m.data.includes(marker))
        .map((m) => m.subject)
        .sort(),
      [...allowed].sort(),
      `${role}: its own subjects reach subscribers (${allowed.join(', ') || 'none'})`,
    );
    t.same(
      [...(refused[role] ?? [])].sort(),
      EVENT_SUBJECTS.filter((s) => !allowed.includes(s)).sort(),
      `${role}: every other event, trigger, *.done, rejected.* and logs.* subject is refused with a permissions violation`,
    );
  }

  t.ok(
    server.log.some((l) => /Violation/.test(l)),
    'nats-server logs the refused publishes (the violation check above can fail)',
  );

  // The locks bucket: a service writes, the monitor and the operator read it and cannot change it.
  const key = `probe-${randomBytes(4).toString('hex')}`;
  const revision = await (await new Kvm(as.transformer as NatsConnection).open(LOCKS_BUCKET)).put(key, 'held');
  for (const role of ['monitor', 'operator'] as const) {
    const nc = as[role] as NatsConnection;
    const kv = await new Kvm(nc).open(LOCKS_BUCKET);
    t.equal((await kv.get(key))?.string(), 'held', `${role} reads the locks bucket`);
    const writes: [string, () => Promise<unknown>][] = [
      ['put', () => kv.put(key, 'stolen')],
      ['create', () => kv.create(`${key}-new`, 'stolen')],
      ['update', () => kv.update(key, 'stolen', revision)],
      ['delete', () => kv.delete(key)],
      ['purge', () => kv.purge(key)],
    ];
    for (const [op, write] of writes) {
      await t.rejects(write(), { message: /Permissions Violation for Publish to "\$KV\.locks\./ }, `${role} cannot ${op} a lock`);
    }
    const jsm = await jetstreamManager(nc);
    await t.rejects(jsm.streams.purge(`KV_${LOCKS_BUCKET}`), { message: /Permissions Violation/ }, `${role} cannot purge the bucket's stream`);
    await t.rejects(jsm.streams.delete(`KV_${LOCKS_BUCKET}`), { message: /Permissions Violation/ }, `${role} cannot delete the bucket's stream`);
    const after = await kv.get(key);
    t.same([after?.string(), after?.revision, await kv.get(`${key}-new`)], ['held', revision, null], `the lock is unchanged after ${role}'s attempts`);
  }

  // The runs bucket: every stage service writes and reads it; the scheduler, the monitor and the operator cannot write it.
  for (const role of ['transformer', 'loader', 'model-gate', 'trainer'] as const) {
    const kv = await new Kvm(as[role] as NatsConnection).open(RUNS_BUCKET);
    const runKey = `${role}-${randomBytes(4).toString('hex')}.probe`;
    const rev = await kv.put(runKey, role);
    t.same([(await kv.get(runKey))?.string(), (await kv.get(runKey))?.revision], [role, rev], `${role} writes and reads the runs bucket`);
  }
  const record = `probe-${randomBytes(4).toString('hex')}.transform`;
  await (await new Kvm(as.transformer as NatsConnection).open(RUNS_BUCKET)).put(record, 'started');
  for (const role of ['monitor', 'operator'] as const) {
    const kv = await new Kvm(as[role] as NatsConnection).open(RUNS_BUCKET);
    t.equal((await kv.get(record))?.string(), 'started', `${role} reads the runs bucket`);
    t.ok(await permissionRefused(kv.put(record, 'forged')), `${role} cannot write the runs bucket`);
  }
  t.ok(await permissionRefused((await new Kvm(as.scheduler as NatsConnection).open(RUNS_BUCKET)).put(record, 'forged')), 'the scheduler cannot write the runs bucket');
  t.equal((await (await new Kvm(as.monitor as NatsConnection).open(RUNS_BUCKET)).get(record))?.string(), 'started', 'the run record is unchanged');
  // The web service's own user reads nothing: people read (and act) through the web on their own credentials.
  const webUser = as.web as NatsConnection;
  t.ok(await permissionRefused((await new Kvm(webUser).open(RUNS_BUCKET)).get(record)), "the web service's own user cannot read the runs bucket");
  t.ok(await permissionRefused((await jetstreamManager(webUser)).streams.getMessage(EVENTS_STREAM, { seq: 1 })), 'nor the events stream');
});

/** Resolves true when the operation is refused with the client's permission error (by class), false when it succeeds. */
async function permissionRefused(operation: Promise<unknown>): Promise<boolean> {
  try {
    await operation;
    return false;
  } catch (err) {
    if (isPermissionDenied(err)) return true;
    throw err;
  }
}

/** Subscribes and waits for the server's verdict: the client's permission error when refused, null when the subscription stands. */
async function subscriptionRefusal(nc: NatsConnection, subject: string): Promise<Error | null> {
  const sub = nc.subscribe(subject, { callback: () => undefined });
  // The server answers a SUB before the PING behind it: after the flush a refusal has arrived.
  await nc.flush();
  if (!sub.isClosed()) {
    sub.unsubscribe();
    return null;
  }
  const err = await sub.closed;
  return err instanceof Error ? err : null;
}

const SERVICE_ROLES = ['scheduler', 'transformer', 'loader', 'model-gate', 'trainer', 'web'] as const;

t.test('12. each role receives only its own replies and deliveries, and only admin changes the topology', async (t) => {
  const server = await startAuthNatsServer();
  const connections: NatsConnection[] = [];
  t.teardown(async () => {
    await Promise.allSettled(connections.map((nc) => nc.close()));
    await server.stop();
    server.cleanup();
  });
  const setup = async () => {
    const lines: string[] = [];
    const code = await runSetup(
      { NATS_URL: server.url, NATS_USER: 'admin', NATS_PASS: server.passwords.admin },
      (l) => lines.push(l),
      (l) => lines.push(l),
    );
    return { code, lines };
  };
  const first = await setup();
  t.equal(first.code, 0, 'brain setup as admin', { lines: first.lines });
  const as = {} as Record<NatsRole, NatsConnection>;
  for (const role of NATS_ROLES) {
    as[role] = await server.connectAs(role, `probe-${role}`);
    connections.push(as[role]);
  }

  // Inboxes: a service user subscribes to its own prefix, never to the shared `_INBOX.>` nor to another role's.
  for (const role of SERVICE_ROLES) {
    t.equal(await subscriptionRefusal(as[role], `_INBOX_${role}.>`), null, `${role} may subscribe to its own inbox prefix _INBOX_${role}`);
    for (const other of ['_INBOX', ...NATS_ROLES.filter((r) => r !== role).map((r) => `_INBOX_${r}`)]) {
      const err = await subscriptionRefusal(as[role], `${other}.>`);
      t.ok(
        isPermissionDenied(err) && (err as Error & { operation?: string }).operation === 'subscription',
        `${role} may not subscribe to ${other}.> (refused with a subscription permission violation)`,
      );
    }
  }
  // The attack of issue 15: the scheduler receiving the transformer's pull deliveries and terminating them.
  const overheard: string[] = [];
  const spy = as.scheduler.subscribe('_INBOX_transformer.>', { callback: (err, m) => void (err === null && overheard.push(m.subject)) });
  const schedulerRefused = refusedPublishes(as.scheduler);
  await as.scheduler.flush();
  t.ok(spy.isClosed() && isPermissionDenied(await spy.closed), "the scheduler's subscription to the transformer's inbox is refused");
  const probe = uid('inbox');
  as.operator.publish('transform.trigger', JSON.stringify({ runId: probe, reason: 'probe' }));
  await as.operator.flush();
  const delivery = await (await jetstream(as.transformer).consumers.get(EVENTS_STREAM, CONSUMERS.transformer.durable)).next({ expires: 5000 });
  t.ok(delivery?.string().includes(probe), 'the transformer pulls the trigger through its own inbox');
  t.same(overheard, [], 'the scheduler received none of it');
  // JsMsg's implementation carries the ack subject the delivery came with.
  const ackSubject = (delivery as unknown as { reply: string } | null)?.reply ?? '';
  t.match(ackSubject, /^\$JS\.ACK\.BRAIN_EVENTS\.transformer\./, 'the delivery names its ack subject');
  as.scheduler.publish(ackSubject, '+TERM');
  await as.scheduler.flush();
  // The client reports the refusal through its status stream, a moment after the flush.
  for (const deadline = Date.now() + 3000; !schedulerRefused.includes(ackSubject) && Date.now() < deadline;) await new Promise((r) => setTimeout(r, 20));
  t.ok(schedulerRefused.includes(ackSubject), 'the scheduler cannot terminate it (its +TERM is refused)');
  const pending = await (await jetstreamManager(as.operator)).consumers.info(EVENTS_STREAM, CONSUMERS.transformer.durable);
  t.same([pending.num_ack_pending, pending.ack_floor.stream_seq], [1, 0], 'the delivery is still pending for the transformer');
  t.equal(await delivery?.ackAck(), true, 'the transformer still acknowledges it');

  // Topology: no user but admin can change it.
  const eventsBefore = (await (await jetstreamManager(as.admin)).streams.info(EVENTS_STREAM)).config;
  const locksBefore = (await (await jetstreamManager(as.admin)).streams.info(bucketStream(LOCKS_BUCKET))).config;
  for (const role of NATS_ROLES.filter((r) => r !== 'admin')) {
    const jsm = await jetstreamManager(as[role]);
    t.ok(await permissionRefused(jsm.streams.update(EVENTS_STREAM, { max_msgs: 1 })), `${role} cannot update ${EVENTS_STREAM} (max_msgs 1)`);
    t.ok(await permissionRefused(jsm.streams.update(bucketStream(LOCKS_BUCKET), { max_age: 1_000_000_000 })), `${role} cannot shorten the locks bucket's max age`);
    t.ok(await permissionRefused(jsm.streams.add({ name: `EVIL_${role.replace('-', '_')}`, subjects: [`evil.${role}.>`] })), `${role} cannot create a stream`);
    t.ok(await permissionRefused(jsm.streams.purge(EVENTS_STREAM)), `${role} cannot purge ${EVENTS_STREAM}`);
    for (const { durable } of Object.values(CONSUMERS)) {
      t.ok(await permissionRefused(jsm.consumers.update(EVENTS_STREAM, durable, { ack_wait: 1_000_000_000 })), `${role} cannot update the ${durable} consumer`);
    }
  }
  const admin = await jetstreamManager(as.admin);
  t.same((await admin.streams.info(EVENTS_STREAM)).config.max_msgs, eventsBefore.max_msgs, `${EVENTS_STREAM} is unchanged after the attempts`);
  t.same((await admin.streams.info(bucketStream(LOCKS_BUCKET))).config.max_age, locksBefore.max_age, 'the locks bucket is unchanged');
  for (const { durable } of Object.values(CONSUMERS)) {
    t.equal((await admin.consumers.info(EVENTS_STREAM, durable)).config.ack_wait, 30_000_000_000, `the ${durable} consumer keeps its ack wait`);
  }

  // The admin can; `brain setup` puts it back. It still cannot delete or purge, nor publish an event.
  t.equal((await admin.streams.update(EVENTS_STREAM, { max_msgs: 1 })).config.max_msgs, 1, `admin may update ${EVENTS_STREAM}`);
  const again = await setup();
  t.equal(again.code, 0, 'brain setup again');
  t.ok(
    again.lines.some((l) => /updated the BRAIN_EVENTS stream: max_msgs 1 → unlimited/.test(l)),
    'and reports the correction',
    { lines: again.lines },
  );
  t.equal((await admin.streams.info(EVENTS_STREAM)).config.max_msgs, -1, `${EVENTS_STREAM} is back to unlimited`);
  t.ok(await permissionRefused(admin.streams.delete(EVENTS_STREAM)), `admin cannot delete ${EVENTS_STREAM}`);
  t.ok(await permissionRefused(admin.streams.purge(EVENTS_STREAM)), `admin cannot purge ${EVENTS_STREAM}`);
  t.ok(await permissionRefused((await new Kvm(as.admin).open(LOCKS_BUCKET)).put('transform', 'forged')), 'admin cannot write a lock');
});

/** Everything a stream holds, as text: subjects, headers and bodies. */
async function storedText(nc: NatsConnection, stream: string): Promise<string> {
  const jsm = await jetstreamManager(nc);
  const { state } = await jsm.streams.info(stream);
  const parts: string[] = [];
  for (let seq = state.first_seq; seq <= state.last_seq; seq++) {
    const m = await jsm.streams.getMessage(stream, { seq });
    if (m !== null) parts.push(`${m.subject} ${m.header?.toString() ?? ''} ${m.string()}`);
  }
  return parts.join('\n');
}

/** 32 random hex characters: 12 of them in a row in an output would be a leak, not chance. */
const newSecret = () => randomBytes(16).toString('hex');
const FRAGMENT = 12;

/** Which secrets (by name, line by line) a text gives away, whole or in runs of FRAGMENT characters. */
function secretLeaksIn(text: string, secrets: Record<string, string>): string[] {
  const leaks: string[] = [];
  for (const [name, value] of Object.entries(secrets)) {
    const lines = value.split('\n');
    lines.forEach((line, i) => {
      const pieces = Array.from({ length: line.length - FRAGMENT + 1 }, (_, j) => line.slice(j, j + FRAGMENT));
      const found = pieces.filter((piece) => text.includes(piece));
      if (found.length > 0) {
        leaks.push(
          `${name}${lines.length > 1 ? ` line ${i + 1}` : ''}: ${text.includes(line) ? 'whole' : `${found.length} of its ${pieces.length} runs of ${FRAGMENT} characters, e.g. ${found[0]}`}`,
        );
      }
    });
  }
  return leaks;
}

/**
 * Every output of a pipeline: service log lines, events and rejected reports, logs.* batches, both streams read back,
 * `brain logs` of each run, `brain runs` and /metrics. Each comes with a text it must hold, so the search is not vacuous.
 */
async function everyOutput(p: Pipeline, runIds: readonly string[], logged: string): Promise<[string, string, string][]> {
  const cli = async (...args: string[]) => {
    const { stdout, stderr } = await run(process.execPath, [BRAIN, ...args], {
      cwd: p.dirs.root,
      env: { ...process.env, NATS_URL: p.nats.url, NO_COLOR: '1' },
      timeout: 30_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    return `${stdout}\n${stderr}`;
  };
  const last = runIds[runIds.length - 1] ?? '';
  return [
    ['service log lines', p.logLines.join('\n'), last],
    ['events and rejected reports', JSON.stringify(p.events), last],
    ['logs.* batches', JSON.stringify(p.logBatches), logged],
    ['the BRAIN_EVENTS stream', await storedText(p.client, EVENTS_STREAM), last],
    ['the BRAIN_LOGS stream', await storedText(p.client, LOGS_STREAM), logged],
    ...(await Promise.all(runIds.map(async (runId): Promise<[string, string, string]> => [`brain logs ${runId}`, await cli('logs', runId), logged]))),
    ['brain runs', await cli('runs', '--limit', '5'), last],
    ['/metrics', await (await fetch(`http://127.0.0.1:${p.running?.healthPort}/metrics`)).text(), 'brain_container_starts_total'],
  ];
}

async function checkNoSecretIn(t: tap.Test, p: Pipeline, runIds: readonly string[], secrets: Record<string, string>, logged: string): Promise<void> {
  for (const [where, text, expected] of await everyOutput(p, runIds, logged)) {
    t.ok(text.includes(expected), `${where} holds the runs' output (contains ${JSON.stringify(expected.slice(0, 20))})`);
    t.same(secretLeaksIn(text, secrets), [], `no secret, nor ${FRAGMENT} characters of one, in ${where}`);
  }
}

t.test('13. env-file secrets appear in no log, event, stream, `brain` output or metric', async (t) => {
  const secrets = { transform: newSecret(), 'load-processed': newSecret(), 'load-viz': newSecret(), 'model-trigger': newSecret(), train: newSecret() };
  const echoing = (key: string, stage: keyof typeof secrets, extra = '') => ({ [key]: secrets[stage], SCRIPT: `echo ${stage} uses $${key}; echo auth $${key} >&2${extra}` });
  const p = await Pipeline.start({
    envFiles: {
      transform: { NEW_DATA: '1', API_TOKEN: secrets.transform },
      loadProcessed: { TARGET: 'processed', ...echoing('DVC_KEY', 'load-processed') },
      loadViz: { TARGET: 'viz', ...echoing('DVC_KEY', 'load-viz') },
      modelTrigger: echoing('GATE_KEY', 'model-trigger', '; echo File counts differ between the dataset commit and master.'),
      train: echoing('TRAIN_KEY', 'train'),
    },
  });
  const chain = uid();
  const failing = uid();
  t.teardown(async () => {
    await p.close();
    await removeContainersOf([chain, failing]);
  });

  await p.publish('transform.trigger', { runId: chain, reason: 'test' });
  t.equal((await p.waitForRunEnd(chain)).data.outcome, 'trained', 'the chain ran every stage');
  writeFileSync(join(p.dirs.env, ENV_FILES.transform), `API_TOKEN='${secrets.transform}'\nSCRIPT='echo failing with $API_TOKEN; echo $API_TOKEN >&2; exit 3'\n`);
  await p.publish('transform.trigger', { runId: failing, reason: 'test' });
  t.equal((await p.waitForRunEnd(failing)).data.outcome, 'failed', 'the second run’s transform failed');

  // The secrets did reach the containers, which printed them: the masked lines prove the search is not vacuous.
  for (const stage of STAGES)
    t.ok(
      p.logLinesOf(chain, stage).some((l) => l.includes('****')),
      `${stage} printed its secret, masked in the forwarded line`,
    );
  const failed = p.logBatches.filter((b) => b.data.runId === failing);
  for (const stream of ['stdout', 'stderr']) {
    t.ok(
      failed.some((b) => b.data.stream === stream && (b.data.lines as string[]).some((l) => l.includes('****'))),
      `the failing stage's ${stream} line is masked`,
    );
  }
  await checkNoSecretIn(t, p, [chain, failing], secrets, '****');
});

t.test('13. a secret is masked inside a line longer than the 16 KiB cut, and in each line of a multi-line value', async (t) => {
  const long = newSecret();
  const pem = [newSecret(), newSecret()];
  // The line splitter cuts a line still growing past 16 KiB into 16 KiB pieces: this secret spans the cut at 3 × 16 KiB.
  const script = `printf %0${3 * 16384 - 10}d 0 | tr 0 x; echo "$LONG_KEY$(printf %0200000d 0 | tr 0 y)"; echo "$PEM"`;
  // A multi-line value (a PEM key, a JSON credential) is as much a secret line by line.
  const envFile = { LONG_KEY: long, PEM: pem.join('\n'), SCRIPT: script };
  const p = await Pipeline.start({ services: ['transformer'], envFiles: { transform: envFile } });
  const runId = uid();
  t.teardown(async () => {
    await p.close();
    await removeContainersOf([runId]);
  });
  await p.publish('transform.trigger', { runId, reason: 'test' });
  t.equal((await p.waitForRunEnd(runId)).data.outcome, 'no-new-data', 'the run ended');
  t.ok(
    p.logLinesOf(runId, 'transform').some((l) => l.startsWith('yyyy')),
    'the long line was forwarded, in pieces',
  );
  await checkNoSecretIn(t, p, [runId], { LONG_KEY: long, PEM: envFile.PEM }, 'yyyyyyyy');
});
