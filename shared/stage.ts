import type { EventBus, HandlerResult } from './bus';
import type { ContainerRunner, StageResult } from './docker';
import { readEnvFile } from './envfile';
import type { EventBody, EventSubject, Stage } from './events';
import type { StreamName } from './lines';
import type { Logger } from './logger';
import type { RecordedEvent, StepHandle } from './record';

export interface StageRequest {
  stage: Stage;
  runId: string;
  image: string;
  envDir: string;
  envFile: string;
  mounts: { source: string; target: string }[];
  network?: string;
  timeoutMs: number;
  phrase?: string;
  memoryBytes?: number;
  signal: AbortSignal;
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
export async function runContainerStage(runner: ContainerRunner, bus: EventBus, step: StepHandle, req: StageRequest): Promise<StageResult> {
  const known = step.record.containers[req.stage];
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
  const env = await readEnvFile(req.envDir, req.envFile);
  const forwarder = createLogForwarder(bus, req.stage, req.runId);
  let result: StageResult;
  try {
    result = await runner.run({
      stage: req.stage,
      runId: req.runId,
      image: req.image,
      env,
      mounts: req.mounts,
      ...(req.network !== undefined ? { network: req.network } : {}),
      timeoutMs: req.timeoutMs,
      ...(req.phrase !== undefined ? { phrase: req.phrase } : {}),
      ...(req.memoryBytes !== undefined ? { memoryBytes: req.memoryBytes } : {}),
      resume: known !== undefined,
      onLines: (stream, lines) => forwarder.add(stream, lines),
      onStarted: (c) => step.container(req.stage, { id: c.id, name: c.name, state: 'started' }),
      signal: req.signal,
    });
  } finally {
    await forwarder.close();
  }
  if (result.status === 'exited') {
    const { exitCode, oomKilled, timedOut, phraseFound, durationMs } = result;
    await step.container(req.stage, {
      id: result.containerId,
      name: step.record.containers[req.stage]?.name ?? result.containerId,
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
export async function finishStep(
  deps: FinishDeps,
  step: StepHandle,
  events: RecordedEvent[],
  beforePublish?: () => Promise<unknown>,
): Promise<HandlerResult> {
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
