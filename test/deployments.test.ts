/**
 * Two deployments (each its own nats-server, so its own deployment id) sharing one Docker engine, as
 * staging and production on one host do: the same run id (every scheduled run has the same one
 * everywhere) runs in both at once, and neither ever sees, adopts or touches the other's containers.
 */
import t from 'tap';
import { LABELS, deploymentToken } from '../shared/docker';
import { Pipeline, docker, uid } from '../kit/pipeline';

interface ContainerEvent {
  action: string;
  name: string;
  instance: string;
  stage: string;
  time: number;
}

/** Docker's own record of the run's containers (create, start, die, destroy), whoever made them. */
async function recordContainerEvents(runId: string) {
  const events: ContainerEvent[] = [];
  const stream = (await docker.getEvents({
    filters: { type: ['container'], label: [`${LABELS.runId}=${runId}`], event: ['create', 'start', 'die', 'destroy'] },
  })) as NodeJS.ReadableStream & { destroy(): void };
  let partial = '';
  stream.on('data', (chunk: Buffer) => {
    const lines = (partial + chunk.toString()).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines.filter((l) => l.trim() !== '')) {
      const e = JSON.parse(line) as { Action: string; timeNano: number; Actor: { Attributes: Record<string, string> } };
      const a = e.Actor.Attributes;
      events.push({ action: e.Action, name: a.name ?? '', instance: a[LABELS.instance] ?? '', stage: a[LABELS.stage] ?? '', time: e.timeNano / 1e6 });
    }
  });
  return { events, stop: () => stream.destroy() };
}

t.test('two deployments on one Docker engine, the same run id in both at once: each run its own containers and its own outcome', async (t) => {
  const [a, b] = await Promise.all([
    Pipeline.start({ envFiles: { transform: { NEW_DATA: '1', SLEEP: '2' } } }),
    Pipeline.start({ envFiles: { transform: { NEW_DATA: '0', SLEEP: '2' } } }),
  ]);
  t.teardown(() => Promise.all([a.close(), b.close()]));
  const instanceA = a.running?.instance ?? '';
  const instanceB = b.running?.instance ?? '';
  t.not(instanceA, instanceB, 'two deployment ids');

  const runId = `s${new Date().toISOString().slice(0, 16).replace(/[-:]/g, '')}Z-${uid('')}`; // like a scheduled run's id
  const recorder = await recordContainerEvents(runId);
  t.teardown(recorder.stop);
  await Promise.all([a.publish('transform.trigger', { runId }), b.publish('transform.trigger', { runId })]);
  const [endA, endB] = await Promise.all([a.waitForRunEnd(runId, 90_000), b.waitForRunEnd(runId, 90_000)]);
  await new Promise((r) => setTimeout(r, 500)); // the last destroy events
  recorder.stop();

  t.equal(endA.data.outcome, 'trained', 'deployment A: new data, loaded, trained');
  t.same(a.trail(runId), ['transform.trigger', 'transform.done new-data', 'data.new', 'load.done loaded', 'model.trigger', 'model.mismatch', 'model.done trained']);
  t.equal(endB.subject, 'transform.done');
  t.equal(endB.data.outcome, 'no-new-data', 'deployment B: no new data');
  t.same(b.trail(runId), ['transform.trigger', 'transform.done no-new-data']);

  // Each deployment ran its own transform container and read its own output.
  t.same(a.starts('transform'), [runId], 'A started one transform container');
  t.same(b.starts('transform'), [runId], 'B started one transform container');
  t.ok(a.logLinesOf(runId, 'transform').includes('New data was transformed'));
  t.notOk(a.logLinesOf(runId, 'transform').includes('No new data found'), 'A never read B’s output');
  t.ok(b.logLinesOf(runId, 'transform').includes('No new data found'));
  t.notOk(b.logLinesOf(runId, 'transform').includes('New data was transformed'), 'B never read A’s output');
  for (const p of [a, b])
    t.notOk(
      p.logLines.some((l) => l.includes('adopting existing container')),
      'nothing was adopted',
    );

  // Docker's own record: every container was created under its deployment's token and label.
  const created = recorder.events.filter((e) => e.action === 'create');
  const ofA = created.filter((e) => e.instance === instanceA);
  const ofB = created.filter((e) => e.instance === instanceB);
  t.equal(created.length, ofA.length + ofB.length, 'no container of any other deployment');
  t.same(ofA.map((e) => e.stage).sort(), ['load-processed', 'load-viz', 'model-trigger', 'train', 'transform']);
  t.same(
    ofB.map((e) => e.stage),
    ['transform'],
  );
  for (const e of ofA) t.equal(e.name, `brain-${e.stage}-${deploymentToken(instanceA)}-${runId}`);
  for (const e of ofB) t.equal(e.name, `brain-${e.stage}-${deploymentToken(instanceB)}-${runId}`);
  const span = (e: ContainerEvent[], instance: string) => {
    const of = e.filter((x) => x.instance === instance && x.stage === 'transform');
    return { start: of.find((x) => x.action === 'start')?.time ?? NaN, die: of.find((x) => x.action === 'die')?.time ?? NaN };
  };
  const [sa, sb] = [span(recorder.events, instanceA), span(recorder.events, instanceB)];
  t.ok(sa.start < sb.die && sb.start < sa.die, 'the two transform containers of the run ran at the same time');
  t.equal(recorder.events.filter((e) => e.action === 'destroy').length, created.length, 'each removed, by its own deployment');
  t.same(await a.leftBehind(runId), []);
});
