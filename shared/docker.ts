import { createHash } from 'node:crypto';
import Docker from 'dockerode';
import type { Container, ContainerInspectInfo } from 'dockerode';
import { ErrorCode, StageError, describeError } from './errors';
import { endOfRun, HandedBack, LABELS, OnStartedFailed, assertOwned, isDockerDown, labelFilter, outputReader, pause } from './engine';
import { ranForMs, runSignal, stageEnv, stageError, stageLabels, statusOf, untilEngine, type OutputReader } from './engine';
import type { StreamName } from './lines';
import type { GpuRequest } from './config';
import type { Stage } from './events';
import type { Logger } from './logger';

export { LABELS } from './engine';

export type PullPolicy = 'always' | 'missing' | 'never';

/** The container a stage runs in, as `onStarted` is told about it. */
export interface StartedContainer {
  id: string;
  name: string;
  /** It already existed (a redelivered step, or one whose service restarted) and was adopted rather than started. */
  adopted: boolean;
}

export interface StageSpec {
  stage: Stage;
  runId: string;
  image: string;
  /** Values from the stage's env file: handed to the container, never logged. */
  env: Record<string, string>;
  mounts: { source: string; target: string }[];
  network?: string;
  timeoutMs: number;
  /** Phrase to look for in every output line. */
  phrase?: string;
  /** Receives each batch of output lines (already masked). */
  onLines?: (stream: StreamName, lines: string[]) => void | Promise<void>;
  /**
   * Awaited right after the container was started (or found, when adopting), before it is followed.
   * If it throws, the container is left running (a redelivery adopts it) and `run` rejects with its error.
   */
  onStarted?: (container: StartedContainer) => Promise<void>;
  /** Memory limit in bytes; a container past it is OOM-killed (exit 137). */
  memoryBytes?: number;
  /** GPUs for the container (`<STAGE>_GPUS`), as Docker's `HostConfig.DeviceRequests`; a host without a GPU runtime fails the stage (GPU_UNAVAILABLE). */
  gpus?: GpuRequest;
  /**
   * The step's record says this container was started (before the service restarted): adopt it, and fail
   * (CONTAINER_GONE) rather than start a second one when it is gone.
   */
  adoptOnly?: boolean;
  /** Aborting stops watching and leaves the container running, for a restarted service to adopt. */
  signal: AbortSignal;
}

export interface StageResult {
  status: 'exited' | 'handed-back';
  exitCode: number | null;
  oomKilled: boolean;
  /** The runner stopped the container at its deadline (or it ran past its limit and was stopped, see `run`). */
  timedOut: boolean;
  phraseFound: boolean;
  /** True when the container already existed (a redelivered run) and was adopted. */
  adopted: boolean;
  durationMs: number;
  /** Docker's id of the stage's container. */
  containerId: string;
}

export interface ContainerRunner {
  /**
   * Runs (or adopts) the stage's container and follows it to its end. The exited container is left in
   * place: the caller removes it (`remove(result.containerId)`) once the outcome is safely stored, so a
   * restart in between still finds it.
   */
  run(spec: StageSpec): Promise<StageResult>;
  /** This deployment's labelled containers, for start-up reconciliation and tests. */
  list(filter?: { stage?: Stage; runId?: string }): Promise<{ id: string; name: string; state: string; labels: Record<string, string> }[]>;
  /** Removes one of this deployment's containers; one that is already gone is not an error, another deployment's is refused. */
  remove(idOrName: string): Promise<void>;
}

export interface RunnerDeps {
  docker: Docker;
  pullPolicy: PullPolicy;
  service: string;
  /** Labels the containers of this deployment; see `deploymentId`. */
  instance: string;
  logger: Logger;
  /** Called each time a container is started. */
  onContainerStart?: (stage: Stage) => void;
  /** Seconds Docker gives a container between SIGTERM and SIGKILL on timeout. */
  stopGraceSeconds?: number;
  /** Longest pause between two tries while Docker is unreachable (default 2 s). */
  maxRetryDelayMs?: number;
}

/** A short name-safe token of a deployment id (`BRAIN_EVENTS@<created>`): the first 10 hex digits of its SHA-256. */
export const deploymentToken = (instance: string) => createHash('sha256').update(instance).digest('hex').slice(0, 10);

/**
 * The deterministic name of a run's stage container in a deployment: `brain-<stage>-<token>-<runId>`, so two
 * deployments sharing a Docker engine never collide on a run id (scheduled runs have the same id everywhere).
 * Without `instance` it is the deployment-less `brain-<stage>-<runId>`, for baselines that imitate the runner (bench).
 */
export const containerName = (stage: Stage, runId: string, instance?: string) =>
  instance === undefined ? `brain-${stage}-${runId}` : `brain-${stage}-${deploymentToken(instance)}-${runId}`;

const STATUS = statusOf;
const isMissingImage = (err: unknown) => STATUS(err) === 404 && /no such image/i.test(describeError(err));

/**
 * The container name is taken (a redelivered step's container exists): Docker answers 409; Podman's compat API
 * answers 500 with `cause: "that name is already in use"`, a structured field of its error body (docs/podman.md).
 */
const isNameTaken = (err: unknown) => STATUS(err) === 409 || (STATUS(err) === 500 && (err as { json?: { cause?: string } }).json?.cause === 'that name is already in use');

/** Docker's `DeviceRequest` for a stage's GPUs (what `docker run --gpus` sends): Count -1 is every GPU. */
export function gpuDeviceRequest(req: GpuRequest): { Driver: string; Count: number; DeviceIDs?: string[]; Capabilities: string[][] } {
  switch (req.kind) {
    case 'all':
      return { Driver: '', Count: -1, Capabilities: [['gpu']] };
    case 'count':
      return { Driver: '', Count: req.count, Capabilities: [['gpu']] };
    case 'devices':
      return { Driver: '', Count: 0, DeviceIDs: req.deviceIds, Capabilities: [['gpu']] };
  }
}

/** `all GPUs`, `2 GPUs`, `GPU devices 0,1`: a request in words, for errors. */
export const describeGpus = (req: GpuRequest) =>
  req.kind === 'all' ? 'all GPUs' : req.kind === 'count' ? `${req.count} GPU${req.count === 1 ? '' : 's'}` : `GPU devices ${req.deviceIds.join(',')}`;

/**
 * Docker could not satisfy the container's DeviceRequests: no device driver (the NVIDIA Container Toolkit) offers
 * the `gpu` capability on this host. Docker 20.10 answers the start (newer engines may answer the create) with
 * HTTP 500 and `could not select device driver "" with capabilities: [[gpu]]`. Its error answer is only
 * `{ message }`, with no structured field or error code for this case, so the status code and the reason text
 * of Docker's answer are all there is to tell it by.
 */
const isGpuUnavailable = (err: unknown) =>
  STATUS(err) === 500 && /could not select device driver/i.test((err as { json?: { message?: string } }).json?.message ?? describeError(err));

function gpuUnavailable(spec: StageSpec, err: unknown): StageError {
  const reason = (err as { json?: { message?: string } }).json?.message ?? describeError(err);
  return new StageError(
    ErrorCode.GpuUnavailable,
    `the ${spec.stage} stage requests ${spec.gpus === undefined ? 'GPUs' : describeGpus(spec.gpus)} but the Docker host has no GPU runtime for the request (Docker: ${reason}); install the NVIDIA Container Toolkit there or unset its GPUS setting`,
    { cause: err },
  );
}

/** A container is still (or again) running, or may be: anything but exited or dead. */
const mayRun = (info: ContainerInspectInfo) => info.State.Status !== 'exited' && info.State.Status !== 'dead';

export function createDockerClient(dockerHost?: string): Docker {
  if (dockerHost === undefined) return new Docker();
  const url = new URL(dockerHost);
  if (url.protocol === 'unix:') return new Docker({ socketPath: url.pathname });
  return new Docker({ host: url.hostname, port: Number(url.port || 2375), protocol: url.protocol === 'https:' ? 'https' : 'http' });
}

export function createContainerRunner(deps: RunnerDeps): ContainerRunner {
  const { docker, logger } = deps;
  const stopGrace = deps.stopGraceSeconds ?? 10;
  const maxRetryDelay = deps.maxRetryDelayMs ?? 2000;

  async function pull(image: string): Promise<void> {
    try {
      const stream = await docker.pull(image);
      await new Promise<void>((resolve, reject) => {
        docker.modem.followProgress(stream, (err: Error | null, events: { error?: string; errorDetail?: { message?: string } }[]) => {
          const failed = events?.find((e) => e.error !== undefined || e.errorDetail !== undefined);
          if (err) reject(err);
          else if (failed) reject(new Error(failed.errorDetail?.message ?? failed.error));
          else resolve();
        });
      });
    } catch (err) {
      throw stageError(`pull image ${image}`, err, ErrorCode.PullFailed);
    }
  }

  /** Refuses a container of another deployment: it is never adopted, stopped or removed by this one. */
  function assertOurs(info: ContainerInspectInfo, what: string): void {
    assertOwned('container', info.Name.replace(/^\//, ''), info.Config.Labels, deps.instance, what);
  }

  /** Docker's view of the container, null when it does not exist; a failed call's error is passed on as is. */
  async function inspectRaw(container: Container): Promise<ContainerInspectInfo | null> {
    try {
      return await container.inspect();
    } catch (err) {
      if (STATUS(err) === 404) return null;
      throw err;
    }
  }

  async function inspectOrNull(container: Container) {
    try {
      return await inspectRaw(container);
    } catch (err) {
      throw stageError('inspect container', err, ErrorCode.DockerUnavailable);
    }
  }

  /** Removes without asking whose it is: only for containers this runner has checked or created. */
  async function removeChecked(idOrName: string): Promise<void> {
    try {
      await docker.getContainer(idOrName).remove({ force: true, v: true });
    } catch (err) {
      const status = STATUS(err);
      if (status === 404 || status === 409) return; // gone, or removal already in progress
      throw stageError(`remove container ${idOrName}`, err, ErrorCode.DockerUnavailable);
    }
  }

  async function remove(idOrName: string): Promise<void> {
    const info = await inspectOrNull(docker.getContainer(idOrName));
    if (info === null) return;
    assertOurs(info, 'remove');
    await removeChecked(info.Id);
  }

  /** Creates the container; Docker's 404 (no such image) and 409 (name taken) are left to the caller. */
  async function create(spec: StageSpec, name: string): Promise<Container> {
    let container: Container;
    try {
      container = await docker.createContainer({
        name,
        Image: spec.image,
        Env: stageEnv(spec),
        Tty: false,
        AttachStdout: true,
        AttachStderr: true,
        Labels: stageLabels(spec, deps),
        HostConfig: {
          AutoRemove: false,
          Mounts: spec.mounts.map((m) => ({ Type: 'bind' as const, Source: m.source, Target: m.target })),
          ...(spec.network !== undefined ? { NetworkMode: spec.network } : {}),
          ...(spec.memoryBytes !== undefined ? { Memory: spec.memoryBytes, MemorySwap: spec.memoryBytes } : {}),
          ...(spec.gpus !== undefined ? { DeviceRequests: [gpuDeviceRequest(spec.gpus)] } : {}),
        },
      });
    } catch (err) {
      if (isNameTaken(err) || isMissingImage(err)) throw err;
      if (isGpuUnavailable(err)) throw gpuUnavailable(spec, err);
      throw stageError(`create the ${spec.stage} container`, err, ErrorCode.ContainerCreate);
    }
    if (spec.gpus !== undefined) await assertGpusKept(spec, container);
    return container;
  }

  /**
   * An engine may accept DeviceRequests and drop them (Podman's compat API does): the container would run without
   * its GPUs. Its inspect tells; such a container is removed before it starts and the stage fails with GPU_UNAVAILABLE.
   */
  async function assertGpusKept(spec: StageSpec, container: Container): Promise<void> {
    const info = await inspectOrNull(container);
    if ((info?.HostConfig.DeviceRequests ?? []).length > 0) return;
    await removeChecked(container.id);
    throw new StageError(
      ErrorCode.GpuUnavailable,
      `the ${spec.stage} stage requests ${spec.gpus === undefined ? 'GPUs' : describeGpus(spec.gpus)} but the engine dropped the container's DeviceRequests (Podman's Docker-compatible API ignores them); run GPU stages on a Docker engine with a GPU runtime`,
    );
  }

  /**
   * This run's container of the stage when it exists and was started; one created but never started is removed.
   * Another deployment's container under the name is refused, never adopted.
   */
  async function startedContainer(name: string): Promise<{ container: Container; existing: ContainerInspectInfo } | null> {
    const existing = await inspectOrNull(docker.getContainer(name));
    if (existing === null) return null;
    assertOurs(existing, 'adopt');
    const container = docker.getContainer(existing.Id);
    if (existing.State.Status !== 'created') return { container, existing };
    await removeChecked(existing.Id); // created but never started: start afresh
    return null;
  }

  /**
   * The stage's container: created, or the one this run already has (adopted: a redelivered step, or `adoptOnly`).
   * Creation is tried first, so the usual case costs one Docker call: a missing image (404) is pulled
   * as PULL_POLICY allows, and an existing name (409) is adopted.
   */
  async function createOrAdopt(spec: StageSpec, name: string): Promise<{ container: Container; existing: ContainerInspectInfo | null }> {
    if (spec.adoptOnly === true || deps.pullPolicy === 'always') {
      const found = await startedContainer(name);
      if (found !== null) return found;
      if (spec.adoptOnly === true) {
        throw new StageError(
          ErrorCode.ContainerGone,
          `the ${spec.stage} container of run ${spec.runId} was started before the service restarted and no longer exists; its outcome is unknown`,
        );
      }
      await pull(spec.image);
    }
    let pulled = deps.pullPolicy === 'always';
    for (let attempt = 1; ; attempt++) {
      try {
        return { container: await create(spec, name), existing: null };
      } catch (err) {
        if (err instanceof StageError && err.code === ErrorCode.GpuUnavailable) throw err; // another try would fail the same way
        if (attempt >= 3) throw stageError(`create the ${spec.stage} container`, err, ErrorCode.ContainerCreate);
        if (!isMissingImage(err)) {
          const found = await startedContainer(name); // 409: the name is taken
          if (found !== null) return found;
          continue;
        }
        if (deps.pullPolicy === 'never') {
          throw new StageError(ErrorCode.ImageNotFound, `image ${spec.image} is not present and PULL_POLICY=never forbids pulling it`, { cause: err });
        }
        if (pulled) throw new StageError(ErrorCode.ImageNotFound, `image ${spec.image} not found`, { cause: err });
        await pull(spec.image);
        pulled = true;
      }
    }
  }

  async function run(spec: StageSpec): Promise<StageResult> {
    const started = Date.now();
    const name = containerName(spec.stage, spec.runId, deps.instance);
    const log = logger.child({ stage: spec.stage, runId: spec.runId, container: name });

    const { signal, release } = runSignal(spec.signal);
    const untilDocker = <T>(what: string, call: () => Promise<T>) => untilEngine({ signal, log, maxRetryDelayMs: maxRetryDelay }, what, call);

    let adopted = false;
    let id = '';
    try {
      const { container, existing } = await createOrAdopt(spec, name);
      adopted = existing !== null;
      id = container.id;
      // Mask the values the container was started with (its own environment, for the keys its label names)
      // as well as the env file's current ones: a secret rotated since must not leak from an adopted container.
      const reader = outputReader(spec, existing === null ? null : { env: existing.Config.Env ?? [], envKeysLabel: existing.Config.Labels?.[LABELS.envKeys] });

      let stream: NodeJS.ReadableStream | null = null;
      let containerStartedAt: number;
      if (existing === null) {
        stream = await attachAndStart(container, spec, name);
        if (stream === null) await startIfNotStarted(container);
        containerStartedAt = Date.now();
        deps.onContainerStart?.(spec.stage);
        log.info({ image: spec.image }, 'container started');
      } else {
        log.info({ state: existing.State.Status }, 'adopting existing container');
        containerStartedAt = Date.parse(existing.State.StartedAt) || Date.now();
      }
      try {
        await spec.onStarted?.({ id, name, adopted });
      } catch (err) {
        (stream as { destroy?: () => void } | null)?.destroy?.(); // the container runs on, for a redelivery to adopt
        throw new OnStartedFailed(err);
      }

      // The deadline runs from the container's own start. A container that has already exited is judged by
      // its own exit: no timer. One past its deadline is stopped at once; while Docker is away, as soon as it is back.
      let stopping: Promise<void> | undefined;
      let stoppedByUs = false;
      const stopAtDeadline = () => {
        stopping ??= (async () => {
          log.warn({ timeoutMs: spec.timeoutMs }, 'stage timed out; stopping container');
          try {
            await untilDocker('stop the timed-out container', () => container.stop({ t: stopGrace }));
            stoppedByUs = true;
          } catch (err) {
            if (err instanceof HandedBack || STATUS(err) === 304 || STATUS(err) === 404) return; // shutting down; stopped on its own; gone
            log.error({ err: describeError(err) }, 'could not stop container');
          }
        })();
      };
      const exitedAlready = existing !== null && !mayRun(existing);
      const timer = exitedAlready ? undefined : setTimeout(stopAtDeadline, Math.max(0, containerStartedAt + spec.timeoutMs - Date.now()));

      let final: ContainerInspectInfo;
      try {
        final = await follow(container, stream, reader);
        await stopping;
      } finally {
        clearTimeout(timer);
      }
      await reader.end();
      const exitCode = final.State.ExitCode;
      const oomKilled = final.State.OOMKilled ?? false;
      // Stopped by us, or (an earlier instance's stop) killed after running its full limit.
      const ran = ranForMs(final.State);
      const timedOut = stoppedByUs || (!oomKilled && exitCode !== 0 && ran !== null && ran >= spec.timeoutMs);
      const result: StageResult = {
        status: 'exited',
        exitCode,
        oomKilled,
        timedOut,
        phraseFound: reader.phraseFound,
        adopted,
        durationMs: Date.now() - started,
        containerId: id,
      };
      log.info({ exitCode, oomKilled, timedOut, phraseFound: result.phraseFound }, 'container finished');
      return result;
    } catch (err) {
      return endOfRun(err, { stage: spec.stage, what: 'container', log, adopted, started, id });
    } finally {
      release();
    }

    /**
     * The start request's answer was lost with the connection: once Docker is back, a container still
     * only created is started (no attach stream then: its output is read from its log, from the start).
     */
    async function startIfNotStarted(container: Container): Promise<void> {
      const { value: info } = await untilDocker('learn whether the container started', () => inspectRaw(container));
      if (info === null) throw new StageError(ErrorCode.ContainerStart, `container ${name} disappeared while it was being started`);
      if (info.State.Status !== 'created') return;
      await untilDocker('start the container', () => container.start()).catch((err: unknown) => {
        if (STATUS(err) !== 304) throw stageError(`start the ${spec.stage} container`, err, ErrorCode.ContainerStart); // 304: it did start
      });
    }

    /**
     * Follows the container's output to its end and returns its final inspect. The output comes from the
     * attach stream (a new container) or the log (an adopted one). Whenever a stream ends or breaks, Docker
     * says what happened: still running → its log is followed again, skipping the bytes of each stream
     * already processed (so no line is scanned or forwarded twice, and none is lost); exited → the rest of
     * its log is read the same way; gone (404) → ContainerGone. A lost connection is retried until Docker is
     * back; only a shutdown (HandedBack) ends the wait early.
     */
    async function follow(container: Container, first: NodeJS.ReadableStream | null, reader: OutputReader): Promise<ContainerInspectInfo> {
      const { processed } = reader;
      let stream = first;
      let skip = { stdout: 0, stderr: 0 };
      let fromLog = first === null;
      for (let round = 0; ; round++) {
        let endedCleanly = false;
        if (stream !== null) {
          try {
            await reader.pump(stream, skip, signal);
            endedCleanly = true;
          } catch (err) {
            if (err instanceof HandedBack) throw err;
            log.warn({ err: describeError(err), processed }, 'container output stream broke; asking Docker');
          }
        }
        const { value: info, retried } = await untilDocker('inspect the container', () => inspectRaw(container));
        if (info === null) {
          throw new StageError(ErrorCode.ContainerGone, `container ${name} disappeared before its exit status could be read`);
        }
        // A log stream's clean end is its complete response. An attach stream's end is only the connection
        // closing: trusted when Docker, asked right away, says the container is no longer running.
        if (!mayRun(info) && endedCleanly && (fromLog || !retried)) return info;
        if (round > 0 && endedCleanly && mayRun(info)) await pause(Math.min(100 * round, maxRetryDelay), signal);
        if (stream !== null) log.info({ state: info.State.Status, processed }, 'following the container log again, past the output already read');
        const { value } = await untilDocker('follow the container log', () => container.logs({ follow: true, stdout: true, stderr: true }));
        stream = value as unknown as NodeJS.ReadableStream;
        skip = { ...processed };
        fromLog = true;
      }
    }
  }

  /**
   * Attaches (before the start, so no early line is lost) and starts a created container. Null when the
   * start's answer was lost with the Docker connection: whether it started is for the caller to find out.
   */
  async function attachAndStart(container: Container, spec: StageSpec, name: string): Promise<NodeJS.ReadableStream | null> {
    let stream: NodeJS.ReadableStream | undefined;
    try {
      stream = (await container.attach({ stream: true, stdout: true, stderr: true })) as NodeJS.ReadableStream;
      await container.start();
      return stream;
    } catch (err) {
      if (stream !== undefined && isDockerDown(err)) {
        (stream as unknown as { destroy?: () => void }).destroy?.();
        return null;
      }
      (stream as unknown as { destroy?: () => void } | undefined)?.destroy?.();
      await removeChecked(name).catch(() => undefined);
      if (isGpuUnavailable(err)) throw gpuUnavailable(spec, err);
      throw stageError(`start the ${spec.stage} container`, err, ErrorCode.ContainerStart);
    }
  }

  async function list(filter: { stage?: Stage; runId?: string } = {}) {
    const found = await docker.listContainers({ all: true, filters: { label: labelFilter(deps.instance, filter) } });
    return found.map((c) => ({ id: c.Id, name: (c.Names[0] ?? '').replace(/^\//, ''), state: c.State, labels: c.Labels }));
  }

  return { run, list, remove };
}
