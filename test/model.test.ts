import t from 'tap';
import { LABELS } from '../shared/docker';
import { containerEventsBetween } from '../kit/containers';
import { Pipeline, docker, uid, waitForContainer } from '../kit/pipeline';

// The subtests share nothing (each has its own nats-server, services, run dirs and run ids): run a few at once.
t.jobs = 3;

const modelServices = ['model-gate', 'trainer'] as const;

/**
 * The stages dockerd created a container of for the run, in order, from its event log: containers that ran
 * and were removed since still count, so "no gate container ran" is Docker's word, not missing log lines.
 */
async function stagesCreatedFor(runId: string, sinceMs: number): Promise<string[]> {
  const events = await containerEventsBetween(docker, 'create', `${LABELS.runId}=${runId}`, Math.floor(sinceMs / 1000) - 1, Math.floor(Date.now() / 1000) + 1);
  return events.map((a) => a[LABELS.stage] ?? '?');
}

t.test('DEV_FORCE_TRAINING runs the gate container, then trains whatever it said', async (t) => {
  const p = await Pipeline.start({ env: { DEV_FORCE_TRAINING: 'true', DEV_SKIP_MODEL: 'true' }, envFiles: { modelTrigger: { MISMATCH: '0' } }, services: modelServices });
  t.teardown(() => p.close());
  const since = Date.now();
  const runId = uid('m');
  await p.publish('model.trigger', { runId });
  const end = await p.waitForSubject('model.done', runId);
  t.equal(end.data.outcome, 'trained');
  t.same(p.trail(runId), ['model.trigger', 'model.mismatch', 'model.done trained']);
  t.equal(p.eventsOf(runId).find((e) => e.subject === 'model.mismatch')?.data.reason, 'forced');
  t.ok(p.logLinesOf(runId, 'model-trigger').length > 0, 'the gate container ran, as in the seed');
  t.same(await stagesCreatedFor(runId, since), ['model-trigger', 'train'], 'Docker created the gate container, then the training one');
  t.same(p.starts('train'), [runId]);
});

t.test('DEV_SKIP_TRIGGER trains without running the gate container', async (t) => {
  const p = await Pipeline.start({ env: { DEV_SKIP_TRIGGER: '1' }, envFiles: { modelTrigger: { MISMATCH: '0' } }, services: modelServices });
  t.teardown(() => p.close());
  const since = Date.now();
  const runId = uid('m');
  await p.publish('model.trigger', { runId });
  const end = await p.waitForSubject('model.done', runId);
  t.equal(end.data.outcome, 'trained');
  t.equal(p.eventsOf(runId).find((e) => e.subject === 'model.mismatch')?.data.reason, 'forced');
  t.same(await stagesCreatedFor(runId, since), ['train'], 'Docker created the training container and no gate container');
  t.same(p.logLinesOf(runId, 'model-trigger'), [], 'no gate output either');
});

t.test('DEV_SKIP_MODEL ends the model step skipped', async (t) => {
  const p = await Pipeline.start({ env: { DEV_SKIP_MODEL: 'true' }, services: modelServices });
  t.teardown(() => p.close());
  const since = Date.now();
  const runId = uid('m');
  await p.publish('model.trigger', { runId });
  const end = await p.waitForSubject('model.done', runId);
  t.equal(end.data.outcome, 'skipped');
  t.same(await stagesCreatedFor(runId, since), [], 'Docker created no container for the run');
  t.same(p.logLinesOf(runId, 'model-trigger'), []);
  t.same(p.starts('train'), []);
});

t.test('a hand-published model.trigger with an empty body or {} works', async (t) => {
  const p = await Pipeline.start({ envFiles: { modelTrigger: { MISMATCH: '0' } }, services: modelServices });
  t.teardown(() => p.close());
  await p.publish('model.trigger', '');
  const first = await p.waitFor((e) => e.subject === 'model.done');
  t.equal(first.data.outcome, 'up-to-date');
  t.match(first.data.runId, /^m\d+-[a-z0-9]+$/, 'a run id was generated');
  await p.publish('model.trigger', {});
  const second = await p.waitFor((e) => e.subject === 'model.done' && e.data.runId !== first.data.runId);
  t.equal(second.data.outcome, 'up-to-date');
});

t.test('a hand-published model.trigger while training ends busy and starts no container', async (t) => {
  const p = await Pipeline.start({ envFiles: { train: { SLEEP: '3' } }, services: modelServices });
  t.teardown(() => p.close());
  const since = Date.now();
  const first = uid('m');
  await p.publish('model.trigger', { runId: first });
  await waitForContainer(first, 'train');
  const second = uid('m');
  await p.publish('model.trigger', { runId: second });
  const busy = await p.waitForSubject('model.done', second);
  t.equal(busy.data.outcome, 'busy');
  t.match(busy.data.error, new RegExp(first));
  t.same(p.logLinesOf(second, 'model-trigger'), [], 'no gate output for the busy trigger');
  t.equal((await p.waitForSubject('model.done', first)).data.outcome, 'trained');
  t.same(await stagesCreatedFor(second, since), [], 'Docker created no container for the busy trigger');
  t.same(await stagesCreatedFor(first, since), ['model-trigger', 'train'], 'and the gate and training containers of the run that held the lock');
  t.same(p.starts('train'), [first], 'one training container');
  const third = uid('m');
  await p.publish('model.trigger', { runId: third });
  t.equal((await p.waitForSubject('model.done', third)).data.outcome, 'trained', 'the model lock was released');
});
