import t from 'tap';
import { Kvm } from '@nats-io/kv';
import { Pipeline, docker, uid, waitForContainer } from '../kit/pipeline';
import { spawnService } from '../kit/service-process';
import { startNatsProxy } from './helpers/nats-proxy';

// The subtests share nothing (each has its own nats-server, services, run dirs and run ids): run a few at once.
t.jobs = 3;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('a hand-chosen run id used again is refused with a clear error, and nothing starts', async (t) => {
  const p = await Pipeline.start({ envFiles: { transform: { NEW_DATA: '1' } } });
  t.teardown(() => p.close());
  const runId = uid('hand');
  await p.publish('transform.trigger', { runId });
  t.equal((await p.waitForRunEnd(runId, 30_000)).data.outcome, 'trained');
  // Within the stream's two-minute duplicate window: the second run's data.new would have been dropped as a duplicate.
  await p.publish('transform.trigger', { runId, reason: 'again' });
  const rejected = await p.waitFor((e) => e.subject === 'rejected.transform.trigger', 20_000, 'the rejection');
  t.match(rejected.data.error, new RegExp(`run id ${runId} is already used`));
  t.match(rejected.data.preview, /again/);
  await p.publish('model.trigger', { runId });
  const rejectedModel = await p.waitFor((e) => e.subject === 'rejected.model.trigger', 20_000, 'the model rejection');
  t.match(rejectedModel.data.error, /already used/);
  await sleep(500);
  t.same(p.starts('transform'), [runId], 'one transform container');
  t.same(p.starts('train'), [runId], 'one training container');
  t.equal(p.eventsOf(runId).filter((e) => e.subject === 'model.done').length, 1, 'one model.done');
});

t.test('the run record holds each step: its trigger, containers (started, exited, removed) and its ending', async (t) => {
  const p = await Pipeline.start({ envFiles: { transform: { NEW_DATA: '1' } } });
  t.teardown(() => p.close());
  const runId = uid();
  await p.publish('transform.trigger', { runId, reason: 'record' });
  await p.waitForRunEnd(runId, 30_000);
  t.same(await p.leftBehind(runId), []);
  const kv = await new Kvm(p.client).open('runs');
  // A step is closed a moment after its event: its containers are removed once the event is stored.
  const read = async (step: string) => {
    const deadline = Date.now() + 5000;
    for (;;) {
      const record = (await kv.get(`${runId}.${step}`))?.json<Record<string, unknown>>();
      if (record?.closed === true || Date.now() > deadline) return record;
      await sleep(50);
    }
  };
  const transform = await read('transform');
  t.match(transform, { runId, step: 'transform', subject: 'transform.trigger', reason: 'record', published: 2, closed: true });
  t.match(transform?.containers, { transform: { state: 'removed', exitCode: 0, phraseFound: true } });
  t.same(
    (transform?.events as { subject: string }[]).map((e) => e.subject),
    ['transform.done', 'data.new'],
  );
  const load = await read('load');
  t.match(load?.containers, { 'load-processed': { state: 'removed', exitCode: 0 }, 'load-viz': { state: 'removed', exitCode: 0 } });
  t.match(await read('model-trigger'), { closed: true, events: [{ subject: 'model.mismatch' }] });
  t.match(await read('train'), { closed: true, events: [{ subject: 'model.done', body: { outcome: 'trained' } }] });
});

t.test('a lease in transit is kept: with the loader down longer than LOCK_TTL, a second run stays busy and the first one loads', async (t) => {
  // Default-like relation of the two settings (LOCK_TTL = 3 × ACK_WAIT, as 90 s and 30 s).
  const env = { ACK_WAIT: '2', LOCK_TTL: '6' };
  const p = await Pipeline.start({ env, envFiles: { transform: { NEW_DATA: '1' } }, services: ['transformer', 'model-gate', 'trainer'] });
  t.teardown(() => p.close());
  const startLoader = () => {
    const loader = spawnService(['service', 'loader'], { ...p.env, HEALTH_PORT: '0' });
    t.teardown(async () => {
      loader.signal('SIGTERM');
      await loader.exited;
    });
    return loader;
  };
  const first = startLoader();
  await first.waitForLog(/services started/);
  first.signal('SIGTERM');
  await first.exited;
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  await p.waitForSubject('data.new', runId, 20_000);
  await sleep(8000); // past the lease: nobody has taken it over yet
  const second = uid();
  await p.publish('transform.trigger', { runId: second });
  const busy = await p.waitForRunEnd(second, 20_000);
  t.equal(busy.data.outcome, 'busy', 'the handed-off lease did not expire while its next stage was away');
  startLoader();
  const end = await p.waitForRunEnd(runId, 30_000);
  t.equal(end.data.outcome, 'trained', 'the loader took the lease over when it came back');
  t.same(p.starts('transform'), [runId]);
});

t.test('a lease lost mid-stage stops its holder: no stale outcome, its container is stopped', async (t) => {
  const p = await Pipeline.start({ env: { ACK_WAIT: '2', LOCK_TTL: '6' }, envFiles: { transform: { NEW_DATA: '1', SLEEP: '30' } } });
  t.teardown(() => p.close());
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  await waitForContainer(runId, 'transform');
  // Someone else's run takes the lock (as after an expiry): the holder's next refresh is refused.
  const kv = await new Kvm(p.client).open('locks');
  const thief = uid('other');
  await kv.put('transform', JSON.stringify({ runId: thief, holder: 'test', stage: 'transform', acquiredAt: new Date().toISOString() }));
  const end = await p.waitForRunEnd(runId, 15_000);
  t.equal(end.data.outcome, 'failed');
  t.match(end.data.error, /lock was lost/);
  t.notOk(p.trail(runId).includes('data.new'), 'no hand-off to the loads');
  t.same(await p.leftBehind(runId), [], 'the container was stopped and removed, not left writing');
  const lock = await kv.get('transform');
  t.match(lock?.string(), new RegExp(thief), 'the new holder keeps the lock');
  await kv.delete('transform');
});

/** The transformer as a child process whose NATS traffic goes through a proxy that can drop publishes. */
async function transformerBehindProxy(t: Teardown, p: Pipeline) {
  const proxy = await startNatsProxy({ port: p.nats.port });
  t.teardown(() => proxy.close());
  const spawnTransformer = (url = proxy.url) => {
    const child = spawnService(['service', 'transformer'], { ...p.env, NATS_URL: url, HEALTH_PORT: '0' });
    t.teardown(async () => {
      child.signal('SIGKILL');
      await child.exited;
    });
    return child;
  };
  return { proxy, spawnTransformer };
}

type Teardown = { teardown(fn: () => unknown): void };

t.test('a lost ack: the redelivered trigger finds its step ended in the record and runs nothing again', async (t) => {
  // The ack wait outlasts the wait for the ack's confirmation, so the redelivery arrives after the handler is gone.
  const p = await Pipeline.start({ env: { ACK_WAIT: '8', LOCK_TTL: '24' }, envFiles: { transform: { NEW_DATA: '0' } }, services: ['loader', 'model-gate', 'trainer'] });
  t.teardown(() => p.close());
  const { proxy, spawnTransformer } = await transformerBehindProxy(t, p);
  const transformer = spawnTransformer();
  await transformer.waitForLog(/services started/);
  const lostAck = proxy.drop((pub) => pub.subject.startsWith('$JS.ACK.BRAIN_EVENTS.transformer.') && pub.payload.toString() === '+ACK', { count: 1 });
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  t.equal((await p.waitForRunEnd(runId, 20_000)).data.outcome, 'no-new-data');
  await lostAck.done;
  await transformer.waitForLog(/step already ended/, 20_000);
  await sleep(9000); // another ack wait: the redelivery was acked
  t.same(p.starts('transform'), [runId], 'one transform container: the redelivery did not run the step again');
  t.same(p.trail(runId), ['transform.trigger', 'transform.done no-new-data'], 'one outcome');
});

t.test('kill -9 between a container’s exit and its outcome’s publish, back past the lease: the recorded exit is published, nothing runs twice', async (t) => {
  const p = await Pipeline.start({ env: { ACK_WAIT: '2', LOCK_TTL: '6' }, envFiles: { transform: { NEW_DATA: '1', SLEEP: '1' } }, services: ['loader', 'model-gate', 'trainer'] });
  t.teardown(() => p.close());
  const { proxy, spawnTransformer } = await transformerBehindProxy(t, p);
  const first = spawnTransformer();
  await first.waitForLog(/services started/);
  // The outcome cannot reach the stream: the service retries its publish while we kill it.
  const held = proxy.drop((pub) => pub.subject === 'transform.done');
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  const container = await waitForContainer(runId, 'transform');
  await docker.getContainer(container.Id).wait();
  await first.waitForLog(/publish failed; retrying/, 15_000);
  first.signal('SIGKILL');
  await first.exited;
  held.remove();
  await sleep(8000); // past the 6 s lease
  spawnTransformer(p.nats.url);
  const end = await p.waitForRunEnd(runId, 40_000);
  t.equal(end.data.outcome, 'trained', 'the exit recorded before the kill decides the run');
  t.same(p.starts('transform'), [runId], 'one transform container');
  t.same(p.trail(runId), ['transform.trigger', 'transform.done new-data', 'data.new', 'load.done loaded', 'model.trigger', 'model.mismatch', 'model.done trained']);
  t.same(await p.leftBehind(runId), [], 'its container removed once the outcome was stored');
});
