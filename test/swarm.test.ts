/**
 * The Swarm backend through the real thing: the suite's engine as a single-node swarm manager (initialised here when
 * it is not one, and left again at the end), every stage as a `replicated-job` service. One pipeline for the file:
 * the transformer as a child process (killed -9 in the adoption test), the other services in-process.
 */
import t from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LABELS, containerName } from '../shared/docker';
import { createLogger } from '../shared/logger';
import { createSwarmRunner, swarmManagerProblem } from '../shared/swarm';
import { loadConfig, swarmProblems } from '../services/composition-root';
import { TEST_IMAGES } from '../kit/stand-ins';
import { Pipeline, docker, uid } from '../kit/pipeline';
import { writeEnvFiles, type EnvFiles } from '../kit/run-dirs';
import { spawnService, type ServiceProcess } from '../kit/service-process';
import { takeSwarmLock } from './helpers/swarm-lock';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const SWARM = { TRANSFORM_RUNNER: 'swarm', LOAD_RUNNER: 'swarm', MODEL_TRIGGER_RUNNER: 'swarm', TRAIN_RUNNER: 'swarm' };
const NO_NODE = 'node.labels.brain-test-no-such-node==true';

/** The job services the pipeline labels as its own (of one run, or all). */
async function jobServices(runId?: string): Promise<{ ID: string; Spec: { Name: string; Labels: Record<string, string> } }[]> {
  const label = [`${LABELS.managed}=true`, ...(runId !== undefined ? [`${LABELS.runId}=${runId}`] : [])];
  return (await docker.listServices({ filters: { label } })) as unknown as { ID: string; Spec: { Name: string; Labels: Record<string, string> } }[];
}

async function untilNoJobs(runId?: string, timeoutMs = 10_000): Promise<{ ID: string }[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = await jobServices(runId);
    if (left.length === 0 || Date.now() > deadline) return left;
    await sleep(100);
  }
}

/** A real Docker-API engine that is not a swarm member: Podman's API service on a socket of its own. */
async function podmanEngine(t: { teardown(fn: () => unknown): void }): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'brain-podman-'));
  const socket = join(dir, 'podman.sock');
  // Its own storage: the host's Podman is not touched (only /info is asked of it, so nothing is stored there).
  const storage = ['--root', join(dir, 'root'), '--runroot', join(dir, 'run'), '--tmpdir', join(dir, 'tmp'), '--storage-driver', 'vfs'];
  const child = spawn('podman', [...storage, 'system', 'service', '--time=0', `unix://${socket}`], { stdio: 'ignore' });
  t.teardown(async () => {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
    rmSync(dir, { recursive: true, force: true }); // vfs storage: no mounts to undo
  });
  for (let i = 0; i < 100 && !existsSync(socket); i++) await sleep(100);
  return `unix://${socket}`;
}

t.test('the not-a-manager check: docker.info() of an engine outside a swarm, of a worker, of a manager', async (t) => {
  t.match(swarmManagerProblem({ Swarm: { LocalNodeState: 'inactive', ControlAvailable: false } }), /not a swarm manager \(swarm state inactive/);
  t.match(swarmManagerProblem({ Swarm: { LocalNodeState: 'active', ControlAvailable: false } }), /a swarm worker, not a manager/);
  t.match(swarmManagerProblem({}), /swarm state unknown/, 'an engine that says nothing of Swarm (Podman answers inactive)');
  t.equal(swarmManagerProblem({ Swarm: { LocalNodeState: 'active', ControlAvailable: true } }), undefined);
  const inactive = { info: () => Promise.resolve({ Swarm: { LocalNodeState: 'inactive', ControlAvailable: false } }) };
  const unasked = { info: () => Promise.reject(new Error('must not be asked')) };
  const config = (env: Record<string, string>) => loadConfig({ HOST_AWS_DIR: '/tmp', ...env }, ['trainer']);
  t.same(await swarmProblems(['trainer'], config({}), unasked), [], 'the Docker backend (the default) never asks');
  t.same(await swarmProblems(['trainer'], config({ TRANSFORM_RUNNER: 'swarm' }), unasked), [], 'nor does a swarm stage of another service');
  t.match(await swarmProblems(['trainer'], config({ TRAIN_RUNNER: 'swarm' }), inactive), [
    /^TRAIN_RUNNER: swarm runs the stage as a Swarm job, but the local Docker engine is not a swarm manager/,
  ]);
  t.throws(() => config({ TRAIN_RUNNER: 'swarm', TRAIN_GPUS: 'all' }), { code: 'CONFIG_INVALID', message: /TRAIN_GPUS: all cannot be asked of a Swarm job/ });
  t.throws(() => config({ TRAIN_RUNNER: 'kubernetes', TRAIN_CONSTRAINTS: 'gpu' }), {
    message: /TRAIN_RUNNER: must be docker or swarm[\s\S]*TRAIN_CONSTRAINTS: must be Swarm placement constraints/,
  });
});

t.test('Swarm jobs on a single-node swarm', async (t) => {
  await takeSwarmLock(t);
  const swarm = (await docker.info()) as { Swarm?: { LocalNodeState?: string; ControlAvailable?: boolean } };
  if (swarmManagerProblem(swarm) !== undefined) {
    const hadGwBridge = (await docker.listNetworks({ filters: { name: ['docker_gwbridge'] } })).length > 0;
    execFileSync('docker', ['swarm', 'init', '--advertise-addr', '127.0.0.1'], { stdio: 'pipe' });
    t.teardown(async () => {
      execFileSync('docker', ['swarm', 'leave', '--force'], { stdio: 'pipe' });
      if (!hadGwBridge)
        await docker
          .getNetwork('docker_gwbridge')
          .remove()
          .catch(() => undefined); // swarm init made it
    });
  }
  const p = await Pipeline.start({ env: { ...SWARM, ACK_WAIT: '2', LOCK_TTL: '2', TRAIN_TIMEOUT: '4' }, services: ['loader', 'model-gate', 'trainer'] });
  t.teardown(() => p.close());
  const transformers: ServiceProcess[] = [];
  const transformer = async () => {
    const child = spawnService(['service', 'transformer'], { ...p.env, HEALTH_PORT: '0' });
    transformers.push(child);
    await child.waitForLog(/services started/);
    return child;
  };
  t.teardown(async () => {
    for (const child of transformers) child.signal('SIGTERM');
    await Promise.all(transformers.map((c) => c.exited));
  });
  const envFiles = (files: EnvFiles) => writeEnvFiles(p.dirs.env, files);
  let current = await transformer();
  const instance = p.running?.instance ?? '';

  await t.test('the whole chain, every stage a job: outcomes, exit codes, live logs, the phrase scan, masking; an orphaned job service swept', async (t) => {
    // An orphan: a labelled job of this deployment whose run holds no lock (its service died before it ended).
    const orphanRun = uid('orphan');
    const orphan = await docker.createService({
      Name: `brain-transform-orphan-${orphanRun}`,
      Labels: { [LABELS.managed]: 'true', [LABELS.stage]: 'transform', [LABELS.runId]: orphanRun, [LABELS.service]: 'transformer', [LABELS.instance]: instance },
      Mode: { ReplicatedJob: { MaxConcurrent: 1, TotalCompletions: 1 } },
      TaskTemplate: { ContainerSpec: { Image: TEST_IMAGES.transform, Command: ['sleep', '300'] }, RestartPolicy: { Condition: 'none' } },
    });
    envFiles({ transform: { NEW_DATA: '1', SLEEP: '2', API_TOKEN: 'sekret-token-4711' } });
    const runId = uid();
    await p.publish('transform.trigger', { runId, reason: 'swarm' });
    const end = await p.waitForRunEnd(runId, 60_000);
    t.same(p.trail(runId), ['transform.trigger', 'transform.done new-data', 'data.new', 'load.done loaded', 'model.trigger', 'model.mismatch', 'model.done trained']);
    t.same(
      p.eventsOf(runId).find((e) => e.subject === 'load.done')?.data.loads,
      [
        { target: 'processed', outcome: 'loaded', exitCode: 0 },
        { target: 'viz', outcome: 'loaded', exitCode: 0 },
      ],
      'exit codes from the tasks',
    );
    t.equal(end.data.exitCode, 0);
    t.ok(existsSync(join(p.dirs.aws, 'models', `${runId}.bin`)), 'the train job wrote through its bind mount');
    const lines = p.logLinesOf(runId, 'transform');
    t.ok(lines.includes('New data was transformed'), 'the phrase line was forwarded (and found: transform.done new-data)');
    t.ok(lines.includes(`transform ${runId} starting with token ****`), 'the env-file secret masked');
    t.notOk(JSON.stringify(p.logBatches).includes('sekret-token-4711'), 'secret never forwarded');
    const first = p.logBatches.find((b) => b.data.runId === runId && b.data.stage === 'transform');
    const done = p.eventsOf(runId).find((e) => e.subject === 'transform.done');
    t.ok(first !== undefined && done !== undefined && done.at - first.at > 1500, 'the first line was published live, while the job slept');
    t.ok(p.logLinesOf(runId, 'model-trigger').includes('File counts differ between the dataset commit and master.'), 'the gate job’s log');
    const created = [...p.logLines, ...current.output].filter((l) => l.includes(runId) && l.includes('job service created'));
    t.equal(created.length, 5, 'each of the five stages ran as a job service');
    t.same(await untilNoJobs(runId), [], 'no job service left');
    t.same(await p.leftBehind(runId), [], 'no task container left (Docker 20.10 keeps a removed job’s)');
    t.same(
      (await untilNoJobs(orphanRun, 15_000)).map((s) => s.ID),
      [],
      'the orphaned job service was swept',
    );
    await docker
      .getService(orphan.id)
      .remove()
      .catch(() => undefined);
  });

  await t.test('a failing job and a job past its deadline end the run failed, with the exit code and the timeout', async (t) => {
    envFiles({ train: { EXIT_CODE: '3' } });
    const failing = uid();
    await p.publish('model.trigger', { runId: failing });
    const failed = await p.waitForRunEnd(failing, 30_000);
    t.match(failed.data, { outcome: 'failed', exitCode: 3, error: 'the container exited with code 3' });
    envFiles({ train: { SCRIPT: 'trap "exit 143" TERM; sleep 60 & wait' } });
    const slow = uid();
    const started = performance.now();
    await p.publish('model.trigger', { runId: slow });
    const timedOut = await p.waitForRunEnd(slow, 30_000);
    t.match(timedOut.data, { outcome: 'failed', error: /^timed out after 4 s; the container was stopped/ });
    t.ok(timedOut.at - started < 15_000, 'stopped at its deadline (TRAIN_TIMEOUT=4 s, 10 s grace at most)');
    t.same(await untilNoJobs(slow), [], 'its job service removed');
    t.same(await p.leftBehind(slow), [], 'and its container');
  });

  await t.test('killed -9 while its job runs, the restarted transformer adopts the job instead of creating a second', async (t) => {
    envFiles({ transform: { NEW_DATA: '1', SLEEP: '3' } });
    const runId = uid();
    await p.publish('transform.trigger', { runId });
    await current.waitForLog(new RegExp(`"runId":"${runId}".*job service created`));
    current.signal('SIGKILL');
    await current.exited;
    t.equal((await jobServices(runId)).length, 1, 'the job runs on without its service');
    current = await transformer();
    const end = await p.waitForRunEnd(runId, 60_000);
    t.equal(end.data.outcome, 'trained');
    t.equal(p.eventsOf(runId).find((e) => e.subject === 'transform.done')?.data.outcome, 'new-data', 'judged by the job’s own exit and log');
    t.ok(
      current.output.some((l) => l.includes(runId) && l.includes('adopting existing job service')),
      'adopted',
    );
    t.same(
      p.starts('transform').filter((r) => r === runId),
      [runId],
      'not started again',
    );
    t.same(await untilNoJobs(runId), [], 'nothing left');
  });

  await t.test('a job no node can take fails after SWARM_SCHEDULING_TIMEOUT with an error naming its constraint, and is removed', async (t) => {
    const runner = createSwarmRunner({
      docker,
      service: 'trainer',
      instance,
      logger: createLogger('swarm-test', 'silent'),
      constraints: [NO_NODE],
      schedulingTimeoutMs: 2000,
    });
    const runId = uid();
    const started = Date.now();
    await t.rejects(runner.run({ stage: 'train', runId, image: TEST_IMAGES.train, env: {}, mounts: [], timeoutMs: 60_000, signal: new AbortController().signal }), {
      code: 'SCHEDULING_TIMEOUT',
      message: /no swarm node took the train job .* within 2 s \(SWARM_SCHEDULING_TIMEOUT\): no suitable node .*placement constraints node\.labels\.brain-test-no-such-node==true/,
    });
    t.ok(Date.now() - started < 6000, 'failed soon after the timeout');
    t.same(await runner.list({ runId }), [], 'no job service left');
  });

  await t.test('a job past its memory limit: exit 137 and OOM; its spec: one completion, never restarted, labelled service and container', async (t) => {
    const runner = createSwarmRunner({ docker, service: 'transformer', instance, logger: createLogger('swarm-test', 'silent'), constraints: [], schedulingTimeoutMs: 10_000 });
    const runId = uid();
    let spec: {
      Mode?: unknown;
      Labels?: Record<string, string>;
      TaskTemplate?: { RestartPolicy?: unknown; Resources?: unknown; ContainerSpec?: { Labels?: Record<string, string> } };
    } = {};
    const result = await runner.run({
      stage: 'transform',
      runId,
      image: TEST_IMAGES.transform,
      env: { SCRIPT: 'echo start; exec tail -c 150m /dev/zero' },
      mounts: [],
      memoryBytes: 16 * 1024 * 1024,
      timeoutMs: 30_000,
      signal: new AbortController().signal,
      onStarted: async (job) => {
        spec = ((await docker.getService(job.id).inspect()) as { Spec: typeof spec }).Spec;
      },
    });
    t.match(result, { status: 'exited', exitCode: 137, oomKilled: true, timedOut: false });
    t.same(spec.Mode, { ReplicatedJob: { MaxConcurrent: 1, TotalCompletions: 1 } });
    t.match(spec.TaskTemplate?.RestartPolicy, { Condition: 'none' });
    t.match(spec.TaskTemplate?.Resources, { Limits: { MemoryBytes: 16 * 1024 * 1024 } });
    for (const labels of [spec.Labels, spec.TaskTemplate?.ContainerSpec?.Labels]) {
      t.match(labels, { [LABELS.managed]: 'true', [LABELS.stage]: 'transform', [LABELS.runId]: runId, [LABELS.instance]: instance, [LABELS.envKeys]: 'SCRIPT' });
    }
    await runner.remove(result.containerId);
    t.same(await runner.list({ runId }), [], 'removed');
  });

  await t.test(
    'handed back on shutdown, the job runs on and is adopted after its end with its whole log; another deployment’s job is refused; a job gone is CONTAINER_GONE',
    async (t) => {
      const runner = createSwarmRunner({ docker, service: 'trainer', instance, logger: createLogger('swarm-test', 'silent'), constraints: [], schedulingTimeoutMs: 10_000 });
      const spec = (runId: string, signal: AbortSignal) => ({
        stage: 'train' as const,
        runId,
        image: TEST_IMAGES.train,
        env: { SCRIPT: 'sleep 2; echo "trained $BRAIN_RUN_ID"' },
        mounts: [],
        timeoutMs: 30_000,
        signal,
      });
      const runId = uid();
      const shutdown = new AbortController();
      const first = runner.run({ ...spec(runId, shutdown.signal), onStarted: () => Promise.resolve(shutdown.abort()) });
      t.match(await first, { status: 'handed-back', exitCode: null });
      t.equal((await runner.list({ runId })).length, 1, 'the job runs on');
      // Adopted once it has ended: its log is then read whole, not followed.
      const jobId = (await first).containerId;
      for (let i = 0; i < 200; i++) {
        const tasks = (await docker.listTasks({ filters: { service: [jobId] } })) as { Status?: { State?: string } }[];
        if (tasks[0]?.Status?.State === 'complete') break;
        await sleep(100);
      }
      const lines: string[] = [];
      const second = await runner.run({ ...spec(runId, new AbortController().signal), adoptOnly: true, onLines: (s, l) => void (s === 'stdout' && lines.push(...l)) });
      t.match(second, { status: 'exited', exitCode: 0, adopted: true });
      t.same(lines, [`trained ${runId}`], 'its whole log, read by the adopter after its end');
      await runner.remove(second.containerId);

      // A job under this run's name that another deployment labels as its own (made by hand: names carry the deployment).
      const theirs = uid();
      const name = containerName('train', theirs, instance);
      const foreign = await docker.createService({
        Name: name,
        Labels: { [LABELS.managed]: 'true', [LABELS.stage]: 'train', [LABELS.runId]: theirs, [LABELS.instance]: 'BRAIN_EVENTS@another' },
        Mode: { ReplicatedJob: { MaxConcurrent: 1, TotalCompletions: 1 } },
        TaskTemplate: { ContainerSpec: { Image: TEST_IMAGES.train, Command: ['sleep', '300'] }, RestartPolicy: { Condition: 'none' } },
      });
      t.teardown(() => foreign.remove().catch(() => undefined));
      await t.rejects(
        runner.run(spec(theirs, new AbortController().signal)),
        { code: 'CONTAINER_FOREIGN', message: /job service .* belongs to deployment BRAIN_EVENTS@another/ },
        'never adopted',
      );
      await t.rejects(runner.remove(name), { code: 'CONTAINER_FOREIGN' }, 'nor removed');
      t.equal((await docker.listServices({ filters: { name: [name] } })).length, 1, 'it is still there');
      await t.rejects(runner.run({ ...spec(uid(), new AbortController().signal), adoptOnly: true }), { code: 'CONTAINER_GONE' });
    },
  );

  await t.test('a swarm runner on an engine that is not a swarm manager (Podman’s API) is a configuration error at the service’s start', async (t) => {
    const engine = await podmanEngine(t);
    const child = spawnService(['service', 'trainer'], { ...p.env, HEALTH_PORT: '0', DOCKER_HOST: engine });
    const line = await child.waitForLog(/TRAIN_RUNNER: /);
    t.match(line, `TRAIN_RUNNER: swarm runs the stage as a Swarm job, but ${engine} is not a swarm manager (swarm state inactive`);
    t.ok(
      child.output.some((l) => l.includes('invalid configuration')),
      'reported as a configuration error',
    );
    t.equal(await child.exited, 2, 'the service does not start: exit 2, as for any configuration error');
  });

  t.same(await untilNoJobs(), [], 'no labelled job service left on the engine');
});
