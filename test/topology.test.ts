/**
 * The NATS topology converges to the configuration or the service refuses to start, against a real nats-server:
 * without auth a service converges it itself; with the roles of deploy/nats/auth.conf only `brain setup` as
 * `admin` may change it, and a service whose settings differ exits 2 naming the setting.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { Writable } from 'node:stream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { AckPolicy, DeliverPolicy, JetStreamApiCodes, JetStreamApiError, StorageType, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { CONSUMERS, type ServiceName } from '../services';
import { EVENTS_STREAM, LOCKS_BUCKET, RUNS_BUCKET, RUNS_MAX_AGE_MS, TopologyError, bucketStream, inspectTopology, lockReader, openRuns } from '../shared/nats';
import { ensureTopology, loadConfig, runServices, wantedTopology } from '../services/composition-root';
import { standInStageEnv } from '../kit/stand-ins';
import { startNatsServer } from '../kit/nats-server';
import { startAuthNatsServer, type AuthNatsServer, type NatsRole } from './helpers/nats-auth';
import { makeRunDirs } from '../kit/run-dirs';

// The tests share nothing (each its own nats-server, run dirs and brain processes): run a few at once.
t.jobs = 3;

const BRAIN = resolve(__dirname, '../../bin/brain.js');
const S = 1_000_000_000; // nanoseconds per second

/** Runs `brain …` in an empty directory (no .env); with `waitFor`, sends SIGTERM once stdout matches it. */
function brain(args: string[], env: Record<string, string>, opts: { cwd: string; waitFor?: RegExp }) {
  return new Promise<{ code: number | null; stdout: string; stderr: string; matched: boolean }>((done) => {
    const child = spawn(process.execPath, [BRAIN, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, cwd: opts.cwd });
    let stdout = '';
    let stderr = '';
    let matched = false;
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (!matched && opts.waitFor?.test(stdout) === true) {
        matched = true;
        child.kill('SIGTERM');
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr, matched });
    });
  });
}

async function streamConfig(nc: NatsConnection, stream: string) {
  return (await (await jetstreamManager(nc)).streams.info(stream)).config;
}

async function ackWait(nc: NatsConnection, durable: string): Promise<number> {
  return (await (await jetstreamManager(nc)).consumers.info(EVENTS_STREAM, durable)).config.ack_wait ?? 0;
}

t.test('a changed LOCK_TTL and ACK_WAIT reach the server at the next start (a connection without auth converges them)', async (t) => {
  const nats = await startNatsServer();
  const dirs = makeRunDirs('brain-topology-');
  const nc = await connect({ servers: nats.url, name: 'topology-observer' });
  t.teardown(async () => {
    await nc.close();
    await nats.stop();
    await nats.cleanup();
    rmSync(dirs.root, { recursive: true, force: true });
  });
  const logs: string[] = [];
  const sink = new Writable({
    write: (chunk: Buffer, _enc, cb) => {
      logs.push(
        ...chunk
          .toString()
          .split('\n')
          .filter((l) => l.trim() !== ''),
      );
      cb();
    },
  });
  const names: ServiceName[] = ['transformer', 'loader'];
  const start = async (lockTtl: string, ackWaitS: string) => {
    const env = { NATS_URL: nats.url, LOCK_TTL: lockTtl, ACK_WAIT: ackWaitS, HEALTH_PORT: '0', HEALTH_HOST: '127.0.0.1', BRAIN_ENV_DIR: dirs.env, ...standInStageEnv(dirs) };
    const running = await runServices(names, loadConfig(env, names), { logDestination: sink });
    await running.stop();
  };

  await start('30', '30');
  t.equal((await streamConfig(nc, bucketStream(LOCKS_BUCKET))).max_age, 30 * S, 'LOCK_TTL=30: the locks bucket keeps leases 30 s');
  t.equal(await ackWait(nc, CONSUMERS.transformer.durable), 30 * S, 'ACK_WAIT=30: the transformer consumer redelivers after 30 s');

  await start('60', '45');
  const locks = await streamConfig(nc, bucketStream(LOCKS_BUCKET));
  t.equal(locks.max_age, 60 * S, 'restarted with LOCK_TTL=60: the locks bucket on the server keeps leases 60 s');
  t.ok(locks.duplicate_window <= locks.max_age, 'its duplicate window within the max age');
  t.equal(await ackWait(nc, CONSUMERS.transformer.durable), 45 * S, 'restarted with ACK_WAIT=45: the transformer consumer follows');
  t.equal(await ackWait(nc, CONSUMERS.loader.durable), 45 * S, 'and the loader consumer');
  const absent = await ackWait(nc, CONSUMERS.trainer.durable).then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(absent instanceof JetStreamApiError && absent.code === JetStreamApiCodes.ConsumerNotFound, 'the consumer of a service not started here is not made by these services');
  t.ok(
    logs.some((l) => l.includes('NATS topology converged') && l.includes('max_age 30 s → 60 s (LOCK_TTL)')),
    'the service logs what it changed',
  );

  // The fault itself: a lease must outlive the old max age once LOCK_TTL is raised.
  await start('1', '30');
  const kv = await new Kvm(nc).open(LOCKS_BUCKET);
  await kv.put('probe', 'held');
  await new Promise((r) => setTimeout(r, 2500));
  t.equal(await kv.get('probe'), null, 'LOCK_TTL=1: a lease not refreshed is gone after 2.5 s (the expiry is real)');
  await start('6', '30');
  await kv.put('probe', 'held');
  await new Promise((r) => setTimeout(r, 2500));
  t.equal((await kv.get('probe'))?.string(), 'held', 'restarted with LOCK_TTL=6: the same lease is still there after 2.5 s');
});

t.test('with the roles of auth.conf: a service whose settings differ refuses to start naming the setting; `brain setup` as admin fixes it', async (t) => {
  const server: AuthNatsServer = await startAuthNatsServer();
  const dirs = makeRunDirs('brain-topology-auth-');
  const observer = await server.connectAs('monitor', 'topology-observer');
  t.teardown(async () => {
    await observer.close();
    await server.stop();
    server.cleanup();
    rmSync(dirs.root, { recursive: true, force: true });
  });
  const as = (role: NatsRole, extra: Record<string, string> = {}) => ({
    NATS_URL: server.url,
    NATS_USER: role,
    NATS_PASS: server.passwords[role],
    HEALTH_PORT: '0',
    HEALTH_HOST: '127.0.0.1',
    BRAIN_ENV_DIR: dirs.env,
    ...standInStageEnv(dirs),
    TRANSFORM_SCHEDULE: '0 0 1 1 *',
    ...extra,
  });
  const cwd = dirs.root;
  const violations = () => server.log.filter((l) => /Violation/.test(l)).length;

  const before = await brain(['service', 'scheduler'], as('scheduler'), { cwd });
  t.equal(before.code, 2, 'before any setup, the scheduler refuses to start: exit 2');
  t.match(before.stderr, /the BRAIN_EVENTS stream does not exist/, 'naming what is missing');
  t.match(before.stderr, /NATS user "scheduler" may not create or update the NATS topology; run `brain setup`/, 'and saying to run `brain setup`');

  const refusedSetup = await brain(['setup'], as('transformer'), { cwd });
  t.equal(refusedSetup.code, 2, '`brain setup` as a service user: exit 2');
  t.match(refusedSetup.stderr, /NATS user "transformer" may not read the loader consumer/, 'it may not even read the topology of other roles');

  const setup = await brain(['setup'], as('admin', { LOCK_TTL: '30', ACK_WAIT: '30' }), { cwd });
  t.equal(setup.code, 0, '`brain setup` as admin: exit 0', { stderr: setup.stderr });
  for (const part of ['the BRAIN_EVENTS stream', 'the BRAIN_LOGS stream', 'the locks bucket (KV_locks)', 'the runs bucket (KV_runs)', 'the transformer consumer']) {
    t.match(setup.stdout, `created ${part}`, `it prints: created ${part}`);
  }
  const again = await brain(['setup'], as('admin', { LOCK_TTL: '30', ACK_WAIT: '30' }), { cwd });
  t.same([again.code, again.stdout.trim()], [0, 'the NATS topology already matches the configuration'], 'run again, it changes nothing');

  const v0 = violations();
  const refusedTtl = await brain(['service', 'scheduler'], as('scheduler', { LOCK_TTL: '60' }), { cwd });
  t.equal(refusedTtl.code, 2, 'the scheduler with LOCK_TTL=60 against a 30 s bucket refuses to start: exit 2');
  t.match(refusedTtl.stderr, /LOCK_TTL=60 s but the locks bucket \(KV_locks\) keeps leases 30 s/, 'naming LOCK_TTL and both values');
  t.match(refusedTtl.stderr, /run `brain setup` with the admin NATS user/, 'and the fix');
  t.notMatch(refusedTtl.stdout, /services started/, 'nothing started');
  const refusedAck = await brain(['service', 'transformer'], as('transformer', { ACK_WAIT: '45' }), { cwd });
  t.equal(refusedAck.code, 2, 'the transformer with ACK_WAIT=45 against a 30 s consumer: exit 2');
  t.match(refusedAck.stderr, /ACK_WAIT=45 s but the transformer consumer \(on BRAIN_EVENTS\) redelivers after 30 s/, 'naming ACK_WAIT');
  t.equal((await streamConfig(observer, bucketStream(LOCKS_BUCKET))).max_age, 30 * S, 'the bucket is unchanged: the services cannot change it');
  t.ok(violations() > v0, 'their attempts were refused by nats-server (and logged)');

  const fix = await brain(['setup'], as('admin', { LOCK_TTL: '60', ACK_WAIT: '45' }), { cwd });
  t.equal(fix.code, 0, '`brain setup` as admin with LOCK_TTL=60 ACK_WAIT=45: exit 0', { stderr: fix.stderr });
  t.match(fix.stdout, 'updated the locks bucket (KV_locks): max_age 30 s → 60 s (LOCK_TTL)', 'it prints the bucket update');
  t.match(fix.stdout, 'updated the transformer consumer (on BRAIN_EVENTS): ack_wait 30 s → 45 s (ACK_WAIT)', 'and each consumer update');
  t.equal((await streamConfig(observer, bucketStream(LOCKS_BUCKET))).max_age, 60 * S, 'the bucket keeps leases 60 s');

  const v1 = violations();
  const started = await brain(['service', 'scheduler'], as('scheduler', { LOCK_TTL: '60', ACK_WAIT: '45' }), { cwd, waitFor: /services started/ });
  t.ok(started.matched, 'now the scheduler starts', { stderr: started.stderr });
  t.equal(started.code, 0, 'and stops cleanly on SIGTERM');
  const transformer = await brain(['service', 'transformer'], as('transformer', { LOCK_TTL: '60', ACK_WAIT: '45' }), { cwd, waitFor: /services started/ });
  t.ok(transformer.matched, 'and the transformer', { stderr: transformer.stderr });
  t.equal(violations(), v1, 'a start that finds the topology as configured only reads it: no permission violation');
});

t.test('`brain setup` exits 2 on a configuration error and on a setting the server cannot take, creating nothing', async (t) => {
  const nats = await startNatsServer();
  const dirs = makeRunDirs('brain-topology-setup-');
  const nc = await connect({ servers: nats.url, name: 'topology-observer' });
  t.teardown(async () => {
    await nc.close();
    await nats.stop();
    await nats.cleanup();
    rmSync(dirs.root, { recursive: true, force: true });
  });
  const bad = await brain(['setup'], { NATS_URL: nats.url, LOCK_TTL: 'soon' }, { cwd: dirs.root });
  t.equal(bad.code, 2, 'LOCK_TTL=soon: exit 2');
  t.match(bad.stderr, /LOCK_TTL: must be a number of seconds/, 'naming the setting');
  const replicas = await brain(['setup'], { NATS_URL: nats.url, NATS_REPLICAS: '3' }, { cwd: dirs.root });
  t.equal(replicas.code, 2, 'NATS_REPLICAS=3 on a single server: exit 2');
  t.match(replicas.stderr, /NATS_REPLICAS=3 but the NATS server .* is not part of a cluster/, 'naming NATS_REPLICAS');
  const streams: string[] = [];
  for await (const name of (await jetstreamManager(nc)).streams.names()) streams.push(name);
  t.same(streams, [], 'nothing was created');
  const ok = await brain(['setup'], { NATS_URL: nats.url }, { cwd: dirs.root });
  t.equal(ok.code, 0, 'without auth and with the defaults (LOCK_TTL 90 s, ACK_WAIT 30 s), setup creates it all', { stderr: ok.stderr });
  const states = await inspectTopology(nc, wantedTopology({ lockTtlMs: 90_000, ackWaitMs: 30_000 }));
  t.same(
    states.filter((s) => s.missing || s.differences.length > 0),
    [],
    'every part is there as declared',
  );
});

t.test('what cannot change in place is refused, naming the part; concurrent starts on an empty server all converge', async (t) => {
  const nats = await startNatsServer();
  const conns = await Promise.all([0, 1, 2].map((i) => connect({ servers: nats.url, name: `topology-${i}` })));
  t.teardown(async () => {
    await Promise.all(conns.map((c) => c.close()));
    await nats.stop();
    await nats.cleanup();
  });
  const [a] = conns as [NatsConnection, ...NatsConnection[]];
  const opts = { lockTtlMs: 30_000, ackWaitMs: 30_000 };
  const results = await Promise.allSettled(conns.map((nc) => ensureTopology(nc, opts)));
  t.same(
    results.map((r) => r.status),
    ['fulfilled', 'fulfilled', 'fulfilled'],
    'three processes creating the topology at once all succeed',
  );
  t.same(
    (await inspectTopology(a, wantedTopology(opts))).filter((s) => s.missing || s.differences.length > 0),
    [],
    'and it is as declared',
  );

  const jsm = await jetstreamManager(a);
  await jsm.consumers.delete(EVENTS_STREAM, CONSUMERS.trainer.durable);
  await jsm.consumers.add(EVENTS_STREAM, {
    durable_name: CONSUMERS.trainer.durable,
    filter_subject: 'model.done',
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.New,
  });
  const err = await ensureTopology(a, opts).then(
    () => null,
    (e: unknown) => e,
  );
  t.type(err, TopologyError, 'a consumer on the wrong subject is refused with a TopologyError');
  t.equal((err as TopologyError).reason, 'cannot-converge', 'it cannot converge');
  t.match(
    (err as Error).message,
    /the trainer consumer \(on BRAIN_EVENTS\) has filter_subject model\.done .*needs model\.mismatch.*cannot change in place/,
    'naming the part, the field and both values',
  );
});

t.test('the runs bucket as declared; a lock never written reads as null', async (t) => {
  const nats = await startNatsServer();
  const nc = await connect({ servers: nats.url, name: 'topology-runs' });
  t.teardown(async () => {
    await nc.close();
    await nats.stop();
    await nats.cleanup();
  });
  const missing = await openRuns(nc).then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(missing instanceof TopologyError && missing.reason === 'missing', 'opening the runs bucket before setup: a TopologyError (missing), nothing created');
  await ensureTopology(nc, { lockTtlMs: 30_000, ackWaitMs: 30_000 });
  const config = await streamConfig(nc, bucketStream(RUNS_BUCKET));
  t.same([config.max_msgs_per_subject, config.max_age, config.storage], [1, RUNS_MAX_AGE_MS * 1_000_000, StorageType.File], 'runs: history 1, entries kept 30 days, file storage');
  const runs = await openRuns(nc);
  const revision = await runs.put('r1.transform', JSON.stringify({ state: 'started' }));
  t.same([(await runs.get('r1.transform'))?.json(), (await runs.get('r1.transform'))?.revision], [{ state: 'started' }, revision], 'a record is written and read back');
  t.equal(await (await lockReader(nc)).lastMessage('never-written'), null, 'a lock key never written: null (JetStream NoMessageFound), not an error');
});
