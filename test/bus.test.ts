import t, { type Test } from 'tap';
import { Writable } from 'node:stream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { AckPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { headers as natsHeaders } from '@nats-io/nats-core';
import { Kvm } from '@nats-io/kv';
import { createEventBus, elapsedMs, monotonicNow, OutgoingEventError, type EventBus, type HandlerResult } from '../shared/bus';
import { MAX_ERROR_CHARS, MAX_REASON_CHARS, type EventBody } from '../shared/events';
import { ErrorCode } from '../shared/errors';
import { createLogger } from '../shared/logger';
import { EVENTS_STREAM } from '../shared/nats';
import { CONSUMERS } from '../services';
import { ensureTopology } from '../services/composition-root';
import { startNatsServer, type NatsServer } from '../kit/nats-server';
import { startNatsProxy, type NatsProxy, type ProxiedPublish } from './helpers/nats-proxy';
import { Pipeline, uid } from '../kit/pipeline';

// The tests share nothing (each its own nats-server, proxy and bus): run a few at once, the waits for ack waits overlapping.
t.jobs = 3;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

/** An ack of a message of `durable` (not a heartbeat or a nak): what the server counts as done. */
const isAckOf = (durable: string) => (p: ProxiedPublish) => p.subject.startsWith(`$JS.ACK.${EVENTS_STREAM}.${durable}.`) && p.payload.toString() === '+ACK';
/** The delivery (consumer) sequence in an ack subject `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>`: each delivery has its own. */
const deliveryOf = (p: ProxiedPublish) => Number(p.subject.split('.')[6]);

interface Harness {
  nats: NatsServer;
  proxy: NatsProxy;
  /** Through the proxy: what the bus uses. */
  nc: NatsConnection;
  /** Direct: the test's own view of the server. */
  direct: NatsConnection;
  bus: EventBus;
  logs: string[];
}

/** A real nats-server with the pipeline's topology, and a bus whose connection goes through a NATS proxy. */
async function harness(t: Test, ackWaitMs: number): Promise<Harness> {
  const nats = await startNatsServer();
  const proxy = await startNatsProxy({ port: nats.port });
  const direct = await connect({ servers: nats.url, name: 'test-direct' });
  await ensureTopology(direct, { lockTtlMs: 10_000, ackWaitMs });
  const nc = await connect({ servers: proxy.url, name: 'test-bus', maxReconnectAttempts: -1, reconnectTimeWait: 200 });
  const logs: string[] = [];
  const sink = new Writable({
    write: (chunk: Buffer, _enc, cb) => {
      for (const line of chunk.toString().split('\n')) if (line.trim() !== '') logs.push(line);
      cb();
    },
  });
  const bus = createEventBus({ nc, logger: createLogger('bus-test', 'debug', sink), ackWaitMs, publishRetryMs: 30_000 });
  t.teardown(async () => {
    await nc.close().catch(() => undefined);
    await direct.close();
    await proxy.close();
    await nats.stop();
    await nats.cleanup();
  });
  return { nats, proxy, nc, direct, bus, logs };
}

async function storedLast(direct: NatsConnection, subject: string): Promise<Record<string, unknown>> {
  const jsm = await jetstreamManager(direct);
  const stored = await jsm.streams.getMessage(EVENTS_STREAM, { last_by_subj: subject });
  if (stored === null) throw new Error(`no ${subject} stored`);
  return stored.json<Record<string, unknown>>();
}

t.test('nats-proxy', async (t) => {
  t.test('a dropped ack makes JetStream redeliver the message after the ack wait (a plain consumer)', async (t) => {
    const nats = await startNatsServer();
    const proxy = await startNatsProxy({ port: nats.port });
    const nc = await connect({ servers: proxy.url });
    t.teardown(async () => {
      await nc.close();
      await proxy.close();
      await nats.stop();
      await nats.cleanup();
    });
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: 'PLAIN', subjects: ['plain.>'] });
    await jsm.consumers.add('PLAIN', { durable_name: 'c', ack_policy: AckPolicy.Explicit, ack_wait: 1_000_000_000 });
    const js = jetstream(nc);
    await js.publish('plain.x', 'one');
    const consumer = await js.consumers.get('PLAIN', 'c');

    const rule = proxy.drop((p) => p.subject.startsWith('$JS.ACK.PLAIN.c.') && p.payload.toString() === '+ACK', { count: 1 });
    const first = await consumer.next({ expires: 5000 });
    t.equal(first?.info.deliveryCount, 1);
    first?.ack();
    await nc.flush();
    await rule.done;
    t.equal(rule.dropped.length, 1, 'the ack was dropped');
    const ackedAt = Date.now();
    const again = await consumer.next({ expires: 5000 });
    const waited = Date.now() - ackedAt;
    t.equal(again?.info.streamSequence, first?.info.streamSequence, 'the same message again');
    t.equal(again?.info.deliveryCount, 2, 'a redelivery');
    t.ok(waited >= 700, `redelivered after the ack wait (${waited} ms)`);
    again?.ack();
    await nc.flush();
    t.equal(await consumer.next({ expires: 2000 }), null, 'an ack that got through ends it');
    t.equal((await jsm.consumers.info('PLAIN', 'c')).num_ack_pending, 0);
  });

  t.test('PUB and HPUB are framed by their sizes: payloads that look like commands pass intact; a dropped HPUB goes whole', async (t) => {
    const nats = await startNatsServer();
    const proxy = await startNatsProxy({ port: nats.port });
    const direct = await connect({ servers: nats.url });
    const viaProxy = await connect({ servers: proxy.url });
    t.teardown(async () => {
      await viaProxy.close();
      await direct.close();
      await proxy.close();
      await nats.stop();
      await nats.cleanup();
    });
    const seen: { subject: string; data: string; h: string | undefined }[] = [];
    direct.subscribe('f.>', { callback: (_e, m) => void seen.push({ subject: m.subject, data: m.string(), h: m.headers?.get('X-T') }) });
    await direct.flush();
    const rule = proxy.drop((p) => p.subject === 'f.drop');
    const tricky = 'PUB f.drop 3\r\nabc\r\nHPUB f.drop 12 12\r\nNATS/1.0\r\n\r\n\r\n';
    const h = natsHeaders();
    h.set('X-T', 'PUB f.drop 1');
    viaProxy.publish('f.keep', tricky);
    viaProxy.publish('f.drop', 'gone', { headers: h });
    viaProxy.publish('f.keep', 'x'.repeat(200_000), { headers: h, reply: 'f.reply' });
    viaProxy.publish('f.drop', tricky);
    viaProxy.publish('f.last', '');
    await viaProxy.flush();
    await until('the last message', () => seen.some((s) => s.subject === 'f.last'));
    t.same(
      seen.map((s) => [s.subject, s.data.length, s.h]),
      [
        ['f.keep', tricky.length, undefined],
        ['f.keep', 200_000, 'PUB f.drop 1'],
        ['f.last', 0, undefined],
      ],
    );
    t.equal(seen[0]?.data, tricky, 'a payload that looks like commands is delivered byte for byte');
    t.same(
      rule.dropped.map((d) => [d.subject, d.payload.toString(), d.headers.length > 0]),
      [
        ['f.drop', 'gone', true],
        ['f.drop', tricky, false],
      ],
    );
    t.equal(proxy.publishes.find((p) => p.reply !== undefined)?.reply, 'f.reply', 'the reply subject is parsed');
  });

  t.test('cut() is an outage for the clients behind the proxy only; restore() lets them reconnect', async (t) => {
    const nats = await startNatsServer();
    const proxy = await startNatsProxy({ port: nats.port });
    const direct = await connect({ servers: nats.url });
    const viaProxy = await connect({ servers: proxy.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    t.teardown(async () => {
      await viaProxy.close();
      await direct.close();
      await proxy.close();
      await nats.stop();
      await nats.cleanup();
    });
    const statuses: string[] = [];
    void (async () => {
      for await (const s of viaProxy.status()) statuses.push(s.type);
    })();
    const got: string[] = [];
    direct.subscribe('c.>', { callback: (_e, m) => void got.push(m.string()) });
    await direct.flush();
    await proxy.cut();
    await until('the disconnect', () => statuses.includes('disconnect'));
    await sleep(800);
    t.equal(viaProxy.isClosed(), false, 'the client behind the proxy keeps trying');
    await direct.flush();
    t.notOk(direct.isClosed(), 'a direct client is not affected');
    proxy.restore();
    await until('the reconnect', () => statuses.includes('reconnect'));
    viaProxy.publish('c.x', 'after the restore');
    await until('the publish', () => got.length === 1);
    t.same(got, ['after the restore'], 'the client behind the proxy reaches the server again');
  });
});

t.test('outgoing events are sanitised, so our own outcome is always publishable', async (t) => {
  t.test('a negative durationMs is stored as 0; a 10,000-char error and a long reason are cut', async (t) => {
    const h = await harness(t, 5000);
    const runId = uid();
    const published = await h.bus.publish('transform.done', { runId, outcome: 'failed', exitCode: null, durationMs: -5, error: `start ${'x'.repeat(10_000)} end` });
    const stored = await storedLast(h.direct, 'transform.done');
    t.equal(stored.durationMs, 0, 'the duration is clamped to 0');
    const error = stored.error as string;
    t.ok(error.length <= MAX_ERROR_CHARS, `the error is cut to ${error.length} chars`);
    t.ok(error.startsWith('start xxx') && error.endsWith('…'), 'the start is kept; the cut is marked');
    t.same(published, stored, 'publish returns what was stored');

    await h.bus.publish('transform.done', { runId: uid(), outcome: 'failed', exitCode: null, durationMs: Number.NaN });
    t.equal((await storedLast(h.direct, 'transform.done')).durationMs, 0, 'NaN is clamped to 0');
    await h.bus.publish('model.done', { runId: uid(), outcome: 'failed', durationMs: 12.5, error: '😀'.repeat(1500) });
    const emoji = (await storedLast(h.direct, 'model.done')).error as string;
    t.ok(emoji.length <= MAX_ERROR_CHARS && !/[\ud800-\udbff]…$/.test(emoji), 'a cut never splits a surrogate pair');
    t.equal((await storedLast(h.direct, 'model.done')).durationMs, 12.5, 'a valid duration is kept');
    await h.bus.publish('model.trigger', { runId: uid(), reason: 'r'.repeat(500) });
    const reason = (await storedLast(h.direct, 'model.trigger')).reason as string;
    t.ok(reason.length <= MAX_REASON_CHARS && reason.endsWith('…'), `the reason is cut to ${reason.length} chars`);
  });

  t.test('a body that fails its schema even after sanitising throws EVENT_INVALID, logged with its issues; nothing is stored', async (t) => {
    const h = await harness(t, 5000);
    const bad = { runId: uid(), outcome: 'exploded', exitCode: null, durationMs: 1 } as unknown as EventBody<'transform.done'>;
    const err = await h.bus.publish('transform.done', bad).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.type(err, OutgoingEventError);
    t.equal((err as OutgoingEventError).code, ErrorCode.EventInvalid);
    t.match((err as OutgoingEventError).issues, [{ path: ['outcome'] }], 'the zod issues are carried');
    const line = h.logs.find((l) => l.includes('our own event fails its schema'));
    t.ok(line !== undefined && JSON.parse(line).level === 60 && line.includes('"outcome"'), 'logged loudly (fatal) with the issues');
    const jsm = await jetstreamManager(h.direct);
    t.equal((await jsm.streams.info(EVENTS_STREAM)).state.messages, 0, 'nothing was published');
  });

  t.test('a handler whose outcome has a negative duration and a 10,000-char error is acked once, never redelivered', async (t) => {
    const ackWaitMs = 1000;
    const h = await harness(t, ackWaitMs);
    let calls = 0;
    const sub = await h.bus.consume(CONSUMERS.transformer.durable, 'transform.trigger', async (event, ctx): Promise<HandlerResult> => {
      calls++;
      const startedAt = monotonicNow();
      await sleep(50);
      t.ok(elapsedMs(startedAt) >= 45, 'elapsedMs measures on the monotonic clock');
      await h.bus.publish('transform.done', { runId: event.runId ?? `t${ctx.streamSequence}`, outcome: 'failed', exitCode: 1, durationMs: -5, error: 'e'.repeat(10_000) });
      return 'done';
    });
    t.teardown(() => sub.stop());
    const runId = uid();
    h.direct.publish('transform.trigger', JSON.stringify({ runId }));
    await until('the ack', () => h.proxy.publishes.some(isAckOf(CONSUMERS.transformer.durable)));
    await sleep(3 * ackWaitMs);
    t.equal(calls, 1, 'the handler ran once');
    const stored = await storedLast(h.direct, 'transform.done');
    t.equal(stored.runId, runId);
    t.equal(stored.durationMs, 0);
    t.ok((stored.error as string).length <= MAX_ERROR_CHARS);
    t.equal(h.proxy.publishes.filter(isAckOf(CONSUMERS.transformer.durable)).length, 1, 'one ack sent');
    const info = await jetstreamManager(h.direct).then((jsm) => jsm.consumers.info(EVENTS_STREAM, CONSUMERS.transformer.durable));
    t.equal(info.num_ack_pending, 0, 'nothing pending');
    t.equal(info.num_redelivered, 0, 'never redelivered');
  });
});

t.test('a lost ack is sent once per delivery (no retry loop)', async (t) => {
  t.jobs = 3; // each subtest has its own harness
  t.test('with the ack wait longer than the confirmation wait: a warning names the stream sequence, the message comes back after the ack wait', async (t) => {
    const ackWaitMs = 7000; // longer than the bus's 5 s wait for a confirmation
    const h = await harness(t, ackWaitMs);
    const rule = h.proxy.drop(isAckOf(CONSUMERS.transformer.durable), { count: 1 });
    const sequences: number[] = [];
    const sub = await h.bus.consume(CONSUMERS.transformer.durable, 'transform.trigger', async (_event, ctx) => {
      sequences.push(ctx.streamSequence);
      return 'done';
    });
    t.teardown(() => sub.stop());
    h.direct.publish('transform.trigger', '');
    await rule.done;
    await until('the warning', () => h.logs.some((l) => l.includes('ack not confirmed; the message may be redelivered')), 15_000);
    const warning = JSON.parse(h.logs.find((l) => l.includes('ack not confirmed')) ?? '{}') as { streamSequence?: number; level?: number };
    t.equal(warning.streamSequence, sequences[0], 'the warning names the stream sequence');
    t.equal(warning.level, 40, 'a warning');
    t.equal(h.proxy.publishes.filter(isAckOf(CONSUMERS.transformer.durable)).length, 1, 'the lost ack was not sent again');
    await until('the redelivery', () => sequences.length === 2, 15_000);
    t.same(sequences, [sequences[0], sequences[0]], 'the same message, redelivered (recognising it as finished is the handler’s job)');
    await until('the second ack', () => h.proxy.publishes.filter(isAckOf(CONSUMERS.transformer.durable)).length === 2);
    const acks = h.proxy.publishes.filter(isAckOf(CONSUMERS.transformer.durable));
    t.same(acks.map(deliveryOf), [1, 2], 'one ack per delivery');
    await sleep(1000);
    const info = await (await jetstreamManager(h.direct)).consumers.info(EVENTS_STREAM, CONSUMERS.transformer.durable);
    t.equal(info.num_ack_pending, 0, 'the second ack got through');
  });

  t.test('with a redelivery arriving while the confirmation is awaited: that delivery is acked, the handler runs once', async (t) => {
    const ackWaitMs = 1000;
    const h = await harness(t, ackWaitMs);
    const rule = h.proxy.drop(isAckOf(CONSUMERS.transformer.durable), { count: 1 });
    let calls = 0;
    const sub = await h.bus.consume(CONSUMERS.transformer.durable, 'transform.trigger', async () => {
      calls++;
      return 'done';
    });
    t.teardown(() => sub.stop());
    h.direct.publish('transform.trigger', '');
    await rule.done;
    await until('the second ack', () => h.proxy.publishes.filter(isAckOf(CONSUMERS.transformer.durable)).length === 2, 15_000);
    const acks = h.proxy.publishes.filter(isAckOf(CONSUMERS.transformer.durable));
    t.ok((acks[1] !== undefined ? deliveryOf(acks[1]) : 0) > 1, 'the second ack answers a redelivery');
    await sleep(3 * ackWaitMs);
    t.equal(calls, 1, 'the handler ran once');
    const info = await (await jetstreamManager(h.direct)).consumers.info(EVENTS_STREAM, CONSUMERS.transformer.durable);
    t.equal(info.num_ack_pending, 0, 'nothing pending');
    t.ok(
      h.logs.some((l) => l.includes('acking the redelivery that arrived meanwhile')),
      'logged',
    );
  });
});

// Alone (not buffered: the others wait): with a 1 s ack wait, its check of the newest delivery raced a further redelivery
// when the process was busy with the other tests.
t.test('one handler per stream sequence: a redelivery after an outage longer than the ack wait joins the running handler', { buffered: false }, async (t) => {
  const ackWaitMs = 1000;
  const h = await harness(t, ackWaitMs);
  let calls = 0;
  let release: () => void = () => undefined;
  const released = new Promise<void>((r) => (release = r));
  const deliveries: number[] = [];
  const sub = await h.bus.consume(CONSUMERS.transformer.durable, 'transform.trigger', async () => {
    calls++;
    await released;
    return 'done';
  });
  t.teardown(() => {
    release();
    return sub.stop();
  });
  h.direct.publish('transform.trigger', '');
  await until('the handler', () => calls === 1);
  await h.proxy.cut();
  await sleep(3 * ackWaitMs); // the heartbeats cannot reach the server: it gives the message up
  h.proxy.restore();
  await until('the redelivery', () => calls > 1 || h.logs.some((l) => l.includes('redelivered while its handler still runs here')), 15_000);
  t.equal(calls, 1, 'no second handler for the redelivery');
  release();
  await until('the ack', () => h.proxy.publishes.some(isAckOf(CONSUMERS.transformer.durable)));
  await sleep(3 * ackWaitMs);
  // The last ack answers the newest delivery the handler joined (one that joined while an ack was on its way is acked too).
  const acks = h.proxy.publishes.filter(isAckOf(CONSUMERS.transformer.durable));
  const ack = acks[acks.length - 1];
  for (const l of h.logs)
    if (/redelivered (while its handler still runs here|just after its handler ended here)/.test(l))
      deliveries.push((JSON.parse(l) as { deliverySequence: number }).deliverySequence);
  t.equal(ack !== undefined ? deliveryOf(ack) : 0, Math.max(...deliveries), `the ack answers the newest delivery (${ack?.subject}; deliveries ${deliveries.join(', ')})`);
  t.equal(calls, 1, 'and the server counts it: no further redelivery, no second handler');
  const info = await (await jetstreamManager(h.direct)).consumers.info(EVENTS_STREAM, CONSUMERS.transformer.durable);
  t.equal(info.num_ack_pending, 0, 'nothing pending');
});

t.test('the transformer cut off NATS for longer than the ack wait mid-container: one container, one transform.done, the run trains', async (t) => {
  const p = await Pipeline.start({
    env: { ACK_WAIT: '2', LOCK_TTL: '20' },
    envFiles: { transform: { NEW_DATA: '1', SLEEP: '10' } },
  });
  const proxy = await startNatsProxy({ port: p.nats.port });
  t.teardown(async () => {
    proxy.restore(); // the services must reach NATS to stop cleanly
    await p.close();
    await proxy.close();
  });
  await p.stopServices();
  p.env.NATS_URL = proxy.url; // the services go through the proxy; the test's observer does not
  await p.startServices();
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  await until('the transform container', () => p.starts('transform').includes(runId));
  // The handler has recorded its container (a record write cut off would fail the handler, not leave it running).
  const runs = await new Kvm(p.client).open('runs');
  await until(
    'the container in the run record',
    async () => (await runs.get(`${runId}.transform`))?.json<{ containers: { transform?: { state: string } } }>().containers.transform?.state === 'started',
  );
  await proxy.cut();
  await sleep(6000); // three ack waits: the server gives the trigger up and redelivers it on reconnect
  proxy.restore();
  const end = await p.waitForRunEnd(runId, 60_000);
  t.equal(end.data.outcome, 'trained', 'the run ends trained');
  t.ok(
    p.logLines.some((l) => l.includes('redelivered while its handler still runs here')),
    'the trigger was redelivered to the running handler',
  );
  t.same(p.starts('transform'), [runId], 'one transform container');
  t.equal(p.events.filter((e) => e.subject === 'transform.done' && e.data.runId === runId).length, 1, 'one transform.done');
  t.same(p.trail(runId), ['transform.trigger', 'transform.done new-data', 'data.new', 'load.done loaded', 'model.trigger', 'model.mismatch', 'model.done trained']);
});

t.test('pulling: concurrency, a bounded stop, and a nats-server restart', async (t) => {
  t.jobs = 3; // each subtest has its own harness
  t.test('50 messages at once run 50 handlers concurrently; a concurrency of 3 runs at most 3', async (t) => {
    const h = await harness(t, 5000);
    for (const [durable, subject, concurrency, expected] of [
      [CONSUMERS.transformer.durable, 'transform.trigger', undefined, 50],
      [CONSUMERS.modelGate.durable, 'model.trigger', 3, 3],
    ] as const) {
      const bus = createEventBus({ nc: h.nc, logger: createLogger('bus-test', 'warn'), ackWaitMs: 5000, ...(concurrency !== undefined ? { concurrency } : {}) });
      let running = 0;
      let peak = 0;
      let finished = 0;
      const sub = await bus.consume(durable, subject, async () => {
        running++;
        peak = Math.max(peak, running);
        await sleep(300);
        running--;
        finished++;
        return 'done';
      });
      for (let i = 0; i < 50; i++) h.direct.publish(subject, '');
      await until(`50 handled on ${subject}`, () => finished === 50, 30_000);
      await sub.stop();
      t.equal(peak, expected, `${subject}: at most ${expected} at once, and that many`);
    }
  });

  t.test('an idle consumer stops within its pull expiry, and leaves no pull request on the server', async (t) => {
    const h = await harness(t, 30_000);
    const sub = await h.bus.consume(CONSUMERS.transformer.durable, 'transform.trigger', async () => 'done');
    await sleep(500);
    const started = Date.now();
    await sub.stop();
    const took = Date.now() - started;
    t.ok(took < 3000, `stopped in ${took} ms`);
    const info = await (await jetstreamManager(h.direct)).consumers.info(EVENTS_STREAM, CONSUMERS.transformer.durable);
    t.equal(info.num_waiting, 0, 'no pull request of ours is waiting on the server');
  });

  t.test('after kill -9 and restart of nats-server the consumer pulls again', async (t) => {
    const h = await harness(t, 5000);
    const seen: number[] = [];
    const sub = await h.bus.consume(CONSUMERS.transformer.durable, 'transform.trigger', async (_e, ctx) => {
      seen.push(ctx.streamSequence);
      return 'done';
    });
    t.teardown(() => sub.stop());
    h.direct.publish('transform.trigger', '');
    await until('the first message', () => seen.length === 1);
    await h.nats.stop('SIGKILL');
    await sleep(1500);
    await h.nats.restart();
    await until('the direct client back', async () => {
      try {
        await h.direct.flush();
        await (await jetstreamManager(h.direct)).consumers.info(EVENTS_STREAM, CONSUMERS.transformer.durable);
        return true;
      } catch {
        return false;
      }
    });
    const js = jetstream(h.direct);
    await js.publish('transform.trigger', '');
    await until('the message after the restart', () => seen.length === 2, 20_000);
    t.equal(seen.length, 2, 'handled');
  });
});
