import t from 'tap';
import { spawn, execFileSync, execSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type Docker from 'dockerode';
import { Writable } from 'node:stream';
import { LABELS, containerName, createContainerRunner, createDockerClient } from '../shared/docker';
import { ErrorCode, StageError } from '../shared/errors';
import { createLogger } from '../shared/logger';
import { ENV_FILES } from '../services/index';
import { TEST_IMAGES } from '../kit/stand-ins';
import { gateSpec } from './helpers/runner';
import { Pipeline, uid } from '../kit/pipeline';

/**
 * Podman's Docker-compatible API server (`podman system service`) on a socket of its own, with its own storage and
 * its own containers.conf (CONTAINERS_CONF), so nothing of the host's Podman or /etc/containers is touched. Podman 4.3
 * from Debian starts containers only with explicit default ulimits in containers.conf (see docs/podman.md).
 */
async function startPodman(): Promise<{ url: string; docker: Docker; stop: () => Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'brain-podman-'));
  const conf = join(dir, 'containers.conf');
  writeFileSync(conf, '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n');
  const socket = join(dir, 'podman.sock');
  const url = `unix://${socket}`;
  const podmanArgs = ['--root', join(dir, 'root'), '--runroot', join(dir, 'run'), '--tmpdir', join(dir, 'tmp')];
  const env = { ...process.env, CONTAINERS_CONF: conf };
  const child: ChildProcess = spawn('podman', [...podmanArgs, 'system', 'service', '--time=0', url], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const docker = createDockerClient(url);
  for (let i = 0; ; i++) {
    if (
      existsSync(socket) &&
      (await docker.ping().then(
        () => true,
        () => false,
      ))
    )
      break;
    if (i > 100 || child.exitCode !== null) throw new Error(`podman system service did not start: ${stderr}`);
    await sleep(100);
  }
  const stop = async () => {
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(5000)]);
    }
    // Storage is Podman's own: reset it through Podman (it unmounts its layers), then remove the folder.
    execFileSync('podman', [...podmanArgs, 'system', 'reset', '--force'], { env, stdio: 'ignore' });
    rmSync(dir, { recursive: true, force: true });
  };
  return { url, docker, stop };
}

/** The pipeline's containers on the Podman engine, of one run. */
const podmanContainers = (docker: Docker, runId: string) => docker.listContainers({ all: true, filters: { label: [`${LABELS.managed}=true`, `${LABELS.runId}=${runId}`] } });

t.test("Podman's Docker-compatible API as DOCKER_HOST", async (t) => {
  const podman = await startPodman();
  t.teardown(() => podman.stop());
  // The stand-in images, copied from the suite's engine into Podman's storage (Podman names them localhost/…).
  execSync(`docker save ${Object.values(TEST_IMAGES).join(' ')} | docker -H ${podman.url} load`, { stdio: 'ignore' });

  const p = await Pipeline.start({
    docker: podman.docker,
    env: { DOCKER_HOST: podman.url },
    envFiles: { transform: { NEW_DATA: '1', TRAILING: '1', API_TOKEN: 'sekret-token-4711' } },
  });
  t.teardown(() => p.close());

  // Every Podman container event of the pipeline's, to show the stages ran on Podman and not on the suite's engine.
  const seen = new Set<string>();
  const events = (await podman.docker.getEvents({ filters: { type: ['container'], event: ['start'], label: [`${LABELS.managed}=true`] } })) as NodeJS.ReadableStream & {
    destroy: () => void;
  };
  events.on('data', (d: Buffer) => {
    for (const line of d.toString().split('\n')) {
      if (line.trim() === '') continue;
      const attributes = (JSON.parse(line) as { Actor?: { Attributes?: Record<string, string> } }).Actor?.Attributes ?? {};
      seen.add(`${attributes[LABELS.runId] ?? '?'}:${attributes[LABELS.stage] ?? '?'}`);
    }
  });
  t.teardown(() => events.destroy());

  await t.test('new data: every stage runs on Podman, outcomes, files, live masked logs, phrase scan, no container left', async (t) => {
    const runId = uid();
    await p.publish('transform.trigger', { runId, reason: 'podman' });
    const end = await p.waitForRunEnd(runId, 60_000);
    t.equal(end.data.outcome, 'trained');
    t.same(
      p.trail(runId),
      ['transform.trigger', 'transform.done new-data', 'data.new', 'load.done loaded', 'model.trigger', 'model.mismatch', 'model.done trained'],
      'both phrases found',
    );
    t.same(readdirSync(join(p.dirs.aws, 'remote', 'processed')), [`${runId}.csv`], 'bind mounts work: the load pushed the transform output');
    t.ok(existsSync(join(p.dirs.aws, 'models', `${runId}.bin`)), 'model written');
    const lines = p.logLinesOf(runId, 'transform');
    t.ok(lines.includes('New data was transformed'), 'transform log lines published');
    t.ok(
      lines.some((l) => l.includes('starting with token ****')),
      'secret masked',
    );
    t.notOk(JSON.stringify(p.logBatches).includes('sekret-token-4711'), 'secret never forwarded');
    const stderr = p.logBatches.filter((b) => b.data.runId === runId && b.data.stream === 'stderr').flatMap((b) => b.data.lines as string[]);
    t.same(stderr, ['writing summary'], 'stderr demultiplexed from stdout');
    t.ok(lines.includes('transform finished'), 'lines after the phrase still read');
    if (process.env.BRAIN_DEBUG_PODMAN) console.error(p.logLines.filter((l) => /"level":(40|50)/.test(l)).join('\n'));
    t.same(await untilEmpty(() => podmanContainers(podman.docker, runId)), [], 'every container removed from Podman');
    for (const stage of ['transform', 'load-processed', 'load-viz', 'model-trigger', 'train']) t.ok(seen.has(`${runId}:${stage}`), `${stage} started on Podman`);
  });

  await t.test('a failing stage: its exit code ends the step failed, and its container is removed', async (t) => {
    writeFileSync(join(p.dirs.env, ENV_FILES.train), "EXIT_CODE='3'\n");
    const runId = uid();
    await p.publish('model.trigger', { runId });
    const end = await p.waitForRunEnd(runId, 30_000);
    t.equal(end.data.outcome, 'failed');
    t.equal(end.data.exitCode, 3);
    t.match(end.data.error, /exited with code 3/);
    t.same(await untilEmpty(() => podmanContainers(podman.docker, runId)), [], 'no container left');
  });

  await t.test(
    'the runner on Podman: a redelivered run adopts its container (a taken name is a 500 there, not a 409); a GPU request Podman would drop fails the stage',
    async (t) => {
      const instance = `podman-runner-${uid()}`;
      const logLines: string[] = [];
      const sink = new Writable({ write: (chunk: Buffer, _enc, done) => (logLines.push(chunk.toString()), done()) });
      const runner = createContainerRunner({ docker: podman.docker, pullPolicy: 'never', service: 'podman-test', instance, logger: createLogger('podman-test', 'info', sink) });

      // An earlier delivery's container, running under the run's deterministic name.
      const runId = uid();
      const earlier = await podman.docker.createContainer({
        name: containerName('model-trigger', runId, instance),
        Image: TEST_IMAGES.modelTrigger,
        Env: ['SCRIPT=sleep 1; echo the phrase'],
        Labels: { [LABELS.managed]: 'true', [LABELS.instance]: instance, [LABELS.stage]: 'model-trigger', [LABELS.runId]: runId },
      });
      await earlier.start();
      const result = await runner.run(gateSpec(runId, 'echo a second container must not start; exit 9'));
      t.match(result, { status: 'exited', exitCode: 0, phraseFound: true, adopted: true, containerId: earlier.id });
      t.match(logLines.join(''), /adopting existing container/);
      await runner.remove(result.containerId);
      t.same(await podmanContainers(podman.docker, runId), [], 'removed');

      // Podman's Docker API accepts HostConfig.DeviceRequests and drops it: the container would run without its GPUs.
      const gpuRun = uid();
      const err = await runner.run(gateSpec(gpuRun, 'echo ran without its GPUs', { gpus: { kind: 'count', count: 1 } })).catch((e: unknown) => e);
      t.type(err, StageError);
      t.equal((err as StageError).code, ErrorCode.GpuUnavailable);
      t.match((err as StageError).message, /the model-trigger stage requests 1 GPU but the engine dropped the container's DeviceRequests/);
      t.same(await podmanContainers(podman.docker, gpuRun), [], 'the container was never started and is removed');
    },
  );
});

async function untilEmpty<T>(list: () => Promise<T[]>, timeoutMs = 10_000): Promise<T[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = await list();
    if (left.length === 0 || Date.now() > deadline) return left;
    await sleep(100);
  }
}
