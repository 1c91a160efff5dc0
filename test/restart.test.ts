import t from 'tap';
import { Pipeline, uid, waitForContainer, docker } from './helpers/pipeline';

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
  t.same(await p.containers(runId), []);
});

t.test('a service restarted after its container ended reads the outcome from the exited container', async (t) => {
  const p = await Pipeline.start({ envFiles: { train: { SLEEP: '1', EXIT_CODE: '4' } }, services: ['model-gate', 'trainer'] });
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
  t.same(await p.containers(runId), []);
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
