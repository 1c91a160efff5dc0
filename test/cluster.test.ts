import t from 'tap';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import pino from 'pino';
import { createLocks } from '../shared/lock';
import { LOCKS_BUCKET, openLocks } from '../shared/nats';
import { startNatsCluster } from './helpers/nats-cluster';
import { ClusterPipeline } from '../kit/cluster-pipeline';
import { waitForContainer } from '../kit/pipeline';
import { writeEnvFiles } from '../kit/run-dirs';

// One three-node cluster (streams and the locks bucket replicated three times) and two replicas of every
// service, each replica listing the nodes in a different order; the tests below run one after another on it.
const FULL_CHAIN = ['transform.trigger', 'transform.done new-data', 'data.new', 'load.done loaded', 'model.trigger', 'model.mismatch', 'model.done trained'];

t.test('three-node cluster, two replicas of every service', async (t) => {
  const cluster = await startNatsCluster();
  t.teardown(() => cluster.cleanup());
  const [a, b, c] = cluster.urls;
  const p = await ClusterPipeline.start({
    natsUrls: [[a, b, c].join(','), [c, b, a].join(',')],
    env: { NATS_REPLICAS: '3', ACK_WAIT: '5', LOCK_TTL: '15' },
    envFiles: { transform: { NEW_DATA: '1' } },
  });
  t.teardown(() => p.close());
  const only = (lines: string[], runId: string) => lines.filter((l) => l.split(' ')[0] === runId);

  t.test('the replicated locks bucket: concurrent contenders on three nodes, exactly one holder', async (t) => {
    // nats-server 2.9 can accept several concurrent compare-and-sets on a replicated stream
    // (nats-io/nats-server#4320); the settle check keeps only the last one written as the holder.
    const conns = await Promise.all(cluster.urls.map((url) => connect({ servers: url })));
    t.teardown(() => Promise.all(conns.map((nc) => nc.close())));
    // A bucket of its own, so the pipeline's lock watcher does not count these contenders; opened one
    // connection at a time (concurrent creates of one replicated stream time out on nats-server 2.9).
    const contenders = [];
    for (let i = 0; i < 12; i++) {
      const nc = conns[i % conns.length];
      if (nc === undefined) throw new Error('no connection');
      const store = await openLocks(nc, 15_000, 3, 'contention');
      contenders.push(createLocks({ ...store, holder: `c${i}`, ttlMs: 15_000, logger: pino({ level: 'silent' }), settleMs: 200 }));
    }
    for (let round = 0; round < 5; round++) {
      const leases = await Promise.all(contenders.map((locks, i) => locks.acquire('model', `round${round}x${i}`, 'model-trigger')));
      const held = leases.filter((l) => l !== null);
      t.equal(held.length, 1, `round ${round}: one holder`);
      t.ok(await held[0]?.release(), 'and it can release');
    }
  });

  t.test('a full chain: one container per stage, each event once', async (t) => {
    const runId = p.runId();
    await p.publish('transform.trigger', { runId });
    const end = await p.waitForRunEnd(runId, 60_000);
    t.equal(end.data.outcome, 'trained');
    t.same(p.trail(runId), FULL_CHAIN, 'each event once, in order');
    t.same(only(p.starts('transform'), runId), [runId], 'one transform container');
    t.same(only(p.starts('load'), runId).sort(), [`${runId} processed`, `${runId} viz`], 'one container per load');
    t.same(only(p.starts('train'), runId), [runId], 'one training container');
    t.same(await p.leftBehind([runId]), [], 'no container left behind');
  });

  t.test('10 triggers at once: one run goes ahead, the others end busy', async (t) => {
    const runIds = Array.from({ length: 10 }, () => p.runId());
    await Promise.all(runIds.map((runId) => p.publish('transform.trigger', { runId })));
    const ends = await Promise.all(runIds.map((runId) => p.waitForRunEnd(runId, 60_000)));
    const winners = ends.filter((e) => e.data.outcome !== 'busy');
    t.equal(winners.length, 1, 'one run went ahead');
    t.equal(ends.filter((e) => e.subject === 'transform.done' && e.data.outcome === 'busy').length, 9, 'nine ended busy');
    const winner = String(winners[0]?.data.runId);
    t.same(p.trail(winner), FULL_CHAIN);
    for (const runId of runIds) {
      const expected = runId === winner ? [runId] : [];
      t.same(only(p.starts('transform'), runId), expected, `transform containers of ${runId}`);
      t.same(only(p.starts('load'), runId).length, expected.length * 2, `load containers of ${runId}`);
      t.same(only(p.starts('train'), runId), expected, `training containers of ${runId}`);
      if (runId !== winner) t.same(p.trail(runId), ['transform.trigger', 'transform.done busy'], `${runId} once busy`);
    }
  });

  t.test('kill -9 of the node leading the locks bucket mid-run: the run completes, each lock keeps one holder', async (t) => {
    // The transform runs 3 s (the env file is read at each container's start): the node dies while it runs.
    writeEnvFiles(p.dirs.env, { transform: { NEW_DATA: '1', SLEEP: '3' } });
    const jsm = await jetstreamManager(p.client);
    const leader = (await jsm.streams.info(`KV_${LOCKS_BUCKET}`)).cluster?.leader ?? '';
    const victim = Number(/^n(\d)$/.exec(leader)?.[1] ?? 1);
    const runId = p.runId();
    const firstWrite = p.lockWrites.length;
    await p.publish('transform.trigger', { runId });
    await waitForContainer(runId, 'transform');
    await cluster.stop(victim, 'SIGKILL');
    t.teardown(() => cluster.restart(victim));
    const end = await p.waitForRunEnd(runId, 90_000).catch((err: Error) => {
      throw new Error(`${err.message}\n${p.serviceLogs()}`);
    });
    t.equal(end.data.outcome, 'trained', `run completed with node n${victim} (locks leader ${leader}) down: ${JSON.stringify(end.data)}`);
    if (end.data.outcome !== 'trained') t.comment(p.serviceLogs());
    t.same(p.trail(runId), FULL_CHAIN, 'each event once');
    t.same(only(p.starts('transform'), runId), [runId], 'no second transform container');
    t.same(only(p.starts('load'), runId).sort(), [`${runId} processed`, `${runId} viz`], 'no second load container');
    t.same(only(p.starts('train'), runId), [runId], 'no second training container');
    // The watcher samples the bucket from its own connection; the bucket itself answers for the end state.
    const writes = p.lockWrites.slice(firstWrite);
    t.ok(
      writes.some((w) => w.key === 'transform' && w.operation === 'PUT' && w.runId === runId),
      'the watcher saw the run take the transform lock',
    );
    const kv = await new Kvm(p.client).open(LOCKS_BUCKET);
    for (const key of ['transform', 'model']) {
      const named = new Set(writes.filter((w) => w.key === key && w.operation === 'PUT').map((w) => w.runId));
      t.same(
        [...named].filter((r) => r !== runId),
        [],
        `the ${key} lock never named another run`,
      );
      t.not((await kv.get(key))?.operation, 'PUT', `the ${key} lock is free at the end`);
    }
    t.same(p.lockAnomalies, [], 'no lease written over another run’s live lease');
    await cluster.restart(victim);
    const after = p.runId();
    await p.publish('transform.trigger', { runId: after });
    t.equal((await p.waitForRunEnd(after, 60_000)).data.outcome, 'trained', 'the healed cluster runs the next chain');
  });
});
