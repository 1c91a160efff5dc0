/**
 * Section 4: the event bus and the locks on their own nats-server, each next to a raw NATS
 * request/reply round trip measured in the same run at the same concurrency.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import pino from 'pino';
import { createEventBus } from '../shared/bus';
import { createLocks } from '../shared/lock';
import { openLocks } from '../shared/nats';
import { CONSUMERS } from '../services/index';
import { ensureTopology } from '../services/composition-root';
import { startNatsServer } from '../kit/nats-server';
import { newRunId } from './stack';

const silent = pino({ level: 'silent' });

/** Sequential request/reply round trips through the server, `concurrency` requesters at a time. */
async function roundTrips(server: string, count: number, concurrency: number): Promise<number[]> {
  const responder = await connect({ servers: server, name: 'bench-responder' });
  responder.subscribe('bench.echo', { callback: (_err, msg) => void msg.respond(msg.data) });
  await responder.flush();
  const requesters = await Promise.all(Array.from({ length: concurrency }, () => connect({ servers: server, name: 'bench-requester' })));
  const samples: number[] = [];
  await Promise.all(
    requesters.map(async (nc) => {
      for (let i = 0; i < count; i++) {
        const t0 = performance.now();
        await nc.request('bench.echo', 'x', { timeout: 5000 });
        samples.push(performance.now() - t0);
      }
    }),
  );
  await Promise.all([...requesters, responder].map((nc) => nc.close()));
  return samples;
}

/** Publish (JetStream, acknowledged) to the handler of a durable consumer being called, one event at a time. */
async function publishToConsume(nc: NatsConnection, count: number): Promise<number[]> {
  const bus = createEventBus({ nc, logger: silent, ackWaitMs: 30_000 });
  const sent = new Map<string, number>();
  const samples: number[] = [];
  let next: (() => void) | undefined;
  const sub = await bus.consume(CONSUMERS.trainer.durable, 'model.mismatch', (event) => {
    const t0 = sent.get(event.runId);
    if (t0 !== undefined) samples.push(performance.now() - t0);
    next?.();
    return Promise.resolve('done' as const);
  });
  for (let i = 0; i < count; i++) {
    const runId = newRunId();
    const consumed = new Promise<void>((r) => (next = r));
    sent.set(runId, performance.now());
    await bus.publish('model.mismatch', { runId, reason: 'forced' });
    await consumed;
  }
  await sub.stop();
  return samples;
}

/**
 * `contenders` holders, each on its own connection, trying to take and release one lock `rounds` times;
 * then the same contention on bare KV calls (`create`, and `delete` when it succeeded), the JetStream floor.
 */
async function lockContention(
  server: string,
  contenders: number,
  rounds: number,
): Promise<{ acquire: number[]; release: number[]; granted: number; rawCreate: number[]; rawDelete: number[] }> {
  const conns = await Promise.all(Array.from({ length: contenders }, () => connect({ servers: server, name: 'bench-contender' })));
  const kvs = await Promise.all(conns.map((nc) => openLocks(nc, 30_000)));
  const rawCreate: number[] = [];
  const rawDelete: number[] = [];
  await Promise.all(
    kvs.map(async ({ kv }) => {
      for (let r = 0; r < rounds; r++) {
        const t0 = performance.now();
        const revision = await kv.create('bench', new TextEncoder().encode('x')).catch(() => null);
        rawCreate.push(performance.now() - t0);
        if (revision === null) continue;
        const t1 = performance.now();
        await kv.delete('bench', { previousSeq: revision });
        rawDelete.push(performance.now() - t1);
      }
    }),
  );
  const acquire: number[] = [];
  const release: number[] = [];
  let granted = 0;
  await Promise.all(
    kvs.map(async (store, i) => {
      const locks = createLocks({ ...store, holder: `bench-${i}`, ttlMs: 30_000, logger: silent });
      for (let r = 0; r < rounds; r++) {
        const t0 = performance.now();
        const lease = await locks.acquire('model', newRunId(), 'bench');
        acquire.push(performance.now() - t0);
        if (lease === null) continue;
        granted++;
        const t1 = performance.now();
        if (!(await lease.release())) throw new Error('a lease just taken could not be released');
        release.push(performance.now() - t1);
      }
    }),
  );
  await Promise.all(conns.map((nc) => nc.close()));
  return { acquire, release, granted, rawCreate, rawDelete };
}

export interface BusResult {
  publishToConsume: number[];
  rawRoundTrip: number[];
  lockAcquire: number[];
  lockRelease: number[];
  lockGranted: number;
  rawRoundTripContended: number[];
  rawKvCreate: number[];
  rawKvDelete: number[];
}

export async function benchBus(opts: { events: number; contenders: number; rounds: number }): Promise<BusResult> {
  const nats = await startNatsServer();
  const nc = await connect({ servers: nats.url, name: 'bench-bus' });
  try {
    await ensureTopology(nc, { lockTtlMs: 30_000, ackWaitMs: 30_000 });
    // Warm-up of each path, then the measured runs interleaved.
    await publishToConsume(nc, 50);
    await roundTrips(nats.url, 50, 1);
    const rawRoundTrip = await roundTrips(nats.url, opts.events, 1);
    const pub = await publishToConsume(nc, opts.events);
    const locks = await lockContention(nats.url, opts.contenders, opts.rounds);
    const rawRoundTripContended = await roundTrips(nats.url, opts.rounds, opts.contenders);
    return {
      publishToConsume: pub,
      rawRoundTrip,
      lockAcquire: locks.acquire,
      lockRelease: locks.release,
      lockGranted: locks.granted,
      rawRoundTripContended,
      rawKvCreate: locks.rawCreate,
      rawKvDelete: locks.rawDelete,
    };
  } finally {
    await nc.close();
    await nats.stop();
    await nats.cleanup();
  }
}
