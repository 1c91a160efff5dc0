import Docker from 'dockerode';
import type { Container, ContainerInspectInfo } from 'dockerode';
import { ErrorCode, StageError, describeError } from './errors';
import { FrameDemuxer, StreamScanner, createMasker, type StreamName } from './lines';
import type { Stage } from './events';
import type { Logger } from './logger';

/** Labels on every container the pipeline starts, so a restarted service can find its own. */
export const LABELS = {
  managed: 'io.brain-pipeline.managed',
  stage: 'io.brain-pipeline.stage',
  runId: 'io.brain-pipeline.run-id',
  service: 'io.brain-pipeline.service',
  /** The deployment (one NATS event stream): pipelines sharing a Docker engine never touch each other's containers. */
  instance: 'io.brain-pipeline.instance',
} as const;

export type PullPolicy = 'always' | 'missing' | 'never';

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
  /** Memory limit in bytes; a container past it is OOM-killed (exit 137). */
  memoryBytes?: number;
  /**
   * The run already started this container before the service restarted: adopt it, and fail
   * (rather than start a second one) when it is gone.
   */
  resume?: boolean;
  /** Aborting stops watching and leaves the container running, for a restarted service to adopt. */
  signal: AbortSignal;
}

export interface StageResult {
  status: 'exited' | 'handed-back';
  exitCode: number | null;
  oomKilled: boolean;
  timedOut: boolean;
  phraseFound: boolean;
  /** True when the container already existed (a redelivered run) and was adopted. */
  adopted: boolean;
  durationMs: number;
}

export interface ContainerRunner {
  run(spec: StageSpec): Promise<StageResult>;
  /** This deployment's labelled containers, for start-up reconciliation and tests. */
  list(filter?: { stage?: Stage; runId?: string }): Promise<{ id: string; name: string; state: string; labels: Record<string, string> }[]>;
  /** Removes a container; a container that is already gone is not an error. */
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
}

export const containerName = (stage: Stage, runId: string) => `brain-${stage}-${runId}`;

const STATUS = (err: unknown): number | undefined => (err as { statusCode?: number }).statusCode;
const isMissingImage = (err: unknown) => STATUS(err) === 404 && /no such image/i.test(describeError(err));

function isDockerDown(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ECONNREFUSED' || code === 'ENOENT' || code === 'ECONNRESET' || code === 'EPIPE' || code === 'EACCES';
}

/** Turns a dockerode failure into a StageError with a message a person can act on. */
function stageError(what: string, err: unknown, code: ErrorCode): StageError {
  if (err instanceof StageError) return err;
  if (isDockerDown(err)) {
    return new StageError(ErrorCode.DockerUnavailable, `Docker engine unreachable while trying to ${what}: ${describeError(err)}`, { cause: err });
  }
  const reason = (err as { json?: { message?: string } }).json?.message ?? describeError(err);
  return new StageError(code, `could not ${what}: ${reason.replace(/^\(HTTP code \d+\) [a-z ]+ - /, '')}`, { cause: err });
}

export function createDockerClient(dockerHost?: string): Docker {
  if (dockerHost === undefined) return new Docker();
  const url = new URL(dockerHost);
  if (url.protocol === 'unix:') return new Docker({ socketPath: url.pathname });
  return new Docker({ host: url.hostname, port: Number(url.port || 2375), protocol: url.protocol === 'https:' ? 'https' : 'http' });
}

export function createContainerRunner(deps: RunnerDeps): ContainerRunner {
  const { docker, logger } = deps;
  const stopGrace = deps.stopGraceSeconds ?? 10;

  async function pull(image: string): Promise<void> {
    try {
      const stream = await docker.pull(image);
      await new Promise<void>((resolve, reject) => {
        docker.modem.followProgress(
          stream,
          (err: Error | null, events: { error?: string; errorDetail?: { message?: string } }[]) => {
            const failed = events?.find((e) => e.error !== undefined || e.errorDetail !== undefined);
            if (err) reject(err);
            else if (failed) reject(new Error(failed.errorDetail?.message ?? failed.error));
            else resolve();
          },
        );
      });
    } catch (err) {
      throw stageError(`pull image ${image}`, err, ErrorCode.PullFailed);
    }
  }

  async function inspectOrNull(container: Container) {
    try {
      return await container.inspect();
    } catch (err) {
      if (STATUS(err) === 404) return null;
      throw stageError('inspect container', err, ErrorCode.DockerUnavailable);
    }
  }

  async function remove(idOrName: string): Promise<void> {
    try {
      await docker.getContainer(idOrName).remove({ force: true, v: true });
    } catch (err) {
      const status = STATUS(err);
      if (status === 404 || status === 409) return; // gone, or removal already in progress
      throw stageError(`remove container ${idOrName}`, err, ErrorCode.DockerUnavailable);
    }
  }

  /** Creates the container; Docker's 404 (no such image) and 409 (name taken) are left to the caller. */
  async function create(spec: StageSpec, name: string): Promise<Container> {
    const env = Object.entries(spec.env).map(([k, v]) => `${k}=${v}`);
    env.push(`BRAIN_RUN_ID=${spec.runId}`, `BRAIN_STAGE=${spec.stage}`);
    try {
      return await docker.createContainer({
        name,
        Image: spec.image,
        Env: env,
        Tty: false,
        AttachStdout: true,
        AttachStderr: true,
        Labels: {
          [LABELS.managed]: 'true',
          [LABELS.stage]: spec.stage,
          [LABELS.runId]: spec.runId,
          [LABELS.service]: deps.service,
          [LABELS.instance]: deps.instance,
        },
        HostConfig: {
          AutoRemove: false,
          Mounts: spec.mounts.map((m) => ({ Type: 'bind' as const, Source: m.source, Target: m.target })),
          ...(spec.network !== undefined ? { NetworkMode: spec.network } : {}),
          ...(spec.memoryBytes !== undefined ? { Memory: spec.memoryBytes, MemorySwap: spec.memoryBytes } : {}),
        },
      });
    } catch (err) {
      if (STATUS(err) === 409 || isMissingImage(err)) throw err;
      throw stageError(`create the ${spec.stage} container`, err, ErrorCode.ContainerCreate);
    }
  }

  /** This run's container of the stage when it exists and was started; one created but never started is removed. */
  async function startedContainer(name: string): Promise<{ container: Container; existing: ContainerInspectInfo } | null> {
    const container = docker.getContainer(name);
    const existing = await inspectOrNull(container);
    if (existing === null) return null;
    if (existing.State.Status !== 'created') return { container, existing };
    await remove(name); // created but never started: start afresh
    return null;
  }

  /**
   * The stage's container: created, or the one this run already has (a redelivered or resumed run).
   * Creation is tried first, so the usual case costs one Docker call: a missing image (404) is pulled
   * as PULL_POLICY allows, and an existing name (409) is adopted.
   */
  async function createOrAdopt(spec: StageSpec, name: string): Promise<{ container: Container; existing: ContainerInspectInfo | null }> {
    if (spec.resume === true || deps.pullPolicy === 'always') {
      const found = await startedContainer(name);
      if (found !== null) return found;
      if (spec.resume === true) {
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

  /** Reads the multiplexed output, scans it and forwards masked lines; resolves at the end of the stream. */
  async function pump(stream: NodeJS.ReadableStream, spec: StageSpec, scanners: Record<StreamName, StreamScanner>) {
    const demux = new FrameDemuxer();
    const forward = async (name: StreamName, lines: string[]) => {
      if (lines.length > 0 && spec.onLines) await spec.onLines(name, lines);
    };
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      for (const frame of demux.push(chunk)) await forward(frame.stream, scanners[frame.stream].push(frame.payload));
    }
    await forward('stdout', scanners.stdout.end());
    await forward('stderr', scanners.stderr.end());
  }

  /** Attaches (before the start, so no early line is lost) and starts a created container. */
  async function attachAndStart(container: Container, spec: StageSpec, name: string): Promise<NodeJS.ReadableStream> {
    try {
      const stream = (await container.attach({ stream: true, stdout: true, stderr: true })) as NodeJS.ReadableStream;
      await container.start();
      return stream;
    } catch (err) {
      await remove(name).catch(() => undefined);
      throw stageError(`start the ${spec.stage} container`, err, ErrorCode.ContainerStart);
    }
  }

  async function run(spec: StageSpec): Promise<StageResult> {
    const started = Date.now();
    const name = containerName(spec.stage, spec.runId);
    const log = logger.child({ stage: spec.stage, runId: spec.runId, container: name });
    const masker = createMasker(Object.values(spec.env));
    const scanners = { stdout: new StreamScanner(spec.phrase, masker), stderr: new StreamScanner(spec.phrase, masker) };

    const { container, existing } = await createOrAdopt(spec, name);
    const adopted = existing !== null;
    let stream: NodeJS.ReadableStream;
    if (existing === null) {
      stream = await attachAndStart(container, spec, name);
      deps.onContainerStart?.(spec.stage);
      log.info({ image: spec.image }, 'container started');
    } else {
      log.info({ state: existing.State.Status }, 'adopting existing container');
      stream = (await container.logs({ follow: true, stdout: true, stderr: true })) as unknown as NodeJS.ReadableStream;
    }

    let timedOut = false;
    const alreadyRanMs = adopted ? Math.max(0, Date.now() - (Date.parse(existing?.State.StartedAt ?? '') || Date.now())) : 0;
    const timeout = setTimeout(() => {
      timedOut = true;
      log.warn({ timeoutMs: spec.timeoutMs }, 'stage timed out; stopping container');
      container.stop({ t: stopGrace }).catch((err: unknown) => {
        if (STATUS(err) !== 304 && STATUS(err) !== 404) log.error({ err: describeError(err) }, 'could not stop container');
      });
    }, Math.max(0, spec.timeoutMs - alreadyRanMs));

    const handBack = new Promise<'handed-back'>((resolve) => {
      if (spec.signal.aborted) resolve('handed-back');
      else spec.signal.addEventListener('abort', () => resolve('handed-back'), { once: true });
    });
    const finished = (async () => {
      await pump(stream, spec, scanners);
      return 'exited' as const;
    })();
    try {
      const outcome = await Promise.race([finished, handBack]);
      if (outcome === 'handed-back') {
        (stream as unknown as { destroy?: () => void }).destroy?.();
        await finished.catch(() => undefined);
        log.info('stopped watching; container left running for the next service instance');
        return { status: 'handed-back', exitCode: null, oomKilled: false, timedOut: false, phraseFound: false, adopted, durationMs: Date.now() - started };
      }
      const waited = await container.wait().catch(() => null);
      const info = await inspectOrNull(container);
      if (info === null && waited === null) {
        throw new StageError(ErrorCode.ContainerGone, `container ${name} disappeared before its exit status could be read`);
      }
      const exitCode = info?.State.ExitCode ?? (waited as { StatusCode?: number } | null)?.StatusCode ?? null;
      const oomKilled = info?.State.OOMKilled ?? false;
      await remove(name);
      const result: StageResult = {
        status: 'exited',
        exitCode,
        oomKilled,
        timedOut,
        phraseFound: scanners.stdout.phraseFound || scanners.stderr.phraseFound,
        adopted,
        durationMs: Date.now() - started,
      };
      log.info({ exitCode, oomKilled, timedOut, phraseFound: result.phraseFound }, 'container finished');
      return result;
    } catch (err) {
      throw stageError(`follow the ${spec.stage} container`, err, ErrorCode.ContainerGone);
    } finally {
      clearTimeout(timeout);
    }
  }

  async function list(filter: { stage?: Stage; runId?: string } = {}) {
    const labels = [`${LABELS.managed}=true`, `${LABELS.instance}=${deps.instance}`];
    if (filter.stage !== undefined) labels.push(`${LABELS.stage}=${filter.stage}`);
    if (filter.runId !== undefined) labels.push(`${LABELS.runId}=${filter.runId}`);
    const found = await docker.listContainers({ all: true, filters: { label: labels } });
    return found.map((c) => ({ id: c.Id, name: (c.Names[0] ?? '').replace(/^\//, ''), state: c.State, labels: c.Labels }));
  }

  return { run, list, remove };
}
