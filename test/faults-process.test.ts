import t from 'tap';
import { Pipeline, docker, uid, waitForContainer } from '../kit/pipeline';
import { spawnService } from '../kit/service-process';

// The subtests share nothing (each has its own nats-server, services, run dirs and run ids): run them at once.
t.jobs = 3;

const others = ['loader', 'model-gate', 'trainer'] as const;

type Teardown = { teardown(fn: () => unknown): void };

/**
 * Runs the transformer as a child process, triggers a run and kills the transformer with -9 while the
 * run's transform container runs. `restart` starts a fresh transformer (stopped at teardown).
 */
async function killTransformerMidContainer(t: Teardown, transform: Record<string, string>) {
  const p = await Pipeline.start({ env: { ACK_WAIT: '2', LOCK_TTL: '6' }, envFiles: { transform }, services: others });
  t.teardown(() => p.close());
  const env = { ...p.env, HEALTH_PORT: '0' };
  const first = spawnService(['service', 'transformer'], env);
  t.teardown(() => first.signal('SIGKILL'));
  await first.waitForLog(/services started/);
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  const container = await waitForContainer(runId, 'transform');
  first.signal('SIGKILL');
  await first.exited;
  const restart = () => {
    const second = spawnService(['service', 'transformer'], env);
    t.teardown(async () => {
      second.signal('SIGTERM');
      await second.exited;
    });
    return second;
  };
  return { p, runId, container, restart };
}

t.test('kill -9 of the transformer mid-container: the restarted service adopts the container', async (t) => {
  const { p, runId, restart } = await killTransformerMidContainer(t, { NEW_DATA: '1', SLEEP: '4' });
  const second = restart();
  const end = await p.waitForRunEnd(runId, 40_000);
  t.equal(end.data.outcome, 'trained');
  t.same(p.trail(runId).slice(0, 3), ['transform.trigger', 'transform.done new-data', 'data.new']);
  t.same(p.starts('transform'), [runId], 'no second transform container');
  t.ok(
    second.output.some((l) => l.includes('adopting existing container')),
    'the new process adopted it',
  );
  t.same(await p.leftBehind(runId), []);
});

t.test('kill -9 mid-container, container gone by restart: the stage fails with a clear error', async (t) => {
  const { p, runId, container, restart } = await killTransformerMidContainer(t, { NEW_DATA: '1', SLEEP: '30' });
  await docker.getContainer(container.Id).remove({ force: true });
  restart();
  const end = await p.waitForRunEnd(runId, 40_000);
  t.equal(end.subject, 'transform.done');
  t.equal(end.data.outcome, 'failed');
  t.match(end.data.error, /no longer exists/);
  t.same(p.starts('transform'), [runId], 'not started again');
});

t.test('a lock holder frozen past its lease: a new run proceeds; the old holder neither publishes a stale outcome nor releases the new lock', async (t) => {
  // The loader holds the transform lock during its loads. Frozen, it stops refreshing; the lease expires.
  const script = 'case "$BRAIN_RUN_ID" in new*) sleep 8; echo "No new data";; *) echo "New data was transformed";; esac';
  const p = await Pipeline.start({
    env: { ACK_WAIT: '60', LOCK_TTL: '2' },
    envFiles: { transform: { SCRIPT: script }, loadProcessed: { TARGET: 'processed', SLEEP: '3' }, loadViz: { TARGET: 'viz', SLEEP: '3' } },
    services: ['transformer', 'model-gate', 'trainer'],
  });
  t.teardown(() => p.close());
  const loader = spawnService(['service', 'loader'], { ...p.env, HEALTH_PORT: '0' });
  t.teardown(() => loader.signal('SIGKILL'));
  await loader.waitForLog(/services started/);
  const oldRun = uid('old');
  await p.publish('transform.trigger', { runId: oldRun });
  await waitForContainer(oldRun, 'load-processed');
  loader.signal('SIGSTOP');
  await new Promise((r) => setTimeout(r, 3500)); // past the 2 s lease
  const newRun = uid('new');
  await p.publish('transform.trigger', { runId: newRun });
  await waitForContainer(newRun, 'transform');
  loader.signal('SIGCONT');
  const oldEnd = await p.waitForRunEnd(oldRun, 30_000);
  t.equal(oldEnd.subject, 'load.done');
  t.equal(oldEnd.data.outcome, 'failed', 'the woken holder reports its run failed, not loaded');
  t.match(oldEnd.data.error, /lock was lost/);
  t.notOk(p.trail(oldRun).includes('model.trigger'), 'no stale model step');
  const lock = await p.client.request('$JS.API.DIRECT.GET.KV_locks', JSON.stringify({ last_by_subj: '$KV.locks.transform' })).catch(() => null);
  t.match(lock?.string() ?? '', new RegExp(newRun), 'the new run still holds the lock after the old holder woke');
  const newEnd = await p.waitForRunEnd(newRun, 40_000);
  t.equal(newEnd.data.outcome, 'no-new-data');
});
