import t from 'tap';
import { Writable } from 'node:stream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { createEventBus } from '../shared/bus';
import { createLogger } from '../shared/logger';
import { openSchedule } from '../shared/schedule';
import { ensureTopology, loadConfig, runServices } from '../services/composition-root';
import { createScheduler } from '../services/scheduler/service';
import { createWeb, type Web } from '../services/web/service';
import { startNatsServer, type NatsServer } from '../kit/nats-server';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A scheduler replica through the composition root, as `brain service scheduler` runs it: its log lines go to `lines`. */
async function replica(url: string, name: string, lines: string[]): Promise<{ stop(): Promise<void> }> {
  const config = loadConfig({ NATS_URL: url, TRANSFORM_SCHEDULE: '* * * * * *', LOG_LEVEL: 'info', HEALTH_PORT: '0', HEALTH_HOST: '127.0.0.1' }, ['scheduler']);
  const sink = new Writable({
    write: (c: Buffer, _e, cb) => (
      lines.push(
        ...c
          .toString()
          .split('\n')
          .filter((l) => l !== '')
          .map((l) => `${name} ${l}`),
      ),
      cb()
    ),
  });
  return runServices(['scheduler'], config, { logDestination: sink });
}

const webOn = async (url: string) => {
  const web = createWeb({
    connect: ({ name }) => connect({ servers: url, name, maxReconnectAttempts: -1, reconnectTimeWait: 200 }),
    logger: createLogger('web', 'silent'),
    config: { host: '127.0.0.1', port: 0, transformSchedule: '* * * * * *' },
  });
  await web.start();
  return web;
};

const post = async (web: Web, path: string, body?: unknown) => {
  const res = await fetch(`http://127.0.0.1:${web.port}${path}`, {
    method: 'POST',
    ...(body !== undefined ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } } : {}),
  });
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a JSON response of any shape; the tests assert on its fields
  return { status: res.status, json: (await res.json()) as any };
};

let nats: NatsServer;
let observer: NatsConnection;
/** transform.trigger bodies as published (both replicas' publishes: the stream dedups them by message id). */
const triggers: { runId: string; reason?: string }[] = [];

t.before(async () => {
  nats = await startNatsServer();
  const admin = await connect({ servers: nats.url, name: 'test-admin' });
  await ensureTopology(admin, { lockTtlMs: 90_000, ackWaitMs: 30_000 });
  await admin.close();
  observer = await connect({ servers: nats.url, name: 'test-observer', maxReconnectAttempts: -1, reconnectTimeWait: 200 });
  observer.subscribe('transform.trigger', { callback: (_e, m) => void triggers.push(m.json()) });
});

t.teardown(async () => {
  await observer?.close();
  await nats?.stop();
  await nats?.cleanup();
});

const scheduled = () => new Set(triggers.filter((b) => b.reason === 'schedule').map((b) => b.runId));

t.test('a pause set through the web is obeyed by two scheduler replicas, survives a restart of NATS and of every service, and lets hand triggers through', async (t) => {
  const lines: string[] = [];
  let web = await webOn(nats.url);
  let replicas = [await replica(nats.url, 'scheduler-a', lines), await replica(nats.url, 'scheduler-b', lines)];
  await sleep(2500);
  t.ok(scheduled().size >= 1, `${scheduled().size} ticks while running`);

  t.equal((await post(web, '/api/schedule/pause')).json.paused, true);
  await sleep(1100); // a tick being published when the pause landed may still go out
  const before = scheduled().size;
  await sleep(3000);
  t.equal(scheduled().size, before, 'no scheduled trigger from either replica while paused');
  const skipped = lines.filter((l) => l.includes('the schedule is paused'));
  t.ok(skipped.some((l) => l.startsWith('scheduler-a ')) && skipped.some((l) => l.startsWith('scheduler-b ')), 'both replicas skipped ticks');

  const hand = await post(web, '/api/runs', { pipeline: 'transform', reason: 'by hand while paused' });
  t.equal(hand.status, 202, 'a hand trigger goes through');
  await sleep(200);
  t.ok(
    triggers.some((b) => b.runId === hand.json.runId),
    'and is published',
  );

  // Everything restarts: the replicas, the web service and nats-server (same store).
  await Promise.all(replicas.map((r) => r.stop()));
  await web.stop();
  await nats.stop();
  await nats.restart();
  web = await webOn(nats.url);
  replicas = [await replica(nats.url, 'scheduler-c', lines), await replica(nats.url, 'scheduler-d', lines)];
  const shown = await fetch(`http://127.0.0.1:${web.port}/api/schedule`).then((r) => r.json() as Promise<{ paused: boolean }>);
  t.equal(shown.paused, true, 'still paused after the restart');
  const afterRestart = scheduled().size;
  await sleep(2500);
  t.equal(scheduled().size, afterRestart, 'the new replicas obey it');

  t.equal((await post(web, '/api/schedule/resume')).json.paused, false);
  await sleep(2500);
  t.ok(scheduled().size > afterRestart, 'ticks again once resumed');
  await Promise.all(replicas.map((r) => r.stop()));
  await web.stop();
});

t.test('a replica that cannot read the pause (its bucket deleted under it) skips its tick rather than override a pause', async (t) => {
  const lines: string[] = [];
  const config = loadConfig({ NATS_URL: nats.url, TRANSFORM_SCHEDULE: '* * * * * *' }, ['scheduler']);
  const nc = await connect({ servers: nats.url, name: 'scheduler-blind' });
  const logger = createLogger('scheduler-blind', 'info', new Writable({ write: (c: Buffer, _e, cb) => (lines.push(c.toString()), cb()) }));
  const schedule = await openSchedule(nc);
  await (await jetstreamManager(nc)).streams.delete('KV_schedule');
  const service = createScheduler({ config, bus: createEventBus({ nc, logger, ackWaitMs: 30_000 }), logger, schedule });
  const count = triggers.length;
  await service.start();
  await sleep(2200);
  await service.stop();
  await nc.close();
  t.equal(triggers.length, count, 'nothing published');
  t.ok(
    lines.some((l) => l.includes('cannot read whether the schedule is paused')),
    'the skip is logged',
  );
});
