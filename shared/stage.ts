import { elapsedMs, monotonicNow, type EventBus, type HandlerResult } from './bus';
import type { Config, GpuRequest } from './config';
import { HOST_DIR_SETTINGS, type StageDefinition } from './definition';
import { ErrorCode, StageError, describeError } from './errors';
import type { ContainerRunner, StageResult } from './docker';
import { readEnvFile } from './envfile';
import type { EventBody, EventSubject, Stage } from './events';
import type { StreamName } from './lines';
import type { Logger } from './logger';
import type { RecordedEvent, StepHandle, StepRecord, StepRecords } from './record';
import { msgIdFor } from './service';

/**
 * What a stage's container needs that does not change from run to run: its definition resolved against the
 * configuration, once, when the service is made.
 */
export interface StagePlan {
  stage: Stage;
  image: string;
  envDir: string;
  envFile: string;
  mounts: { source: string; target: string }[];
  network: string | undefined;
  timeoutMs: number;
  phrase: string | undefined;
  memoryBytes: number | undefined;
  gpus: GpuRequest | undefined;
}

/**
 * A stage's plan from its definition and the configuration.
 * @throws StageError (CONFIG_INVALID) when a host directory it mounts is not configured (validation requires it).
 */
export function planStage(def: StageDefinition, config: Config): StagePlan {
  return {
    stage: def.stage,
    image: config.images[def.settings],
    envDir: config.envDir,
    envFile: def.envFile,
    mounts: def.mounts.map(({ hostDir, target }) => {
      const source = config.hostDirs[hostDir];
      if (source === undefined) throw new StageError(ErrorCode.Config, `the ${def.stage} stage needs ${HOST_DIR_SETTINGS[hostDir]}`);
      return { source, target };
    }),
    network: config.network,
    timeoutMs: config.timeoutsMs[def.settings],
    phrase: def.phrase !== undefined ? config.phrases[def.phrase] : undefined,
    memoryBytes: config.memoryBytes[def.settings],
    gpus: config.gpus[def.settings],
  };
}

/** Batches of log lines are published once they reach this size, or after FLUSH_AFTER_MS. */
const BATCH_BYTES = 32 * 1024;
const FLUSH_AFTER_MS = 50;
/** After this many bytes are handed to NATS, wait for the server to catch up (backpressure on the container log). */
const FLUSH_EVERY_BYTES = 4 * 1024 * 1024;

/**
 * Publishes container output on `logs.<stage>.<runId>` in batches of lines, live.
 * Each message carries one stream's lines in order.
 */
export function createLogForwarder(bus: EventBus, stage: Stage, runId: string) {
  const pending: Record<StreamName, { lines: string[]; bytes: number }> = {
    stdout: { lines: [], bytes: 0 },
    stderr: { lines: [], bytes: 0 },
  };
  let unflushedBytes = 0;
  let timer: NodeJS.Timeout | undefined;

  const publish = (stream: StreamName) => {
    const batch = pending[stream];
    if (batch.lines.length === 0) return;
    bus.publishLogs(stage, runId, stream, batch.lines);
    unflushedBytes += batch.bytes;
    pending[stream] = { lines: [], bytes: 0 };
  };
  const publishAll = () => {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    publish('stdout');
    publish('stderr');
  };

  return {
    async add(stream: StreamName, lines: string[]): Promise<void> {
      const batch = pending[stream];
      for (const line of lines) {
        batch.lines.push(line);
        batch.bytes += line.length + 1;
      }
      if (batch.bytes >= BATCH_BYTES) publish(stream);
      else timer ??= setTimeout(publishAll, FLUSH_AFTER_MS);
      if (unflushedBytes >= FLUSH_EVERY_BYTES) {
        unflushedBytes = 0;
        await bus.flush();
      }
    },
    async close(): Promise<void> {
      publishAll();
      await bus.flush();
    },
  };
}

/**
 * Runs one stage's container with its env file, forwarding its output to the logs subject, and records
 * its life in the step's record: started (container id), exited (exit status). A redelivered step follows
 * the container its record names (never a second one) or, when the record already holds its exit, runs nothing.
 */
export async function runContainerStage(runner: ContainerRunner, bus: EventBus, step: StepHandle, plan: StagePlan, signal: AbortSignal): Promise<StageResult> {
  const known = step.record.containers[plan.stage];
  if (known !== undefined && known.state !== 'started') {
    return {
      status: 'exited',
      exitCode: known.exitCode ?? null,
      oomKilled: known.oomKilled ?? false,
      timedOut: known.timedOut ?? false,
      phraseFound: known.phraseFound ?? false,
      adopted: true,
      durationMs: known.durationMs ?? 0,
      containerId: known.id,
    };
  }
  const { runId } = step.record;
  const env = await readEnvFile(plan.envDir, plan.envFile);
  const forwarder = createLogForwarder(bus, plan.stage, runId);
  let result: StageResult;
  try {
    result = await runner.run({
      stage: plan.stage,
      runId,
      image: plan.image,
      env,
      mounts: plan.mounts,
      network: plan.network,
      timeoutMs: plan.timeoutMs,
      phrase: plan.phrase,
      memoryBytes: plan.memoryBytes,
      ...(plan.gpus !== undefined ? { gpus: plan.gpus } : {}),
      adoptOnly: known !== undefined,
      onLines: (stream, lines) => forwarder.add(stream, lines),
      onStarted: (c) => step.container(plan.stage, { id: c.id, name: c.name, state: 'started' }),
      signal,
    });
  } finally {
    await forwarder.close();
  }
  if (result.status === 'exited') {
    const { exitCode, oomKilled, timedOut, phraseFound, durationMs } = result;
    await step.container(plan.stage, {
      id: result.containerId,
      name: step.record.containers[plan.stage]?.name ?? result.containerId,
      state: 'exited',
      exitCode,
      oomKilled,
      timedOut,
      phraseFound,
      durationMs,
    });
  }
  return result;
}

/**
 * A stage's own failure (its image, container, env file, Docker, timeout: a `StageError`), which ends the step
 * `failed`, as opposed to an error of NATS or of the run record, after which the step must not end: the message is
 * handed back and a redelivery continues the step from its record.
 */
export const isStageFailure = (err: unknown): err is StageError => err instanceof StageError;

/** An event for the step's end: its subject, body and the message id the stream deduplicates it by. */
export const stepEvent = <S extends EventSubject>(subject: S, body: EventBody<S>, msgId: string): RecordedEvent => ({
  subject,
  body: body as Record<string, unknown>,
  msgId,
});

export interface FinishDeps {
  bus: EventBus;
  runner: ContainerRunner;
  logger: Logger;
}

/**
 * Ends a step: records its events (a step already ended keeps its first ending), publishes those the stream
 * does not have yet, then removes its containers. Each phase is recorded, so a restart at any point
 * finishes the same ending instead of running the step again. `beforePublish` runs once the ending is
 * recorded (the lease hand-off, so the next step can take the lock when its event arrives).
 */
export async function finishStep(deps: FinishDeps, step: StepHandle, events: RecordedEvent[], beforePublish?: () => Promise<unknown>): Promise<HandlerResult> {
  const ending = await step.end(events);
  await beforePublish?.();
  for (let i = step.record.published; i < ending.length; i++) {
    const event = ending[i] as RecordedEvent;
    await deps.bus.publish(event.subject as EventSubject, event.body as EventBody<EventSubject>, { msgId: event.msgId });
    await step.published(i + 1);
  }
  if (!step.record.closed) {
    for (const container of Object.values(step.record.containers)) {
      if (container.state !== 'removed') await deps.runner.remove(container.id);
    }
    await step.close();
  }
  return 'done';
}
/** Why a finished container counts as a failure, or undefined when it succeeded. */
export function failureOf(result: StageResult, timeoutMs: number): string | undefined {
  if (result.timedOut) return `timed out after ${Math.round(timeoutMs / 1000)} s; the container was stopped`;
  if (result.oomKilled) return `the container was killed for running out of memory (exit code ${result.exitCode ?? 137})`;
  if (result.exitCode !== 0) return `the container exited with code ${result.exitCode ?? 'unknown'}`;
  return undefined;
}

/**
 * What a (re)delivered message finds in its step's record before any work: a step another message began
 * (a reused run id) is refused; a step already ended is finished again (publish what is missing, remove
 * what is left) and never run twice. Undefined: the step is new, or was interrupted before its end.
 */
export async function priorEnding(deps: FinishDeps, step: StepHandle, what: string): Promise<HandlerResult | undefined> {
  const { record } = step;
  if (!step.sameMessage) {
    return {
      rejected: `run id ${record.runId} is already used: its ${record.step} step was begun by ${record.subject} #${record.trigger} at ${record.startedAt}; choose another run id for ${what}`,
    };
  }
  if (record.events !== undefined) {
    deps.logger.info({ runId: record.runId, step: record.step }, 'step already ended; finishing its recorded ending');
    return finishStep(deps, step, record.events);
  }
  return undefined;
}

/** A stage whose container could not run: its own failure (a `StageError`: image, container, env file, Docker). */
export interface StageNotRun {
  status: 'failed-to-run';
  error: string;
}

/**
 * `runContainerStage`, with the stage's own failure as a result (`failed-to-run`, which ends the step failed).
 * Any other error (NATS, the run record) is thrown: the message is redelivered and the step continued from its record.
 */
export async function runStage(runner: ContainerRunner, bus: EventBus, step: StepHandle, plan: StagePlan, signal: AbortSignal): Promise<StageResult | StageNotRun> {
  try {
    return await runContainerStage(runner, bus, step, plan, signal);
  } catch (err) {
    if (!isStageFailure(err)) throw err;
    return { status: 'failed-to-run', error: describeError(err) };
  }
}

/** A step begun for a message: its record, its logger, and the events and ending it may produce. */
export interface Step {
  readonly runId: string;
  readonly handle: StepHandle;
  /** The service's logger with the step (as `stage`) and the run id. */
  readonly log: Logger;
  /** An event of the run: `subject`, with the run id, deduplicated by `msgIdFor(runId, subject)`. */
  event<S extends EventSubject>(subject: S, body: Omit<EventBody<S>, 'runId'>): RecordedEvent;
  /** The step's `*.done` event: with the run id and the step's duration so far. */
  done<S extends EventSubject>(subject: S, body: Omit<EventBody<S>, 'runId' | 'durationMs'>): RecordedEvent;
  /** `finishStep` for this step. */
  finish(events: RecordedEvent[], beforePublish?: () => Promise<unknown>): Promise<HandlerResult>;
  /**
   * `priorEnding` for this step: what a redelivery or a reused run id finds, or undefined when there is work to do.
   * With `secondMessage: 'ignore'`, a message other than the one that began the step (a second data.new of the run)
   * is logged and acknowledged instead of rejected.
   */
  prior(what: string, opts?: { secondMessage: 'reject' | 'ignore' }): Promise<HandlerResult | undefined>;
}

/** Opens the step's record for a message (a `reason` that is undefined is left out) and times it from now. */
export async function beginStep(
  deps: FinishDeps & { records: StepRecords },
  init: Pick<StepRecord, 'runId' | 'step' | 'subject' | 'trigger'> & { reason?: string | undefined },
): Promise<Step> {
  const { reason, ...rest } = init;
  const { runId } = init;
  const started = monotonicNow();
  const handle = await deps.records.open(reason !== undefined ? { ...rest, reason } : rest);
  const finishDeps = { bus: deps.bus, runner: deps.runner, logger: deps.logger.child({ stage: init.step, runId }) };
  const event = <S extends EventSubject>(subject: S, body: object) => stepEvent(subject, { runId, ...body } as EventBody<S>, msgIdFor(runId, subject));
  return {
    runId,
    handle,
    log: finishDeps.logger,
    event,
    done: (subject, body) => event(subject, { durationMs: elapsedMs(started), ...body }),
    finish: (events, beforePublish) => finishStep(finishDeps, handle, events, beforePublish),
    async prior(what, opts) {
      if (opts?.secondMessage === 'ignore' && !handle.sameMessage) {
        finishDeps.logger.info({ first: handle.record.trigger }, `a second ${init.subject} for a run whose ${what} already began; ignored`);
        return 'done';
      }
      return priorEnding(finishDeps, handle, what);
    },
  };
}
