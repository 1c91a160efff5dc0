/**
 * The container runner at the Docker seam, against the real engine through a socket proxy that can cut
 * the connection (as a dockerd restart does) or end only the attach stream: the outcome always comes
 * from the container's own end, never from a lost connection or a timer armed after the fact.
 */
import t from 'tap';
import { getEventListeners } from 'node:events';
import { Writable } from 'node:stream';
import Docker from 'dockerode';
import { LABELS, containerName, createContainerRunner, type StageSpec } from '../shared/docker';
import { createLogger } from '../shared/logger';
import { ErrorCode } from '../shared/errors';
import { TEST_IMAGES } from '../kit/stand-ins';
import { gateSpec, removingAfterExit } from './helpers/runner';
import { docker, uid } from '../kit/pipeline';
import { startSocketProxy, type SocketProxy } from './helpers/socket-proxy';

// The subtests share nothing (each its own socket proxy, runner and run ids): run a few at once.
t.jobs = 3;

const instance = `runner-faults-${uid()}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function runnerVia(client: Docker) {
  const logLines: string[] = [];
  const started: string[] = [];
  const sink = new Writable({ write: (chunk: Buffer, _enc, done) => (logLines.push(chunk.toString()), done()) });
  const runner = createContainerRunner({
    docker: client,
    pullPolicy: 'never',
    service: 'runner-faults',
    instance,
    logger: createLogger('runner-faults', 'debug', sink),
    onContainerStart: (stage) => started.push(stage),
    stopGraceSeconds: 1,
    maxRetryDelayMs: 500,
  });
  return { runner: removingAfterExit(runner), started, logged: () => logLines.join('') };
}

async function withProxy(t: { teardown(fn: () => unknown): void }): Promise<{ proxy: SocketProxy; client: Docker }> {
  const proxy = await startSocketProxy();
  t.teardown(() => proxy.close());
  return { proxy, client: new Docker({ socketPath: proxy.path }) };
}

/** A stage spec whose lines are collected; `SCRIPT` is what the stand-in gate image runs. */
function spec(runId: string, script: string, over: Partial<StageSpec> = {}) {
  const lines: string[] = [];
  const s = gateSpec(runId, script, { onLines: (_s, l) => void lines.push(...l), ...over });
  return { spec: s, lines };
}

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

const remaining = async (runId: string) => docker.listContainers({ all: true, filters: { label: [`${LABELS.runId}=${runId}`] } });
const logRequests = (proxy: SocketProxy) => proxy.requests.filter((r) => r.endsWith('/logs')).length;

// First, as the longest (15 runs one after another): the shorter tests run beside it.
t.test('one long-lived signal through 15 runs: no listener left behind, no MaxListenersExceededWarning', async (t) => {
  const { runner } = runnerVia(docker);
  const shutdown = new AbortController();
  const warnings: string[] = [];
  const onWarning = (w: Error) => void warnings.push(w.name);
  process.on('warning', onWarning);
  t.teardown(() => void process.off('warning', onWarning));
  for (let i = 0; i < 15; i++) {
    const result = await runner.run(spec(uid(), 'echo the phrase', { signal: shutdown.signal }).spec);
    t.equal(result.status, 'exited');
    t.equal(getEventListeners(shutdown.signal, 'abort').length, 0, `no abort listener left after run ${i + 1}`);
  }
  await sleep(100); // warnings are emitted on the next tick
  t.same(
    warnings.filter((w) => w === 'MaxListenersExceededWarning'),
    [],
  );
});

t.test('the attach stream ends before the container exits: the rest is read from its log, nothing twice, nothing lost', async (t) => {
  const { proxy, client } = await withProxy(t);
  const { runner } = runnerVia(client);
  const runId = uid();
  const { spec: s, lines } = spec(runId, 'echo line 1; echo err 1 >&2; sleep 2; echo the phrase; echo line 3; echo err 2 >&2');
  const running = runner.run(s);
  await until('the first lines', () => lines.includes('line 1') && lines.includes('err 1'));
  t.equal(proxy.endAttach(), 1, 'the attach connection was ended');
  const result = await running;
  t.match(result, { status: 'exited', exitCode: 0, phraseFound: true, timedOut: false, adopted: false });
  t.same(
    lines.filter((l) => l.startsWith('line') || l === 'the phrase'),
    ['line 1', 'the phrase', 'line 3'],
    'each stdout line once, in order',
  );
  t.same(
    lines.filter((l) => l.startsWith('err')),
    ['err 1', 'err 2'],
    'each stderr line once, in order',
  );
  t.ok(logRequests(proxy) >= 1, 'the log was followed');
  t.same(await remaining(runId), []);
});

t.test('Docker unreachable while the container runs on and exits: its exit status and every line once', async (t) => {
  const { proxy, client } = await withProxy(t);
  const { runner } = runnerVia(client);
  const runId = uid();
  const { spec: s, lines } = spec(runId, 'echo before; sleep 1; echo the phrase; echo after; exit 3');
  const running = runner.run(s);
  await until('the first line', () => lines.includes('before'));
  await proxy.cut();
  await sleep(3000); // the container exits meanwhile
  t.equal((await docker.listContainers({ all: true, filters: { label: [`${LABELS.runId}=${runId}`], status: ['exited'] } })).length, 1, 'it exited while Docker was away');
  await proxy.restore();
  const result = await running;
  t.match(result, { status: 'exited', exitCode: 3, phraseFound: true, timedOut: false });
  t.same(lines, ['before', 'the phrase', 'after']);
  t.same(await remaining(runId), []);
});

t.test('Docker unreachable, back while the container still runs: it is followed again to its end', async (t) => {
  const { proxy, client } = await withProxy(t);
  const { runner } = runnerVia(client);
  const runId = uid();
  const { spec: s, lines } = spec(runId, 'echo before; sleep 3; echo the phrase');
  const running = runner.run(s);
  await until('the first line', () => lines.includes('before'));
  await proxy.cut();
  await sleep(1000);
  await proxy.restore();
  const result = await running;
  t.match(result, { status: 'exited', exitCode: 0, phraseFound: true });
  t.same(lines, ['before', 'the phrase']);
});

t.test('the answer to the start is lost with the connection: the container (started after all) is followed from its log, not failed', async (t) => {
  const { proxy, client } = await withProxy(t);
  const { runner, started } = runnerVia(client);
  const runId = uid();
  const { spec: s, lines } = spec(runId, 'echo first; sleep 1; echo the phrase');
  proxy.loseAnswerTo(/^\/(v[\d.]+\/)?containers\/[^/]+\/start$/);
  const result = await runner.run(s);
  t.match(result, { status: 'exited', exitCode: 0, phraseFound: true, adopted: false });
  t.same(lines, ['first', 'the phrase'], 'every line once, the first one included');
  t.same(started, ['model-trigger'], 'started once');
  t.equal(proxy.requests.filter((r) => r.endsWith('/start')).length, 1, 'no second start: Docker said it was running');
  t.ok(logRequests(proxy) >= 1, 'its output came from its log');
  t.same(await remaining(runId), []);
});

t.test('the deadline passes while Docker is away: the container is stopped once Docker is back, then reported timed out', async (t) => {
  const { proxy, client } = await withProxy(t);
  const { runner } = runnerVia(client);
  const runId = uid();
  const { spec: s, lines } = spec(runId, 'echo started; exec sleep 60', { timeoutMs: 1500 });
  const running = runner.run(s);
  await until('the first line', () => lines.includes('started'));
  await proxy.cut();
  await sleep(3000);
  t.equal((await docker.listContainers({ filters: { label: [`${LABELS.runId}=${runId}`], status: ['running'] } })).length, 1, 'still running past its deadline');
  let settled = false;
  void running.finally(() => (settled = true));
  await sleep(300);
  t.notOk(settled, 'no outcome while Docker is away');
  const back = Date.now();
  await proxy.restore();
  const result = await running;
  t.match(result, { status: 'exited', timedOut: true });
  t.ok(Date.now() - back < 8000, `stopped soon after Docker was back (${Date.now() - back} ms)`);
  t.same(await remaining(runId), []);
});

t.test('a shutdown while Docker is away hands the run back at once and leaves the container running', async (t) => {
  const { proxy, client } = await withProxy(t);
  const { runner } = runnerVia(client);
  const runId = uid();
  const abort = new AbortController();
  const { spec: s, lines } = spec(runId, 'echo started; exec sleep 60', { signal: abort.signal });
  const running = runner.run(s);
  await until('the first line', () => lines.includes('started'));
  await proxy.cut();
  await sleep(500);
  const asked = Date.now();
  abort.abort();
  const result = await running;
  t.equal(result.status, 'handed-back');
  t.ok(Date.now() - asked < 1000, 'promptly');
  t.equal((await docker.listContainers({ filters: { label: [`${LABELS.runId}=${runId}`], status: ['running'] } })).length, 1, 'left running');
  await docker.getContainer(containerName('model-trigger', runId, instance)).remove({ force: true });
});

t.test('an adopted container that exited within its limit is judged by its own exit, not by a deadline since passed', async (t) => {
  const { runner } = runnerVia(docker);
  const runId = uid();
  // An earlier delivery of the run started it; the service was gone past the deadline.
  const { spec: first } = spec(runId, 'sleep 0.5; echo the phrase', { timeoutMs: 1500 });
  const abort = new AbortController();
  const handedBack = await runner.run({ ...first, signal: abort.signal, onStarted: async () => abort.abort() });
  t.equal(handedBack.status, 'handed-back');
  await sleep(2500);
  const { spec: again, lines } = spec(runId, 'echo not this one', { timeoutMs: 1500, adoptOnly: true });
  const result = await runner.run(again);
  t.match(result, { status: 'exited', exitCode: 0, timedOut: false, phraseFound: true, adopted: true });
  t.same(lines, ['the phrase']);
});

t.test('an adopted container still running past its deadline is stopped at once', async (t) => {
  const { runner } = runnerVia(docker);
  const runId = uid();
  const abort = new AbortController();
  const { spec: first } = spec(runId, 'exec sleep 60', { timeoutMs: 1000 });
  t.equal((await runner.run({ ...first, signal: abort.signal, onStarted: async () => abort.abort() })).status, 'handed-back');
  await sleep(1500);
  const adoptedAt = Date.now();
  const result = await runner.run(spec(runId, 'true', { timeoutMs: 1000, adoptOnly: true }).spec);
  t.match(result, { status: 'exited', timedOut: true, adopted: true });
  t.ok(Date.now() - adoptedAt < 5000, `stopped at once (${Date.now() - adoptedAt} ms)`);
});

t.test('onStarted is awaited with the container before it is followed (started, and adopted)', async (t) => {
  const { runner } = runnerVia(docker);
  const runId = uid();
  const seen: { id: string; name: string; adopted: boolean }[] = [];
  const abort = new AbortController();
  const { spec: first, lines } = spec(runId, 'sleep 0.5; echo the phrase');
  await runner.run({
    ...first,
    signal: abort.signal,
    onStarted: async (c) => {
      seen.push(c);
      await sleep(200);
      t.same(lines, [], 'nothing followed yet');
      abort.abort();
    },
  });
  const result = await runner.run({ ...spec(runId, 'true', { adoptOnly: true }).spec, onStarted: async (c) => void seen.push(c) });
  const name = containerName('model-trigger', runId, instance);
  t.same(seen, [
    { id: result.containerId, name, adopted: false },
    { id: result.containerId, name, adopted: true },
  ]);
});

t.test('onStarted failing: its own error, the container runs on and the next delivery adopts it', async (t) => {
  const { runner, started } = runnerVia(docker);
  const runId = uid();
  const recordFailed = new Error('could not record the start');
  const err = await runner.run({ ...spec(runId, 'sleep 1; echo the phrase').spec, onStarted: async () => Promise.reject(recordFailed) }).catch((e: unknown) => e);
  t.equal(err, recordFailed, 'the caller’s error, unchanged');
  t.equal((await docker.listContainers({ filters: { label: [`${LABELS.runId}=${runId}`], status: ['running'] } })).length, 1, 'left running');
  const { spec: again, lines } = spec(runId, 'true', { adoptOnly: true });
  t.match(await runner.run(again), { status: 'exited', exitCode: 0, phraseFound: true, adopted: true });
  t.same(lines, ['the phrase']);
  t.same(started, ['model-trigger'], 'started once');
  t.same(await remaining(runId), []);
});

t.test('another deployment’s container under the run’s name is refused, never adopted, stopped or removed', async (t) => {
  const { runner, started } = runnerVia(docker);
  const runId = uid();
  const name = containerName('model-trigger', runId, instance);
  const foreign = await docker.createContainer({
    name,
    Image: TEST_IMAGES.modelTrigger,
    Env: ['SCRIPT=sleep 60'],
    Labels: { [LABELS.managed]: 'true', [LABELS.instance]: 'another-deployment', [LABELS.stage]: 'model-trigger', [LABELS.runId]: runId },
  });
  t.teardown(() => foreign.remove({ force: true }));
  await foreign.start();
  for (const adoptOnly of [false, true]) {
    const err = await runner.run(spec(runId, 'echo mine', { adoptOnly }).spec).catch((e: unknown) => e);
    t.match(err, { code: ErrorCode.ContainerForeign, message: /belongs to deployment another-deployment/ });
  }
  t.match(await runner.remove(name).catch((e: unknown) => e), { code: ErrorCode.ContainerForeign });
  t.same(started, [], 'nothing started');
  t.equal((await foreign.inspect()).State.Status, 'running', 'left running');
});

t.test('an adopted container’s output is masked with the values it was started with, not only the env file’s current ones', async (t) => {
  const { runner } = runnerVia(docker);
  const runId = uid();
  const script = 'sleep 1; echo "secret: $SECRET"; echo "token: $TOKEN"';
  const abort = new AbortController();
  const { spec: first } = spec(runId, script, { env: { SCRIPT: script, SECRET: 'old-secret-4711', TOKEN: 'token-kept-0815' } });
  t.equal((await runner.run({ ...first, signal: abort.signal, onStarted: async () => abort.abort() })).status, 'handed-back');
  const labels = (await docker.getContainer(containerName('model-trigger', runId, instance)).inspect()).Config.Labels;
  t.equal(labels[LABELS.envKeys], 'SCRIPT,SECRET,TOKEN', 'the env file’s keys (not values) are on a label');
  // The env file was rewritten meanwhile (a deploy rotated the secret).
  const { spec: again, lines } = spec(runId, script, { env: { SCRIPT: script, SECRET: 'new-secret-0815', TOKEN: 'token-kept-0815' }, adoptOnly: true });
  const result = await runner.run(again);
  t.match(result, { status: 'exited', exitCode: 0, adopted: true });
  t.same(lines, ['secret: ****', 'token: ****']);
});
