/**
 * The container runner against the real Docker engine: it creates first and inspects only when Docker
 * refuses, so these cover what a refused create leads to.
 */
import t from 'tap';
import { Writable } from 'node:stream';
import { LABELS, containerName, createContainerRunner, type PullPolicy } from '../shared/docker';
import { createLogger } from '../shared/logger';
import { ErrorCode, StageError } from '../shared/errors';
import { TEST_IMAGES } from '../kit/stand-ins';
import { gateSpec, removingAfterExit } from './helpers/runner';
import { docker, uid } from '../kit/pipeline';

const instance = `runner-test-${uid()}`;

function runnerWith(pullPolicy: PullPolicy) {
  const logLines: string[] = [];
  const started: string[] = [];
  const sink = new Writable({ write: (chunk: Buffer, _enc, done) => (logLines.push(chunk.toString()), done()) });
  const runner = createContainerRunner({
    docker,
    pullPolicy,
    service: 'runner-test',
    instance,
    logger: createLogger('runner-test', 'info', sink),
    onContainerStart: (stage) => started.push(stage),
  });
  return { runner: removingAfterExit(runner), started, logged: () => logLines.join('') };
}

/** A container under the stage's deterministic name, as an earlier delivery of the run would have left it. */
async function earlierContainer(runId: string, script: string, start: boolean) {
  const container = await docker.createContainer({
    name: containerName('model-trigger', runId, instance),
    Image: TEST_IMAGES.modelTrigger,
    Env: [`SCRIPT=${script}`],
    Labels: { [LABELS.managed]: 'true', [LABELS.instance]: instance, [LABELS.stage]: 'model-trigger', [LABELS.runId]: runId },
  });
  if (start) await container.start();
  return container;
}

const remaining = async (runId: string) => docker.listContainers({ all: true, filters: { label: [`${LABELS.runId}=${runId}`] } });

t.test('a new stage: one create, started, scanned, removed', async (t) => {
  const { runner, started } = runnerWith('never');
  const runId = uid();
  const result = await runner.run(gateSpec(runId, 'echo the phrase; exit 3'));
  t.match(result, { status: 'exited', exitCode: 3, phraseFound: true, adopted: false });
  t.same(started, ['model-trigger']);
  t.same(await remaining(runId), []);
});

t.test('the run’s container already running (a redelivery): adopted, not started twice', async (t) => {
  const { runner, started, logged } = runnerWith('never');
  const runId = uid();
  await earlierContainer(runId, 'sleep 1; echo the phrase', true);
  const lines: string[] = [];
  const result = await runner.run(gateSpec(runId, 'echo second start', { onLines: (_s, l) => void lines.push(...l) }));
  t.match(result, { status: 'exited', exitCode: 0, phraseFound: true, adopted: true });
  t.same(started, [], 'no container was started');
  t.same(lines, ['the phrase'], 'the output is the running container’s');
  t.match(logged(), /adopting existing container/);
  t.same(await remaining(runId), []);
});

t.test('the run’s container created but never started: replaced by a fresh one', async (t) => {
  const { runner, started } = runnerWith('never');
  const runId = uid();
  await earlierContainer(runId, 'echo stale container', false);
  const lines: string[] = [];
  const result = await runner.run(gateSpec(runId, 'echo the phrase', { onLines: (_s, l) => void lines.push(...l) }));
  t.match(result, { status: 'exited', exitCode: 0, phraseFound: true, adopted: false });
  t.same(lines, ['the phrase'], 'the output is the new container’s');
  t.same(started, ['model-trigger']);
  t.same(await remaining(runId), []);
});

t.test('an image that is not there: PULL_POLICY=never refuses clearly, missing tries a pull and says why it failed', async (t) => {
  const image = 'brain-test-not-built:1';
  const never = await runnerWith('never')
    .runner.run(gateSpec(uid(), 'true', { image }))
    .catch((err: unknown) => err);
  t.ok(never instanceof StageError);
  t.match(never, { code: ErrorCode.ImageNotFound, message: /brain-test-not-built:1 is not present and PULL_POLICY=never/ });
  const missing = await runnerWith('missing')
    .runner.run(gateSpec(uid(), 'true', { image: '127.0.0.1:9/brain/nothing:1' }))
    .catch((err: unknown) => err);
  t.match(missing, { code: ErrorCode.PullFailed, message: /pull image 127\.0\.0\.1:9\/brain\/nothing:1/ });
});

t.test('resuming a run whose container is gone fails instead of starting it again', async (t) => {
  const { runner } = runnerWith('never');
  const runId = uid();
  const err = await runner.run(gateSpec(runId, 'true', { adoptOnly: true })).catch((e: unknown) => e);
  t.match(err, { code: ErrorCode.ContainerGone, message: /no longer exists/ });
  t.same(await remaining(runId), []);
});
