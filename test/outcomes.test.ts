import t from 'tap';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Pipeline, uid, type PipelineOptions } from '../kit/pipeline';

// The subtests share nothing (each has its own nats-server, services, run dirs and run ids): run a few at once.
t.jobs = 4;

/** Starts a pipeline, runs one transform run to its end and hands back the pipeline and run id. */
async function runOnce(t: { teardown(fn: () => unknown): void }, opts: PipelineOptions, timeoutMs?: number) {
  const p = await Pipeline.start(opts);
  t.teardown(() => p.close());
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  const end = await p.waitForRunEnd(runId, timeoutMs);
  return { p, runId, end };
}

t.test('no new data ends the run with transform.done no-new-data and starts no load', async (t) => {
  const { p, runId, end } = await runOnce(t, { envFiles: { transform: { NEW_DATA: '0' } } });
  t.equal(end.data.outcome, 'no-new-data');
  t.equal(end.data.exitCode, 0);
  t.same(p.trail(runId), ['transform.trigger', 'transform.done no-new-data']);
  t.same(p.starts('load'), []);
  t.same(await p.leftBehind(runId), []);
});

t.test('the phrase is found when it is not on the last line', async (t) => {
  const { p, runId, end } = await runOnce(t, { envFiles: { transform: { NEW_DATA: '1', TRAILING: '1' } } });
  t.equal(end.data.outcome, 'trained');
  t.ok(p.trail(runId).includes('transform.done new-data'));
  const lines = p.logLinesOf(runId, 'transform');
  t.ok(lines.indexOf('New data was transformed') < lines.indexOf('transform finished'), 'the phrase was not the last line');
});

t.test('the phrase is found in a large log, past many chunks', async (t) => {
  const script =
    'i=0; while [ $i -lt 2000 ]; do echo "line $i of a long transform log padded to make it somewhat longer than usual"; i=$((i+1)); done | head -c 150000; echo; yes "filler output line" | head -n 300000; echo "New data was transformed"; yes "after" | head -n 1000';
  const { p, runId, end } = await runOnce(t, { envFiles: { transform: { SCRIPT: script } } });
  t.equal(p.trail(runId)[1], 'transform.done new-data');
  t.equal(end.subject, 'model.done');
  t.ok(p.logLinesOf(runId, 'transform').length > 300_000, 'every line forwarded');
});

t.test('IS_DEVELOPMENT skips the loads and goes straight to the model step', async (t) => {
  const { p, runId, end } = await runOnce(t, { env: { IS_DEVELOPMENT: 'true' } });
  t.equal(end.data.outcome, 'trained');
  t.same(p.trail(runId), ['transform.trigger', 'transform.done new-data', 'data.new', 'load.done skipped', 'model.trigger', 'model.mismatch', 'model.done trained']);
  t.same(p.starts('load'), [], 'no load container ran');
  t.same(readdirSync(p.dirs.processed), [`${runId}.csv`], 'the data stays where the transform put it');
});

t.test('a failing transform container ends the run failed with its exit code', async (t) => {
  const { p, runId, end } = await runOnce(t, { envFiles: { transform: { NEW_DATA: '1', EXIT_CODE: '3' } } });
  t.equal(end.subject, 'transform.done');
  t.equal(end.data.outcome, 'failed');
  t.equal(end.data.exitCode, 3);
  t.match(end.data.error, /exited with code 3/);
  t.same(await p.leftBehind(runId), []);
});

t.test('a failing load fails the run; the lock is released for the next run', async (t) => {
  const { p, runId, end } = await runOnce(t, { envFiles: { loadViz: { TARGET: 'viz', EXIT_CODE: '2' } } });
  t.equal(end.subject, 'load.done');
  t.equal(end.data.outcome, 'failed');
  t.same(end.data.loads, [
    { target: 'processed', outcome: 'loaded', exitCode: 0 },
    { target: 'viz', outcome: 'failed', exitCode: 2 },
  ]);
  t.match(end.data.error, /load viz: the container exited with code 2/);
  t.notOk(p.trail(runId).includes('model.trigger'), 'no model step after a failed load');
  const next = uid();
  await p.publish('transform.trigger', { runId: next });
  const nextTransform = await p.waitForSubject('transform.done', next);
  t.equal(nextTransform.data.outcome, 'new-data', 'the next run was not blocked');
  await p.waitForRunEnd(next);
});

t.test('the two loads run in parallel', async (t) => {
  // A rendezvous: each load marks itself started and waits (10 s at most) for the other's mark; run one
  // after the other, the first would give up and fail.
  const rendezvous = (mine: string, theirs: string) =>
    `touch /root/.aws/${mine}.ready; i=0; while [ ! -f /root/.aws/${theirs}.ready ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; test -f /root/.aws/${theirs}.ready`;
  const { p, runId } = await runOnce(t, {
    envFiles: { loadProcessed: { SCRIPT: rendezvous('processed', 'viz') }, loadViz: { SCRIPT: rendezvous('viz', 'processed') } },
  });
  const load = p.eventsOf(runId).find((e) => e.subject === 'load.done');
  t.equal(load?.data.outcome, 'loaded', 'each load saw the other running');
});

t.test('a gate that logs an error without the phrase means up-to-date', async (t) => {
  const { p, runId, end } = await runOnce(t, { envFiles: { modelTrigger: { MISMATCH: '0' } } });
  t.equal(end.data.outcome, 'up-to-date');
  t.equal(end.data.exitCode, 0);
  t.same(p.starts('train'), []);
  t.ok(
    p.logLinesOf(runId, 'model-trigger').some((l) => l.startsWith('ERROR')),
    'the gate printed its own error',
  );
});

t.test('a non-zero gate exit is a failure', async (t) => {
  const { end } = await runOnce(t, { envFiles: { modelTrigger: { MISMATCH: '1', EXIT_CODE: '1' } } });
  t.equal(end.subject, 'model.done');
  t.equal(end.data.outcome, 'failed');
  t.equal(end.data.exitCode, 1);
});

t.test('a failing training container ends model.done failed', async (t) => {
  const { p, runId, end } = await runOnce(t, { envFiles: { train: { EXIT_CODE: '1' } } });
  t.equal(end.data.outcome, 'failed');
  t.equal(end.data.exitCode, 1);
  t.same(p.trail(runId).slice(-2), ['model.mismatch', 'model.done failed']);
  t.same(await p.leftBehind(runId), []);
});

t.test('a missing image fails the stage with a clear error and the service keeps serving', async (t) => {
  const { p, end } = await runOnce(t, { env: { TRANSFORM_IMAGE: 'brain-test-does-not-exist:1' } });
  t.equal(end.data.outcome, 'failed');
  t.equal(end.data.exitCode, null);
  t.match(end.data.error, /brain-test-does-not-exist:1.*PULL_POLICY=never/);
  const next = uid();
  await p.publish('transform.trigger', { runId: next });
  t.equal((await p.waitForRunEnd(next)).data.outcome, 'failed', 'the next trigger is handled too');
});

t.test('a pull that cannot reach a registry fails the stage clearly', async (t) => {
  const { end } = await runOnce(t, { env: { TRANSFORM_IMAGE: '127.0.0.1:9/brain/nothing:1', PULL_POLICY: 'missing' } }, 60_000);
  t.equal(end.data.outcome, 'failed');
  t.match(end.data.error, /could not pull image 127\.0\.0\.1:9\/brain\/nothing:1/);
});

t.test('a stage past its timeout is stopped and fails', async (t) => {
  const started = Date.now();
  const { p, runId, end } = await runOnce(t, { env: { TRANSFORM_TIMEOUT: '1' }, envFiles: { transform: { SLEEP: '60', NEW_DATA: '1' } } });
  t.equal(end.data.outcome, 'failed');
  t.match(end.data.error, /timed out after 1 s/);
  t.ok(Date.now() - started < 20_000, 'stopped well before the container would have ended');
  t.same(await p.leftBehind(runId), [], 'the stopped container was removed');
});

t.test('a bad mount fails the stage with a clear error', async (t) => {
  const p = await Pipeline.start({});
  t.teardown(() => p.close());
  await p.stopServices();
  p.env.HOST_VIZ_DIR = join(p.dirs.root, 'does-not-exist');
  await p.startServices();
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  const end = await p.waitForRunEnd(runId);
  t.equal(end.data.outcome, 'failed');
  t.match(end.data.error, /does-not-exist/);
  t.same(await p.leftBehind(runId), []);
});

t.test('Docker being unreachable fails the stage clearly; the service stays up', async (t) => {
  const Docker = (await import('dockerode')).default;
  const { p, end } = await runOnce(t, { docker: new Docker({ socketPath: '/tmp/brain-no-such-docker.sock' }) });
  t.equal(end.data.outcome, 'failed');
  t.match(end.data.error, /Docker engine unreachable/);
  t.ok(p.running !== undefined);
});
