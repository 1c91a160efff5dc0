import t from 'tap';
import { connect } from '@nats-io/transport-node';
import pino from 'pino';
import { createLocks } from '../shared/lock';
import { openLocks } from '../shared/nats';
import { startNatsServer } from '../kit/nats-server';
import { Pipeline, uid, waitForContainer } from '../kit/pipeline';

// The four tests share nothing (each its own nats-server; the lease subtests, which share keys, run one after another
// inside the first): run them at once.
t.jobs = 4;

const silent = pino({ level: 'silent' });
/** Short enough to watch expire, long enough that a loaded CI machine still refreshes in time. */
const TTL = 3000;

t.test('KV leases against a real nats-server', async (t) => {
  const server = await startNatsServer();
  const nc = await connect({ servers: server.url });
  t.teardown(async () => {
    await nc.close();
    await server.stop();
    await server.cleanup();
  });
  const store = await openLocks(nc, TTL);

  await t.test('50 concurrent contenders: exactly one holder', async (t) => {
    for (let round = 0; round < 3; round++) {
      const contenders = Array.from({ length: 50 }, (_, i) => createLocks({ ...store, holder: `c${i}`, ttlMs: TTL, logger: silent }));
      const leases = await Promise.all(contenders.map((locks, i) => locks.acquire('transform', `run${round}x${i}`, 'transform')));
      const held = leases.filter((l) => l !== null);
      t.equal(held.length, 1, `round ${round}: one winner`);
      t.ok(await held[0]?.release(), 'the winner releases');
    }
  });

  await t.test('a lease that is not refreshed expires, and its old holder can neither refresh nor release', async (t) => {
    const a = createLocks({ ...store, holder: 'a', ttlMs: TTL, logger: silent });
    const b = createLocks({ ...store, holder: 'b', ttlMs: TTL, logger: silent });
    const first = await a.acquire('model', 'old', 'train');
    t.ok(first);
    await first?.handOff();
    a.close(); // stops refreshing, as a stopped or frozen holder does
    t.equal(await b.acquire('model', 'new', 'train'), null, 'held while fresh');
    await new Promise((r) => setTimeout(r, TTL * 1.7));
    const second = await b.acquire('model', 'new', 'train');
    t.ok(second, 'taken after the lease expired');
    const stale = await a.takeOver('model', 'old', 'train');
    t.equal(stale, null, 'the old run cannot take it back');
    t.equal((await b.read('model'))?.value?.runId, 'new');
    t.ok(await second?.release());
  });

  await t.test('a held lease stays held past its TTL while refreshed', async (t) => {
    const a = createLocks({ ...store, holder: 'a', ttlMs: TTL, logger: silent });
    const lease = await a.acquire('transform', 'long', 'transform');
    await new Promise((r) => setTimeout(r, TTL * 2));
    t.ok(await lease?.confirm(), 'still ours');
    t.equal(await a.acquire('transform', 'other', 'transform'), null);
    t.ok(await lease?.release());
    t.equal(await a.read('transform'), null, 'released');
  });

  await t.test('release and confirm never race the refresh timer', async (t) => {
    // A 300 ms lease refreshes every 100 ms: releases and confirms land in the middle of refreshes.
    const fast = createLocks({ ...store, holder: 'fast', ttlMs: 300, logger: silent });
    let released = 0;
    let confirmed = 0;
    for (let i = 0; i < 40; i++) {
      const lease = await fast.acquire('model', `race${i}`, 'train');
      await new Promise((r) => setTimeout(r, (i * 37) % 150));
      if (await lease?.confirm()) confirmed++;
      if (await lease?.release()) released++;
    }
    t.equal(confirmed, 40, 'every confirm succeeded');
    t.equal(released, 40, 'every release succeeded');
    t.equal(await fast.read('model'), null);
  });

  await t.test('a handed-off lease is refreshed until the next stage takes it over, then left alone', async (t) => {
    const a = createLocks({ ...store, holder: 'a', ttlMs: TTL, logger: silent });
    const b = createLocks({ ...store, holder: 'b', ttlMs: TTL, logger: silent });
    const first = await a.acquire('transform', 'transit', 'transform');
    await first?.handOff();
    await new Promise((r) => setTimeout(r, TTL * 1.7));
    t.equal((await b.read('transform'))?.value?.stage, 'transform', 'still held past its TTL while in transit');
    t.equal(await b.acquire('transform', 'other', 'transform'), null, 'another run cannot take it');
    const next = await b.takeOver('transform', 'transit', 'load');
    t.ok(next, 'the next stage takes it over');
    await new Promise((r) => setTimeout(r, TTL));
    t.notOk(first?.lost.aborted, 'the take-over is not a lost lease for the stage that handed it off');
    t.ok(await next?.confirm(), 'and the earlier holder no longer writes it');
    t.equal((await b.read('transform'))?.value?.stage, 'load');
    t.ok(await next?.release());
    a.close();
  });

  await t.test('a second trigger reusing a running run id is refused; a redelivery takes it over', async (t) => {
    const a = createLocks({ ...store, holder: 'a', ttlMs: TTL, logger: silent });
    const lease = await a.acquire('transform', 'same', 'transform', { trigger: 7 });
    t.equal(await a.acquire('transform', 'same', 'transform', { trigger: 8 }), null);
    await lease?.handOff();
    const taken = await a.acquire('transform', 'same', 'transform', { trigger: 7 });
    t.ok(taken);
    t.notOk(await lease?.release(), 'the handed-off lease cannot release');
    t.ok(await taken?.release());
    a.close();
  });
});

t.test('a second transform.trigger while the first run is in its loads ends busy', async (t) => {
  const p = await Pipeline.start({ envFiles: { loadProcessed: { TARGET: 'processed', SLEEP: '3' } } });
  t.teardown(() => p.close());
  const first = uid();
  await p.publish('transform.trigger', { runId: first });
  await waitForContainer(first, 'load-processed');
  const second = uid();
  await p.publish('transform.trigger', { runId: second });
  const busy = await p.waitForSubject('transform.done', second);
  t.equal(busy.data.outcome, 'busy');
  t.equal(busy.data.exitCode, null);
  t.same(p.trail(second), ['transform.trigger', 'transform.done busy'], "busy is the run's one terminal event");
  t.equal((await p.waitForRunEnd(first)).data.outcome, 'trained');
  t.same(p.starts('transform'), [first], 'no second transform container');
});

t.test('a second transform.trigger while the first run is in its model step ends busy', async (t) => {
  const p = await Pipeline.start({ envFiles: { train: { SLEEP: '3' } } });
  t.teardown(() => p.close());
  const first = uid();
  await p.publish('transform.trigger', { runId: first });
  await waitForContainer(first, 'train');
  const second = uid();
  await p.publish('transform.trigger', { runId: second });
  t.equal((await p.waitForSubject('transform.done', second)).data.outcome, 'busy');
  t.equal((await p.waitForRunEnd(first)).data.outcome, 'trained');
  const third = uid();
  await p.publish('transform.trigger', { runId: third });
  t.equal((await p.waitForSubject('transform.done', third)).data.outcome, 'new-data', 'free again after model.done');
  await p.waitForRunEnd(third);
  t.same(p.starts('transform'), [first, third]);
});

t.test('the same trigger published twice with one message id makes one run', async (t) => {
  const p = await Pipeline.start({ envFiles: { transform: { NEW_DATA: '0' } } });
  t.teardown(() => p.close());
  const runId = uid();
  const { jetstream } = await import('@nats-io/jetstream');
  const js = jetstream(p.client);
  const body = JSON.stringify({ runId });
  const a = await js.publish('transform.trigger', body, { msgID: `hand-${runId}` });
  const b = await js.publish('transform.trigger', body, { msgID: `hand-${runId}` });
  t.notOk(a.duplicate);
  t.ok(b.duplicate, 'the stream dropped the repeat');
  await p.waitForRunEnd(runId);
  await new Promise((r) => setTimeout(r, 500));
  t.same(p.starts('transform'), [runId]);
});
