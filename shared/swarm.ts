/**
 * The Docker Swarm backend of `ContainerRunner`: a stage runs as a one-task `replicated-job` service on the swarm
 * the engine manages, placed by `<STAGE>_CONSTRAINTS`. Its output is read from the service's log, its outcome from
 * its task. Known traps handled here (PITFALLS "Swarm jobs"): a job restarts forever without `Condition: none`; the
 * followed log never ends, so the task is watched and the stream closed when it is terminal; a task no node can
 * take stays pending forever, so it fails after SWARM_SCHEDULING_TIMEOUT; `DeviceRequests` is dropped from a
 * service spec, so GPUs are generic resources; Docker 20.10 leaves a removed job's task containers behind
 * (moby/moby#42789), so `remove` removes those on this engine too.
 */
import { Readable } from 'node:stream';
import type Docker from 'dockerode';
import { z } from 'zod';
import type { GpuRequest } from './config';
import { containerName, type ContainerRunner, type StageResult, type StageSpec } from './docker';
import { endOfRun, HandedBack, LABELS, OnStartedFailed, assertOwned, isDockerDown, labelFilter, outputReader } from './engine';
import { pause, ranForMs, runSignal, stageEnv, stageError, stageLabels, statusOf, untilEngine } from './engine';
import { ErrorCode, StageError, describeError } from './errors';
import type { Stage } from './events';
import type { Logger } from './logger';

export interface SwarmRunnerDeps {
  /** A client of a swarm manager (checked at start: `swarmManagerProblem`). */
  docker: Docker;
  service: string;
  instance: string;
  logger: Logger;
  /** Swarm placement constraints of the stage's jobs (`<STAGE>_CONSTRAINTS`), e.g. `node.labels.gpu==true`. */
  constraints: readonly string[];
  /** How long a job's task may wait for a node (state pending) before the stage fails (SWARM_SCHEDULING_TIMEOUT). */
  schedulingTimeoutMs: number;
  /** The generic resource kind the nodes advertise their GPUs as (`node-generic-resources` in daemon.json). */
  gpuResourceKind?: string;
  onContainerStart?: (stage: Stage) => void;
  /** Seconds the task's container gets between SIGTERM and SIGKILL when stopped at its deadline. */
  stopGraceSeconds?: number;
  maxRetryDelayMs?: number;
  /** How often the job's task is looked at while it runs (default 250 ms). */
  pollMs?: number;
}

/** Task states before a node took the task: past the scheduling timeout, the stage fails. */
const WAITING = new Set(['new', 'allocated', 'pending']);
/** Task states after which nothing more happens to the task. */
const TERMINAL = new Set(['complete', 'failed', 'shutdown', 'rejected', 'orphaned', 'remove']);

/** The parts of the engine's task object the runner reads. */
const taskSchema = z.object({
  ID: z.string(),
  CreatedAt: z.string().optional(),
  Status: z
    .object({
      State: z.string(),
      /** When the task entered its state. */
      Timestamp: z.string().optional(),
      Message: z.string().optional(),
      Err: z.string().optional(),
      ContainerStatus: z.object({ ContainerID: z.string().optional(), ExitCode: z.number().optional() }).optional(),
    })
    .optional(),
});
type SwarmTask = z.infer<typeof taskSchema>;

const serviceSchema = z.object({
  ID: z.string(),
  CreatedAt: z.string().optional(),
  Spec: z.object({
    Name: z.string(),
    Labels: z.record(z.string(), z.string()).optional(),
    TaskTemplate: z.object({ ContainerSpec: z.object({ Env: z.array(z.string()).optional() }).optional() }).optional(),
  }),
  ServiceStatus: z.object({ RunningTasks: z.number().optional(), CompletedTasks: z.number().optional() }).optional(),
});
type SwarmService = z.infer<typeof serviceSchema>;

/** The newest of a service's tasks (a job of one completion has one). */
function newest(raw: unknown): SwarmTask | undefined {
  const tasks = z.array(taskSchema).parse(raw);
  return tasks.sort((a, b) => Date.parse(b.CreatedAt ?? '') - Date.parse(a.CreatedAt ?? ''))[0];
}

/**
 * Why an engine cannot run Swarm jobs, from its `docker.info()`: undefined when it is an active swarm manager.
 * Checked at start for each service with a stage on the Swarm backend.
 */
export function swarmManagerProblem(info: { Swarm?: { LocalNodeState?: string; ControlAvailable?: boolean } }): string | undefined {
  const state = info.Swarm?.LocalNodeState ?? 'unknown';
  if (state === 'active' && info.Swarm?.ControlAvailable === true) return undefined;
  if (state === 'active') return 'the Docker engine is a swarm worker, not a manager (point DOCKER_HOST at a manager)';
  return `the Docker engine is not a swarm manager (swarm state ${state}; run docker swarm init, or point DOCKER_HOST at a manager)`;
}

/** Swarm's generic resources for a GPU request: a count of the kind, or named devices. `all` has no Swarm form. */
export function gpuGenericResources(req: GpuRequest, kind: string): object[] {
  switch (req.kind) {
    case 'count':
      return [{ DiscreteResourceSpec: { Kind: kind, Value: req.count } }];
    case 'devices':
      return req.deviceIds.map((id) => ({ NamedResourceSpec: { Kind: kind, Value: id } }));
    case 'all':
      throw new StageError(ErrorCode.Config, 'a Swarm job cannot ask for all GPUs of a node: name a count or device ids');
  }
}

export function createSwarmRunner(deps: SwarmRunnerDeps): ContainerRunner {
  const { docker, logger } = deps;
  const stopGrace = deps.stopGraceSeconds ?? 10;
  const maxRetryDelayMs = deps.maxRetryDelayMs ?? 2000;
  const pollMs = deps.pollMs ?? 250;
  const gpuKind = deps.gpuResourceKind ?? 'NVIDIA-GPU';

  /** The job service's spec: one task, never restarted, with the container's labels, environment, mounts and limits. */
  function jobSpec(spec: StageSpec, name: string): Docker.CreateServiceOptions {
    const labels = stageLabels(spec, deps);
    const reservations = spec.gpus !== undefined ? { GenericResources: gpuGenericResources(spec.gpus, gpuKind) as Docker.GenericResource[] } : {};
    return {
      Name: name,
      Labels: labels,
      Mode: { ReplicatedJob: { MaxConcurrent: 1, TotalCompletions: 1 } },
      TaskTemplate: {
        ContainerSpec: {
          Image: spec.image,
          Env: stageEnv(spec),
          Labels: labels,
          Mounts: spec.mounts.map((m) => ({ Type: 'bind' as const, Source: m.source, Target: m.target })),
          StopGracePeriod: stopGrace * 1e9,
        },
        RestartPolicy: { Condition: 'none', MaxAttempts: 0 },
        Resources: { Limits: spec.memoryBytes !== undefined ? { MemoryBytes: spec.memoryBytes } : {}, Reservations: reservations },
        Placement: { Constraints: [...deps.constraints] },
        ...(spec.network !== undefined ? { Networks: [{ Target: spec.network }] } : {}),
      },
    };
  }

  /** The engine's view of a service, null when it does not exist; a failed call's error is passed on as is. */
  async function inspectRaw(idOrName: string): Promise<SwarmService | null> {
    try {
      return serviceSchema.parse(await docker.getService(idOrName).inspect());
    } catch (err) {
      if (statusOf(err) === 404) return null;
      throw err;
    }
  }

  async function inspectOrNull(idOrName: string): Promise<SwarmService | null> {
    try {
      return await inspectRaw(idOrName);
    } catch (err) {
      throw stageError('inspect the job service', err, ErrorCode.DockerUnavailable);
    }
  }

  /**
   * Removes the service (which stops its task) and its task containers on this engine, which Docker 20.10 leaves
   * behind for jobs. A service or container already gone is not an error.
   */
  async function removeChecked(serviceId: string | undefined, name: string): Promise<void> {
    try {
      if (serviceId !== undefined) await docker.getService(serviceId).remove();
    } catch (err) {
      if (statusOf(err) !== 404) throw stageError(`remove job service ${name}`, err, ErrorCode.DockerUnavailable);
    }
    try {
      const left = await docker.listContainers({ all: true, filters: { label: [`${LABELS.instance}=${deps.instance}`, 'com.docker.swarm.service.id'] } });
      for (const c of left) {
        const labels = c.Labels;
        if (labels['com.docker.swarm.service.name'] !== name && labels['com.docker.swarm.service.id'] !== serviceId) continue;
        await docker
          .getContainer(c.Id)
          .remove({ force: true, v: true })
          .catch((err: unknown) => {
            if (statusOf(err) !== 404 && statusOf(err) !== 409) throw err;
          });
      }
    } catch (err) {
      throw stageError(`remove the task containers of job service ${name}`, err, ErrorCode.DockerUnavailable);
    }
  }

  async function remove(idOrName: string): Promise<void> {
    const info = await inspectOrNull(idOrName);
    if (info !== null) assertOwned('job service', info.Spec.Name, info.Spec.Labels, deps.instance, 'remove');
    await removeChecked(info?.ID, info?.Spec.Name ?? idOrName);
  }

  /** This run's job service: created, or the one it already has (adopted). Another deployment's is refused. */
  async function createOrAdopt(spec: StageSpec, name: string): Promise<{ id: string; createdAt: number; existing: SwarmService | null }> {
    const adopt = async (): Promise<SwarmService | null> => {
      const found = await inspectOrNull(name);
      if (found !== null) assertOwned('job service', name, found.Spec.Labels, deps.instance, 'adopt');
      return found;
    };
    const adopted = (existing: SwarmService) => ({ id: existing.ID, createdAt: Date.parse(existing.CreatedAt ?? '') || Date.now(), existing });
    if (spec.adoptOnly === true) {
      const found = await adopt();
      if (found !== null) return adopted(found);
      throw new StageError(
        ErrorCode.ContainerGone,
        `the ${spec.stage} job of run ${spec.runId} was started before the service restarted and no longer exists; its outcome is unknown`,
      );
    }
    for (let attempt = 1; ; attempt++) {
      try {
        const created = await docker.createService(jobSpec(spec, name));
        return { id: created.id, createdAt: Date.now(), existing: null };
      } catch (err) {
        if (statusOf(err) !== 409 || attempt >= 3) throw stageError(`create the ${spec.stage} job service`, err, ErrorCode.ContainerCreate);
        const found = await adopt(); // 409: the name is taken
        if (found !== null) return adopted(found);
      }
    }
  }

  async function run(spec: StageSpec): Promise<StageResult> {
    const started = Date.now();
    const name = containerName(spec.stage, spec.runId, deps.instance);
    const log = logger.child({ stage: spec.stage, runId: spec.runId, service: deps.service, job: name });
    const { signal, release } = runSignal(spec.signal);
    const ctx = { signal, log, maxRetryDelayMs };
    let adopted = false;
    let id = '';
    try {
      const job = await createOrAdopt(spec, name);
      adopted = job.existing !== null;
      id = job.id;
      const containerSpec = job.existing?.Spec.TaskTemplate?.ContainerSpec;
      const reader = outputReader(spec, job.existing === null ? null : { env: containerSpec?.Env ?? [], envKeysLabel: job.existing.Spec.Labels?.[LABELS.envKeys] });
      if (job.existing === null) {
        deps.onContainerStart?.(spec.stage);
        log.info({ image: spec.image, constraints: deps.constraints }, 'job service created');
      } else {
        log.info('adopting existing job service');
      }
      try {
        await spec.onStarted?.({ id, name, adopted });
      } catch (err) {
        throw new OnStartedFailed(err); // the job runs on, for a redelivery to adopt
      }
      return await follow(job, reader);
    } catch (err) {
      return endOfRun(err, { stage: spec.stage, what: 'job', log, adopted, started, id });
    } finally {
      release();
    }

    /**
     * Follows the job's log live while its task is watched; once the task is terminal the live stream is closed and
     * the rest of the log read to its end (skipping what was read), so no line is lost or read twice.
     */
    async function follow(job: { id: string; createdAt: number }, reader: ReturnType<typeof outputReader>): Promise<StageResult> {
      const service = docker.getService(job.id);
      let live: { stream: NodeJS.ReadableStream & { destroy?: () => void }; done: Promise<void>; closing: boolean } | undefined;
      let liveEnded = true;
      const followLive = async () => {
        const { value } = await untilEngine(ctx, 'follow the job log', () => service.logs({ follow: true, stdout: true, stderr: true }));
        const stream = value as NodeJS.ReadableStream & { destroy?: () => void };
        liveEnded = false;
        const entry = { stream, closing: false, done: Promise.resolve() };
        entry.done = reader.pump(stream, { ...reader.processed }, signal).then(
          () => {
            liveEnded = true;
          },
          (err: unknown) => {
            liveEnded = true;
            if (!(err instanceof HandedBack) && !entry.closing) log.warn({ err: describeError(err) }, 'job log stream broke; following it again');
          },
        );
        live = entry;
      };
      const closeLive = async () => {
        if (live === undefined) return;
        live.closing = true;
        live.stream.destroy?.();
        await live.done;
      };

      // The deadline runs from the task's start (as a container's from its own start); one that has not started by
      // its timeout plus the scheduling timeout after its creation (a slow pull, say) is timed out too.
      let runningSince: number | undefined;
      let stopping = false;
      let stoppedByUs = false;
      let task: SwarmTask | undefined;
      try {
        for (;;) {
          const { value } = await untilEngine(ctx, 'watch the job task', () => docker.listTasks({ filters: { service: [job.id] } }));
          task = newest(value);
          const state = task?.Status?.State;
          if (state !== undefined && TERMINAL.has(state)) break; // (an adopted job that has ended is only read, below)
          if (liveEnded) await followLive();
          const now = Date.now();
          if (state === 'running' && runningSince === undefined) runningSince = Date.parse(task?.Status?.Timestamp ?? '') || now;
          const deadline = runningSince !== undefined ? runningSince + spec.timeoutMs : job.createdAt + spec.timeoutMs + deps.schedulingTimeoutMs;
          if ((state === undefined || WAITING.has(state)) && now - job.createdAt >= deps.schedulingTimeoutMs) {
            await closeLive();
            await removeChecked(job.id, name);
            throw schedulingTimeout(task);
          }
          if (now >= deadline && !stopping) {
            stopping = true;
            log.warn({ timeoutMs: spec.timeoutMs }, 'stage timed out; stopping the job');
            if (await stopTaskContainer(task)) {
              stoppedByUs = true;
            } else {
              // Not on this engine (or not started): removing the service is what stops it. Its log goes with it.
              await closeLive();
              await removeChecked(job.id, name);
              await reader.end();
              return result({ exitCode: null, oomKilled: false, timedOut: true });
            }
          }
          await pause(pollMs, signal);
        }
      } finally {
        await closeLive();
      }
      // Not followed, the log comes whole, as a Buffer.
      const { value: rest } = await untilEngine(ctx, 'read the job log', () => service.logs({ follow: false, stdout: true, stderr: true }));
      await reader.pump(Buffer.isBuffer(rest) ? Readable.from([rest]) : rest, { ...reader.processed }, signal);
      await reader.end();
      const exitCode = task?.Status?.ContainerStatus?.ExitCode;
      if (exitCode === undefined) throw notRun(task);
      const container = await localContainer(task);
      const oomKilled = container?.State.OOMKilled ?? false;
      // Stopped by us, or (an earlier instance's stop) killed after running its full limit.
      const ran = container !== null ? ranForMs(container.State) : null;
      const timedOut = stoppedByUs || (!oomKilled && exitCode !== 0 && ran !== null && ran >= spec.timeoutMs);
      return result({ exitCode, oomKilled, timedOut });

      function result(r: { exitCode: number | null; oomKilled: boolean; timedOut: boolean }): StageResult {
        const out: StageResult = { status: 'exited', ...r, phraseFound: reader.phraseFound, adopted, durationMs: Date.now() - started, containerId: job.id };
        log.info({ exitCode: r.exitCode, oomKilled: r.oomKilled, timedOut: r.timedOut, phraseFound: out.phraseFound }, 'job finished');
        return out;
      }
    }

    /** Stops the task's container when it runs on this engine; false when it is elsewhere (or not yet a container). */
    async function stopTaskContainer(task: SwarmTask | undefined): Promise<boolean> {
      const containerId = task?.Status?.ContainerStatus?.ContainerID;
      if (containerId === undefined || containerId === '') return false;
      try {
        await untilEngine(ctx, 'stop the timed-out job', () => docker.getContainer(containerId).stop({ t: stopGrace }));
        return true;
      } catch (err) {
        if (err instanceof HandedBack) throw err;
        if (statusOf(err) === 304) return true; // it had stopped on its own
        if (statusOf(err) === 404) return false;
        log.error({ err: describeError(err) }, 'could not stop the job container');
        return false;
      }
    }

    /** The task's container when it is on this engine (for OOM and its own timestamps), else null. */
    async function localContainer(task: SwarmTask | undefined): Promise<Docker.ContainerInspectInfo | null> {
      const containerId = task?.Status?.ContainerStatus?.ContainerID;
      if (containerId === undefined || containerId === '') return null;
      try {
        return await docker.getContainer(containerId).inspect();
      } catch (err) {
        if (statusOf(err) === 404 || isDockerDown(err)) return null;
        throw err;
      }
    }

    function schedulingTimeout(task: SwarmTask | undefined): StageError {
      const why = task?.Status?.Err ?? task?.Status?.Message ?? 'no task was created';
      const asks = [
        `placement constraints ${deps.constraints.length > 0 ? deps.constraints.join(', ') : '(none)'}`,
        ...(spec.memoryBytes !== undefined ? [`memory ${spec.memoryBytes} bytes`] : []),
        ...(spec.gpus !== undefined ? [`GPUs ${JSON.stringify(spec.gpus)} as ${gpuKind}`] : []),
      ];
      return new StageError(
        ErrorCode.SchedulingTimeout,
        `no swarm node took the ${spec.stage} job ${name} within ${Math.round(deps.schedulingTimeoutMs / 1000)} s (SWARM_SCHEDULING_TIMEOUT): ${why}; it asks for ${asks.join(', ')}; the job was removed`,
      );
    }

    function notRun(task: SwarmTask | undefined): StageError {
      const why = task?.Status?.Err ?? task?.Status?.Message ?? 'no task';
      if (/no such image/i.test(why)) {
        return new StageError(
          ErrorCode.ImageNotFound,
          `image ${spec.image} is not on the swarm node that took the ${spec.stage} job (each node needs its own copy of a local image): ${why}`,
        );
      }
      return new StageError(ErrorCode.ContainerStart, `the ${spec.stage} job's task ended ${task?.Status?.State ?? 'unknown'} without running its container: ${why}`);
    }
  }

  async function list(filter: { stage?: Stage; runId?: string } = {}) {
    const raw = (await docker.listServices({ filters: { label: labelFilter(deps.instance, filter) }, status: true } as Docker.ServiceListOptions)) as unknown;
    return z
      .array(serviceSchema)
      .parse(raw)
      .map((s) => ({
        id: s.ID,
        name: s.Spec.Name,
        state: (s.ServiceStatus?.RunningTasks ?? 0) > 0 ? 'running' : (s.ServiceStatus?.CompletedTasks ?? 0) > 0 ? 'complete' : 'job',
        labels: s.Spec.Labels ?? {},
      }));
  }

  return { run, list, remove };
}
