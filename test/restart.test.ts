import t from 'tap';
import { Pipeline, uid, waitForContainer, docker } from '../kit/pipeline';

// The tests share nothing (each has its own nats-server, services, run dirs and run ids): run a few at once; the two that
// time a start in ms run alone (not buffered: the others wait).
t.jobs = 3;

t.test('a service restarted mid-run adopts its running container and finishes the run', async (t) => {
  const p = await Pipeline.start({ envFiles: { transform: { NEW_DATA: '1', SLEEP: '3' } } });
  t.teardown(() => p.close());
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  const container = await waitForContainer(runId, 'transform');
  await p.stopServices();
  const info = await docker.getContainer(container.Id).inspect();
  t.ok(info.State.Running, 'the container kept running while the service was down');
  await p.startServices();
  const end = await p.waitForRunEnd(runId, 30_000);
  t.equal(end.data.outcome, 'trained');
  t.same(p.trail(runId), ['transform.trigger', 'transform.done new-data', 'data.new', 'load.done loaded', 'model.trigger', 'model.mismatch', 'model.done trained']);
  t.same(p.starts('transform'), [runId], 'one transform container, adopted rather than started again');
  t.same(await p.leftBehind(runId), []);
});

t.test('a service restarted after its container ended reads the outcome from the exited container', async (t) => {
  const p = await Pipeline.start({ envFiles: { train: { SLEEP: '4', EXIT_CODE: '4' } }, services: ['model-gate', 'trainer'] });
  t.teardown(() => p.close());
  const runId = uid('m');
  await p.publish('model.trigger', { runId });
  const container = await waitForContainer(runId, 'train');
  await p.stopServices();
  await docker.getContainer(container.Id).wait();
  await p.startServices();
  const end = await p.waitForSubject('model.done', runId, 30_000);
  t.equal(end.data.outcome, 'failed');
  t.equal(end.data.exitCode, 4, 'the exit code of the container that ran while the service was down');
  t.same(p.starts('train'), [runId]);
  t.same(await p.leftBehind(runId), []);
});

t.test('events published while a service is down are handled when it comes back', async (t) => {
  const p = await Pipeline.start({ envFiles: { transform: { NEW_DATA: '0' } } });
  t.teardown(() => p.close());
  await p.stopServices();
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  await new Promise((r) => setTimeout(r, 300));
  t.same(p.trail(runId), ['transform.trigger'], 'nothing happened while down');
  await p.startServices();
  t.equal((await p.waitForRunEnd(runId)).data.outcome, 'no-new-data');
});

/** Milliseconds from `since` until the run's transform container has started (the stand-in image records each start). */
async function msUntilStarted(p: Pipeline, runId: string, since: number, timeoutMs = 40_000): Promise<number> {
  while (!p.starts('transform').includes(runId)) {
    if (Date.now() - since > timeoutMs) throw new Error(`no transform container for ${runId} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return Date.now() - since;
}

/**
 * A graceful stop leaves no pull request of ours on the server and hands back (nak, no delay) anything
 * delivered to it but not started, so the next instance gets a trigger at once, not after the ack wait (30 s).
 */
t.test('a trigger right after a graceful restart starts its run within seconds, not after the ack wait', { buffered: false }, async (t) => {
  const p = await Pipeline.start({ envFiles: { transform: { NEW_DATA: '0' } } });
  t.teardown(() => p.close());
  t.equal(p.config.ackWaitMs, 30_000, 'the default ack wait');
  for (let round = 0; round < 3; round++) {
    await p.stopServices();
    await p.startServices();
    const runId = uid();
    const sent = Date.now();
    await p.publish('transform.trigger', { runId });
    const started = await msUntilStarted(p, runId, sent);
    t.ok(started < 3000, `round ${round}: the transform container started ${started} ms after the trigger`);
    t.equal((await p.waitForSubject('transform.done', runId, 20_000)).data.outcome, 'no-new-data');
  }
});

t.test('a trigger published while the services stop is handed to the next instance at once', { buffered: false }, async (t) => {
  const p = await Pipeline.start({ envFiles: { transform: { NEW_DATA: '0' } } });
  t.teardown(() => p.close());
  let handedBackWhileStopping = 0;
  for (let round = 0; round < 3; round++) {
    const runId = uid();
    const before = p.logLines.length;
    const stopping = p.stopServices();
    await p.publish('transform.trigger', { runId });
    await stopping;
    if (p.logLines.slice(before).some((l) => l.includes('delivered while stopping'))) handedBackWhileStopping++;
    const restarted = Date.now();
    await p.startServices();
    const started = await msUntilStarted(p, runId, restarted);
    t.ok(started < 3000, `round ${round}: the transform container started ${started} ms after the restart`);
    t.equal((await p.waitForSubject('transform.done', runId, 20_000)).data.outcome, 'no-new-data', `round ${round}: the run ended`);
    t.same(
      p.starts('transform').filter((r) => r === runId),
      [runId],
      'one transform container',
    );
  }
  t.ok(handedBackWhileStopping > 0, `the stopping instance received a trigger and handed it back (${handedBackWhileStopping} of 3 rounds)`);
});
