import t from 'tap';
import { LABELS, containerName } from '../shared/docker';
import type { Stage } from '../shared/events';
import { createLocks } from '../shared/lock';
import { createLogger } from '../shared/logger';
import { openLocks } from '../shared/nats';
import { TEST_IMAGES } from '../kit/stand-ins';
import { Pipeline, docker, uid } from '../kit/pipeline';

const ACK_WAIT_S = 1;
const LOCK_TTL_S = 2;
/** The transformer's sweeper grace, as runServices sets it: 2 × ACK_WAIT + LOCK_TTL. */
const GRACE_MS = (2 * ACK_WAIT_S + LOCK_TTL_S) * 1000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A running, labelled container of the stage for the run, as the runner would have made it (named by `containerName`). */
async function labelledContainer(stage: Stage, runId: string, instance: string): Promise<string> {
  const container = await docker.createContainer({
    name: containerName(stage, runId, instance),
    Image: TEST_IMAGES.transform,
    Entrypoint: ['sleep', '300'],
    Labels: { [LABELS.managed]: 'true', [LABELS.stage]: stage, [LABELS.runId]: runId, [LABELS.service]: 'transformer', [LABELS.instance]: instance },
  });
  await container.start();
  return container.id;
}

async function exists(id: string): Promise<boolean> {
  try {
    await docker.getContainer(id).inspect();
    return true;
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode === 404) return false;
    throw err;
  }
}

/** Resolves with the time the container disappeared. */
async function removedAt(id: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!(await exists(id))) return Date.now();
    await sleep(100);
  }
  throw new Error(`container ${id} still exists after ${timeoutMs} ms`);
}

t.test('the orphan sweeper leaves a container whose run holds its lock; one whose run holds none is removed after the grace period', async (t) => {
  const p = await Pipeline.start({ env: { ACK_WAIT: String(ACK_WAIT_S), LOCK_TTL: String(LOCK_TTL_S) }, services: ['transformer'] });
  const made: string[] = [];
  t.teardown(async () => {
    await p.close();
    for (const id of made)
      await docker
        .getContainer(id)
        .remove({ force: true })
        .catch(() => undefined);
  });
  const instance = p.running?.instance ?? '';
  t.ok(instance !== '', 'the deployment has an id');

  // The transform lock held for run `held`, taken and refreshed exactly as a service takes it.
  const { kv, leader } = await openLocks(p.client, LOCK_TTL_S * 1000);
  const locks = createLocks({ kv, leader, holder: 'orphans-test', ttlMs: LOCK_TTL_S * 1000, logger: createLogger('orphans-test', 'silent') });
  const held = uid('held');
  const free = uid('free');
  const lease = await locks.acquire('transform', held, 'load-processed');
  t.ok(lease !== null, `the transform lock is held for ${held} (by its load stage)`);
  t.teardown(async () => void (await lease?.release()));

  const createdAt = Date.now();
  const heldId = await labelledContainer('transform', held, instance);
  const freeId = await labelledContainer('transform', free, instance);
  // Another deployment's container of an unlocked run: not this sweeper's to touch.
  const foreignId = await labelledContainer('transform', free, `${instance}-other`);
  made.push(heldId, freeId, foreignId);

  const freeGone = await removedAt(freeId, GRACE_MS + 10_000);
  t.ok(freeGone - createdAt >= GRACE_MS, `the container of the unlocked run was removed ${freeGone - createdAt} ms after it appeared, not before the ${GRACE_MS} ms grace`);

  // Well past the grace period and several sweeps (one every grace / 2).
  await sleep(Math.max(0, createdAt + 3 * GRACE_MS - Date.now()));
  t.equal(
    (await docker.getContainer(heldId).inspect()).State.Running,
    true,
    `the container of the locked run is still there and running ${Date.now() - createdAt} ms later (3 × grace)`,
  );
  t.ok(await exists(foreignId), 'the other deployment’s container is left alone');
  t.equal((await locks.read('transform'))?.value?.runId, held, 'the lock is still held for its run');

  // Once its run no longer holds the lock, the same container is an orphan.
  t.equal(await lease?.release(), true, 'the lock is released');
  const releasedAt = Date.now();
  const heldGone = await removedAt(heldId, GRACE_MS + 10_000);
  t.ok(heldGone - releasedAt >= GRACE_MS, `…and its container removed ${heldGone - releasedAt} ms after the release, once the grace period passed`);
  t.ok(await exists(foreignId), 'the other deployment’s container is still left alone');
});
