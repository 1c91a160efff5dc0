/**
 * What both container backends (plain Docker containers, shared/docker.ts, and Swarm jobs, shared/swarm.ts) share:
 * telling a lost engine from an engine's answer, waiting for it, the per-run abort signal, the labels and environment
 * of a stage's container, and reading its multiplexed output into masked, scanned lines.
 */
import { ErrorCode, StageError, describeError } from './errors';
import { FrameDemuxer, StreamScanner, createMasker, envValuesOf, type StreamName } from './lines';
import type { Logger } from './logger';
import type { Stage } from './events';
import type { StageResult } from './docker';

/** Labels on every container (and Swarm job service) the pipeline starts, so a restarted service can find its own. */
export const LABELS = {
  managed: 'io.brain-pipeline.managed',
  stage: 'io.brain-pipeline.stage',
  runId: 'io.brain-pipeline.run-id',
  service: 'io.brain-pipeline.service',
  /** The deployment (one NATS event stream): pipelines sharing a Docker engine never touch each other's containers. */
  instance: 'io.brain-pipeline.instance',
  /** The env-file keys the container was started with (comma-separated; keys are not secret): their values are masked on adoption. */
  envKeys: 'io.brain-pipeline.env-keys',
} as const;

/** The HTTP status of a failed engine call, if the engine answered. */
export const statusOf = (err: unknown): number | undefined => (err as { statusCode?: number }).statusCode;

/** The connection to Docker failed (refused, reset, socket hang up, gone): Docker, not the container, is the problem. */
export function isDockerDown(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return (
    code === 'ECONNREFUSED' ||
    code === 'ENOENT' ||
    code === 'ECONNRESET' ||
    code === 'EPIPE' ||
    code === 'EACCES' ||
    code === 'ETIMEDOUT' ||
    code === 'EHOSTUNREACH' ||
    code === 'ENOTCONN' ||
    code === 'ERR_STREAM_PREMATURE_CLOSE'
  );
}

/** The engine's own reason for a failed call (its JSON `message`), or the error's. */
export const reasonOf = (err: unknown): string => (err as { json?: { message?: string } }).json?.message ?? describeError(err);

/** Turns a dockerode failure into a StageError with a message a person can act on. */
export function stageError(what: string, err: unknown, code: ErrorCode): StageError {
  if (err instanceof StageError) return err;
  if (isDockerDown(err)) {
    return new StageError(ErrorCode.DockerUnavailable, `Docker engine unreachable while trying to ${what}: ${describeError(err)}`, { cause: err });
  }
  return new StageError(code, `could not ${what}: ${reasonOf(err).replace(/^\(HTTP code \d+\) [a-z ]+ - /, '')}`, { cause: err });
}

/** Thrown inside `run` when the service shuts down: stop following, leave the container running. */
export class HandedBack extends Error {
  constructor() {
    super('handed back');
  }
}

/** Carries the caller's own error out of `onStarted`, unchanged. */
export class OnStartedFailed extends Error {
  constructor(cause: unknown) {
    super('onStarted failed', { cause });
  }
}

/** Resolves after `ms`, or rejects with HandedBack once `signal` aborts. */
export function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new HandedBack());
    const onAbort = () => {
      clearTimeout(timer);
      reject(new HandedBack());
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * This run's own abort signal: one listener on the caller's (possibly long-lived) signal, removed by `release`
 * when the run ends; everything inside the run listens on `signal`.
 */
export function runSignal(outer: AbortSignal): { signal: AbortSignal; release: () => void } {
  const controller = new AbortController();
  const onAbort = () => controller.abort();
  if (outer.aborted) controller.abort();
  else outer.addEventListener('abort', onAbort, { once: true });
  return { signal: controller.signal, release: () => outer.removeEventListener('abort', onAbort) };
}

/**
 * Calls the engine until it answers: a lost connection (refused, reset, hang up) is retried with backoff (up to
 * `maxRetryDelayMs` between tries) until the engine is back or the run is handed back (HandedBack). Any answer
 * from the engine, an error status included, is the caller's.
 */
export async function untilEngine<T>(
  ctx: { signal: AbortSignal; log: Logger; maxRetryDelayMs: number },
  what: string,
  call: () => Promise<T>,
): Promise<{ value: T; retried: boolean }> {
  let retried = false;
  for (let delay = 100; ; delay = Math.min(delay * 2, ctx.maxRetryDelayMs)) {
    if (ctx.signal.aborted) throw new HandedBack();
    try {
      return { value: await call(), retried };
    } catch (err) {
      if (!isDockerDown(err)) throw err;
      if (!retried) ctx.log.warn({ err: describeError(err) }, `Docker unreachable while trying to ${what}; retrying until it is back`);
      retried = true;
      await pause(delay, ctx.signal);
    }
  }
}

/** What the labels and environment of a stage's container are made from. */
export interface LabelledStage {
  stage: Stage;
  runId: string;
  env: Record<string, string>;
}

/** The labels of a stage's container (or job service) in a deployment. */
export const stageLabels = (spec: LabelledStage, owner: { service: string; instance: string }): Record<string, string> => ({
  [LABELS.managed]: 'true',
  [LABELS.stage]: spec.stage,
  [LABELS.runId]: spec.runId,
  [LABELS.service]: owner.service,
  [LABELS.instance]: owner.instance,
  [LABELS.envKeys]: Object.keys(spec.env).join(','),
});

/** The container's environment: the env file's values and the run's id and stage. */
export const stageEnv = (spec: LabelledStage): string[] => [...Object.entries(spec.env).map(([k, v]) => `${k}=${v}`), `BRAIN_RUN_ID=${spec.runId}`, `BRAIN_STAGE=${spec.stage}`];

/** The label filter of a deployment's containers (or job services), narrowed to a stage or a run. */
export function labelFilter(instance: string, filter: { stage?: Stage; runId?: string }): string[] {
  const labels = [`${LABELS.managed}=true`, `${LABELS.instance}=${instance}`];
  if (filter.stage !== undefined) labels.push(`${LABELS.stage}=${filter.stage}`);
  if (filter.runId !== undefined) labels.push(`${LABELS.runId}=${filter.runId}`);
  return labels;
}

/** Refuses a container (or job service) of another deployment: it is never adopted, stopped or removed by this one. */
export function assertOwned(kind: string, name: string, labels: Record<string, string> | undefined, instance: string, what: string): void {
  const owner = labels?.[LABELS.instance];
  if (owner === instance) return;
  throw new StageError(
    ErrorCode.ContainerForeign,
    `${kind} ${name} belongs to ${owner === undefined ? 'no pipeline deployment' : `deployment ${owner}`}, not to ${instance}; refusing to ${what} it`,
  );
}

/** Payload bytes of each output stream. */
export type ByteCounts = Record<StreamName, number>;

/** Reads a stage's output: its scanners (phrase, masking) and where its lines go. */
export interface OutputReader {
  scanners: Record<StreamName, StreamScanner>;
  /** Bytes of each stream processed so far (scanned and forwarded). */
  processed: ByteCounts;
  /**
   * Reads a multiplexed stream to its end, after dropping the first `skip` payload bytes of each stream (what an
   * earlier stream of the same output already gave), scanning and forwarding the rest. Destroying the stream is
   * how it is ended early: an abort of `signal` does so and throws HandedBack.
   */
  pump(stream: NodeJS.ReadableStream, skip: ByteCounts, signal: AbortSignal): Promise<void>;
  /** Forwards what the scanners still hold (a last line without a newline). */
  end(): Promise<void>;
  readonly phraseFound: boolean;
}

/**
 * The reader of one run's output: masks the values of the env file and, for an adopted container, those it was
 * started with (`startedWithEnv`, for the keys `envKeysLabel` names), so a secret rotated since cannot leak.
 */
export function outputReader(
  spec: { env: Record<string, string>; phrase?: string | undefined; onLines?: (stream: StreamName, lines: string[]) => void | Promise<void> },
  startedWith: { env: readonly string[]; envKeysLabel: string | undefined } | null,
): OutputReader {
  const startedWithValues = startedWith === null ? [] : envValuesOf(startedWith.env, startedWith.envKeysLabel);
  const masker = createMasker([...Object.values(spec.env), ...startedWithValues]);
  const scanners: Record<StreamName, StreamScanner> = { stdout: new StreamScanner(spec.phrase, masker), stderr: new StreamScanner(spec.phrase, masker) };
  const processed: ByteCounts = { stdout: 0, stderr: 0 };
  const forward = async (name: StreamName, lines: string[]) => {
    if (lines.length > 0 && spec.onLines) await spec.onLines(name, lines);
  };
  return {
    scanners,
    processed,
    get phraseFound() {
      return scanners.stdout.phraseFound || scanners.stderr.phraseFound;
    },
    async end() {
      for (const s of ['stdout', 'stderr'] as const) await forward(s, scanners[s].end());
    },
    async pump(stream, skipFirst, signal) {
      const skip = { ...skipFirst };
      const source = stream as NodeJS.ReadableStream & { destroy?: () => void };
      const onAbort = () => source.destroy?.();
      if (signal.aborted) {
        onAbort();
        throw new HandedBack();
      }
      signal.addEventListener('abort', onAbort, { once: true });
      try {
        const demux = new FrameDemuxer();
        for await (const chunk of stream as AsyncIterable<Buffer>) {
          for (const frame of demux.push(chunk)) {
            const s = frame.stream;
            let payload = frame.payload;
            if (skip[s] > 0) {
              const n = Math.min(skip[s], payload.length);
              skip[s] -= n;
              payload = payload.subarray(n);
            }
            if (payload.length === 0) continue;
            processed[s] += payload.length;
            await forward(s, scanners[s].push(payload));
          }
        }
      } catch (err) {
        if (signal.aborted) throw new HandedBack();
        throw err;
      } finally {
        signal.removeEventListener('abort', onAbort);
        source.destroy?.();
      }
      if (signal.aborted) throw new HandedBack();
    },
  };
}

/** Milliseconds a finished container ran, from its own timestamps; null when Docker has none. */
export function ranForMs(state: { StartedAt: string; FinishedAt: string }): number | null {
  const started = Date.parse(state.StartedAt);
  const finished = Date.parse(state.FinishedAt);
  if (!Number.isFinite(started) || !Number.isFinite(finished) || finished < started) return null;
  return finished - started;
}

/**
 * How a run that threw ends: the caller's own error from `onStarted` is rethrown as it is; a hand-back (the service
 * shuts down) is a `handed-back` result, the container or job left running for the next instance to adopt; any
 * other error is a StageError (`follow <what>`).
 */
export function endOfRun(err: unknown, run: { stage: Stage; what: string; log: Logger; adopted: boolean; started: number; id: string }): StageResult {
  if (err instanceof OnStartedFailed) throw err.cause;
  if (!(err instanceof HandedBack)) throw stageError(`follow the ${run.stage} ${run.what}`, err, ErrorCode.ContainerGone);
  run.log.info(`stopped watching; ${run.what} left running for the next service instance`);
  return {
    status: 'handed-back',
    exitCode: null,
    oomKilled: false,
    timedOut: false,
    phraseFound: false,
    adopted: run.adopted,
    durationMs: Date.now() - run.started,
    containerId: run.id,
  };
}
