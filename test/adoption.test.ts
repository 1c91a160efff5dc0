/**
 * A stage service killed -9 while its container runs, restarted later: the container it adopts is judged by
 * its own exit and read with the secrets it was started with, whatever happened meanwhile.
 */
import t from 'tap';
import { Pipeline, uid, waitForContainer } from '../kit/pipeline';
import { spawnService, type ServiceProcess } from '../kit/service-process';
import { writeEnvFiles } from '../kit/run-dirs';

// The subtests share nothing (each has its own nats-server, services, run dirs and run ids): run them at once.
t.jobs = 2;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
type Teardown = { teardown(fn: () => unknown): void };

/** The transformer as a real child process, stopped (SIGTERM) at teardown unless it was killed. */
function transformer(t: Teardown, env: Record<string, string>): ServiceProcess {
  const child = spawnService(['service', 'transformer'], { ...env, HEALTH_PORT: '0' });
  t.teardown(async () => {
    child.signal('SIGTERM');
    await child.exited;
  });
  return child;
}

t.test('killed -9 mid-container, back after the stage’s deadline: a container that exited within its limit is new data, not “timed out”', async (t) => {
  const p = await Pipeline.start({
    env: { TRANSFORM_TIMEOUT: '4', ACK_WAIT: '2', LOCK_TTL: '2' },
    envFiles: { transform: { NEW_DATA: '1', SLEEP: '2' } },
    services: ['loader', 'model-gate', 'trainer'],
  });
  t.teardown(() => p.close());
  const first = transformer(t, p.env);
  await first.waitForLog(/services started/);
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  await waitForContainer(runId, 'transform');
  const startedAt = Date.now();
  first.signal('SIGKILL');
  await first.exited;
  await sleep(startedAt + 6000 - Date.now()); // the container exited after ~2 s; its 4 s deadline is long past
  const second = transformer(t, p.env);
  const end = await p.waitForRunEnd(runId, 60_000);
  t.equal(end.data.outcome, 'trained', 'the run went on to the end');
  const done = p.eventsOf(runId).find((e) => e.subject === 'transform.done');
  t.equal(done?.data.outcome, 'new-data', 'judged by its own exit');
  t.equal(done?.data.error, undefined);
  t.same(p.starts('transform'), [runId], 'not started again');
  t.ok(
    second.output.some((l) => l.includes('adopting existing container') && l.includes('"state":"exited"')),
    'the restarted service adopted the exited container',
  );
  t.notOk(
    second.output.some((l) => l.includes('stage timed out')),
    'no timer was armed for it',
  );
  t.same(await p.leftBehind(runId), [], 'nothing left');
});

t.test('a secret rotated while the container runs: the adopted container’s log shows neither the old nor the new value', async (t) => {
  const oldSecret = 'old-secret-4711';
  const newSecret = 'new-secret-0815';
  const script = 'echo "rows" > /app/processed/$BRAIN_RUN_ID.csv; sleep 3; echo "using $SECRET"; echo "New data was transformed"';
  const p = await Pipeline.start({
    env: { ACK_WAIT: '2', LOCK_TTL: '2' },
    envFiles: { transform: { SCRIPT: script, SECRET: oldSecret } },
    services: ['loader', 'model-gate', 'trainer'],
  });
  t.teardown(() => p.close());
  const first = transformer(t, p.env);
  await first.waitForLog(/services started/);
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  await waitForContainer(runId, 'transform');
  first.signal('SIGKILL');
  await first.exited;
  // A deploy rewrites the env file while the container runs.
  writeEnvFiles(p.dirs.env, { transform: { SCRIPT: script, SECRET: newSecret } });
  const second = transformer(t, p.env);
  t.equal((await p.waitForRunEnd(runId, 60_000)).data.outcome, 'trained');
  t.ok(
    second.output.some((l) => l.includes('adopting existing container')),
    'the container was adopted',
  );
  const lines = p.logLinesOf(runId, 'transform');
  t.ok(lines.includes('using ****'), 'the line is there, masked');
  const published = JSON.stringify(p.logBatches.filter((b) => b.data.runId === runId));
  t.notOk(published.includes(oldSecret), 'the value it was started with never appears');
  t.notOk(published.includes(newSecret), 'nor the current one');
  t.notOk(second.output.join('\n').includes(oldSecret), 'nor in the service’s own log');
  t.same(await p.leftBehind(runId), [], 'nothing left');
});
