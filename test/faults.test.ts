import t from 'tap';
import Docker from 'dockerode';
import { jetstream } from '@nats-io/jetstream';
import { LABELS, containerName } from '../shared/docker';
import { EVENTS_STREAM } from '../shared/nats';
import { TEST_IMAGES } from '../kit/stand-ins';
import { Pipeline, docker, uid, waitForContainer } from '../kit/pipeline';
import { startSocketProxy } from './helpers/socket-proxy';
import { spawnService } from '../kit/service-process';

// The subtests share nothing (each has its own nats-server, services, run dirs and run ids): run a few at once.
t.jobs = 3;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// First, as the longest (a 150 MB log; 15 runs one after another): the shorter tests run beside them.
t.test('a long-running service: 15 runs add no lasting abort listener (no MaxListenersExceededWarning)', async (t) => {
  const warnings: Error[] = [];
  const onWarning = (w: Error) => void warnings.push(w);
  process.on('warning', onWarning);
  t.teardown(() => void process.off('warning', onWarning));
  const p = await Pipeline.start({ envFiles: { transform: { NEW_DATA: '0' } }, services: ['transformer'] });
  t.teardown(() => p.close());
  for (let i = 0; i < 15; i++) {
    const runId = uid();
    await p.publish('transform.trigger', { runId });
    t.equal((await p.waitForRunEnd(runId, 30_000)).data.outcome, 'no-new-data');
  }
  await sleep(200);
  t.same(
    warnings.filter((w) => w.name === 'MaxListenersExceededWarning').map((w) => w.message),
    [],
  );
});

t.test('a container printing hundreds of megabytes: found, forwarded, and the service memory stays bounded', async (t) => {
  const megabytes = Number(process.env.BRAIN_FLOOD_MB ?? 150);
  const p = await Pipeline.start({
    recordLogs: false,
    envFiles: { transform: { SCRIPT: `yes "flood line 0123456789 abcdefghijklmnopqrstuvwxyz" | head -c ${megabytes}m; echo "New data was transformed"` } },
    services: ['loader', 'model-gate', 'trainer'],
  });
  t.teardown(() => p.close());
  const transformer = spawnService(['service', 'transformer'], { ...p.env, HEALTH_PORT: '0', LOG_LEVEL: 'info' });
  t.teardown(async () => {
    transformer.signal('SIGTERM');
    await transformer.exited;
  });
  await transformer.waitForLog(/services started/);
  await sleep(500);
  const idle = transformer.rss();
  const runId = uid();
  const started = Date.now();
  await p.publish('transform.trigger', { runId });
  const done = await p.waitForSubject('transform.done', runId, 240_000);
  const peak = transformer.peakRss();
  t.equal(done.data.outcome, 'new-data', 'the phrase after the flood was found');
  t.ok(
    peak - idle < 96 * 1024 * 1024,
    `peak RSS ${Math.round(peak / 2 ** 20)} MB vs idle ${Math.round(idle / 2 ** 20)} MB for ${megabytes} MB of log in ${Date.now() - started} ms`,
  );
  await p.waitForRunEnd(runId, 60_000);
});

t.test('50 concurrent triggers: one run, one container per stage, the others busy', async (t) => {
  const p = await Pipeline.start({ envFiles: { transform: { NEW_DATA: '1', SLEEP: '1' } } });
  t.teardown(() => p.close());
  const runIds = Array.from({ length: 50 }, () => uid());
  await Promise.all(runIds.map((runId) => p.publish('transform.trigger', { runId })));
  const ends = await Promise.all(runIds.map((runId) => p.waitForRunEnd(runId, 60_000)));
  const winners = ends.filter((e) => e.data.outcome !== 'busy');
  t.equal(winners.length, 1, 'one run went ahead');
  t.equal(winners[0]?.data.outcome, 'trained');
  t.equal(ends.filter((e) => e.subject === 'transform.done' && e.data.outcome === 'busy').length, 49, '49 ended busy');
  const winner = String(winners[0]?.data.runId);
  t.same(p.starts('transform'), [winner], 'one transform container');
  t.same(p.starts('load').sort(), [`${winner} processed`, `${winner} viz`], 'one container per load');
  t.same(p.starts('train'), [winner], 'one training container');
  for (const runId of runIds) t.equal(p.eventsOf(runId).filter((e) => e.subject.endsWith('.done') && e.data.outcome !== 'new-data' && e.subject !== 'load.done').length, 1);
});

t.test('kill -9 and restart of nats-server mid-run: nothing acknowledged is lost, the run completes', async (t) => {
  const p = await Pipeline.start({ envFiles: { transform: { NEW_DATA: '1', SLEEP: '3' } } });
  t.teardown(() => p.close());
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  await waitForContainer(runId, 'transform');
  await p.nats.stop('SIGKILL');
  await sleep(1000);
  await p.nats.restart();
  const end = await p.waitForRunEnd(runId, 60_000);
  t.equal(end.data.outcome, 'trained');
  // The stream is the record: every event of the run, once, in order.
  const js = jetstream(p.client);
  const consumer = await js.consumers.get(EVENTS_STREAM);
  const stored: string[] = [];
  const messages = await consumer.fetch({ max_messages: 100, expires: 2000 });
  for await (const m of messages) {
    const data = m.json<{ runId?: string; outcome?: string }>();
    if (data.runId === runId) stored.push(data.outcome !== undefined ? `${m.subject} ${data.outcome}` : m.subject);
  }
  t.same(stored, ['transform.trigger', 'transform.done new-data', 'data.new', 'load.done loaded', 'model.trigger', 'model.mismatch', 'model.done trained']);
  t.same(p.starts('transform'), [runId]);
});

t.test('a stage far longer than the ack wait is not redelivered', async (t) => {
  const p = await Pipeline.start({ env: { ACK_WAIT: '1' }, envFiles: { transform: { NEW_DATA: '1', SLEEP: '5' } } });
  t.teardown(() => p.close());
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  t.equal((await p.waitForRunEnd(runId, 40_000)).data.outcome, 'trained');
  await sleep(1500);
  t.same(p.starts('transform'), [runId], 'one container');
  t.equal(p.eventsOf(runId).filter((e) => e.subject === 'transform.done').length, 1, 'one transform.done');
});

t.test('Docker going away mid-stage: the run keeps its lock and its containers, a second trigger is busy, and the run completes once Docker is back', async (t) => {
  const proxy = await startSocketProxy();
  t.teardown(() => proxy.close());
  // LOCK_TTL and ACK_WAIT equal, as with the defaults (30 s each), only shorter.
  const p = await Pipeline.start({
    env: { ACK_WAIT: '3', LOCK_TTL: '3' },
    // One load exits while Docker is away, the other still runs when it is back.
    envFiles: { transform: { NEW_DATA: '1' }, loadProcessed: { TARGET: 'processed', SLEEP: '2' }, loadViz: { TARGET: 'viz', SLEEP: '9' } },
    docker: new Docker({ socketPath: proxy.path }),
  });
  t.teardown(() => p.close());
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  await waitForContainer(runId, 'load-processed', 30_000);
  await waitForContainer(runId, 'load-viz', 30_000);
  await proxy.cut();
  const second = uid();
  await p.publish('transform.trigger', { runId: second });
  const busy = await p.waitForRunEnd(second, 20_000);
  t.equal(busy.subject, 'transform.done');
  t.equal(busy.data.outcome, 'busy', 'the run still holds the transform lock while Docker is away');
  await sleep(5000); // several lock TTLs and ack waits
  t.same(p.trail(runId), ['transform.trigger', 'transform.done new-data', 'data.new'], 'no outcome for the loads while Docker is away');
  const exited = await docker.listContainers({ all: true, filters: { label: [`${LABELS.runId}=${runId}`, `${LABELS.stage}=load-processed`], status: ['exited'] } });
  t.equal(exited.length, 1, 'one load exited meanwhile');
  t.equal((await docker.listContainers({ filters: { label: [`${LABELS.runId}=${runId}`, `${LABELS.stage}=load-viz`] } })).length, 1, 'the other still runs');
  await proxy.restore();
  const end = await p.waitForRunEnd(runId, 60_000);
  t.equal(end.data.outcome, 'trained', 'the run completes with its true outcome');
  t.same(p.trail(runId), ['transform.trigger', 'transform.done new-data', 'data.new', 'load.done loaded', 'model.trigger', 'model.mismatch', 'model.done trained']);
  t.same(p.starts('transform'), [runId], 'one transform container; none for the busy trigger');
  t.same(p.starts('load').sort(), [`${runId} processed`, `${runId} viz`], 'one container per load');
  t.same(p.starts('train'), [runId], 'one training container');
  t.ok(
    p.logLinesOf(runId, 'load-viz').some((l) => l.startsWith('pushed')),
    'the output after the outage was read',
  );
  t.same(await p.leftBehind(runId), []);
  t.same(await p.containers(second), []);
});

t.test('the attach stream ends before the container exits: the output after it is still scanned (new data, each line once)', async (t) => {
  const proxy = await startSocketProxy();
  t.teardown(() => proxy.close());
  const script = 'echo starting; sleep 3; echo "rows" > /app/processed/$BRAIN_RUN_ID.csv; echo "New data was transformed"; echo done';
  const p = await Pipeline.start({ envFiles: { transform: { SCRIPT: script } }, docker: new Docker({ socketPath: proxy.path }) });
  t.teardown(() => p.close());
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  const deadline = Date.now() + 30_000;
  while (!p.logLinesOf(runId, 'transform').includes('starting') && Date.now() < deadline) await sleep(25);
  t.equal(proxy.endAttach(), 1, 'the transform’s attach connection was closed');
  const done = await p.waitForSubject('transform.done', runId, 30_000);
  t.equal(done.data.outcome, 'new-data', 'the phrase printed after the attach stream ended was found');
  t.same(p.logLinesOf(runId, 'transform'), ['starting', 'New data was transformed', 'done'], 'each line once');
  t.equal((await p.waitForRunEnd(runId, 60_000)).data.outcome, 'trained');
});

t.test('a container killed for memory is recorded as exit 137 and OOM', async (t) => {
  const p = await Pipeline.start({
    env: { TRANSFORM_MEMORY: '16m' },
    // tail keeps the last 150 MB of an endless stream in memory; exec makes it the container's main process.
    envFiles: { transform: { SCRIPT: 'echo start; exec tail -c 150m /dev/zero' } },
  });
  t.teardown(() => p.close());
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  const end = await p.waitForRunEnd(runId, 30_000);
  t.equal(end.data.outcome, 'failed');
  t.equal(end.data.exitCode, 137);
  t.match(end.data.error, /out of memory/);
});

t.test('labelled containers orphaned by an earlier crash are removed at start-up', async (t) => {
  const p = await Pipeline.start({ env: { ACK_WAIT: '1', LOCK_TTL: '2' }, services: ['transformer'] });
  t.teardown(() => p.close());
  const instance = p.running?.instance ?? '';
  await p.stopServices();
  const foreign = uid('other');
  const running = uid('orphan');
  const exited = uid('orphan');
  for (const [runId, script, owner] of [
    [running, 'sleep 120', instance],
    [exited, 'true', instance],
    [foreign, 'sleep 120', 'another-deployment'],
  ] as const) {
    const container = await docker.createContainer({
      name: containerName('transform', runId, owner),
      Image: TEST_IMAGES.transform,
      Env: [`SCRIPT=${script}`],
      Labels: { [LABELS.managed]: 'true', [LABELS.stage]: 'transform', [LABELS.runId]: runId, [LABELS.service]: 'transformer', [LABELS.instance]: owner },
      HostConfig: { Mounts: [{ Type: 'bind', Source: p.dirs.aws, Target: '/app/.aws' }] },
    });
    await container.start();
  }
  t.teardown(() => docker.getContainer(containerName('transform', foreign, 'another-deployment')).remove({ force: true }));
  t.equal((await p.containers(running)).length, 1);
  await p.startServices();
  const deadline = Date.now() + 20_000;
  while ((await p.containers(running)).length + (await p.containers(exited)).length > 0 && Date.now() < deadline) await sleep(250);
  t.same(await p.containers(running), [], 'the running orphan was removed');
  t.same(await p.containers(exited), [], 'the exited orphan was removed');
  t.ok(
    p.logLines.some((l) => l.includes('removing orphaned container')),
    'and it was logged',
  );
  t.equal((await p.containers(foreign)).length, 1, 'another deployment’s container on the same engine is left alone');
});
