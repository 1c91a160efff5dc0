import type { EventBus } from './bus';
import type { ContainerRunner, StageResult } from './docker';
import { readEnvFile } from './envfile';
import type { Stage } from './events';
import type { StreamName } from './lines';

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
  resume?: boolean;
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

/** Runs one stage's container with its env file, forwarding its output to the logs subject. */
export async function runContainerStage(runner: ContainerRunner, bus: EventBus, req: StageRequest): Promise<StageResult> {
  const env = await readEnvFile(req.envDir, req.envFile);
  const forwarder = createLogForwarder(bus, req.stage, req.runId);
  try {
    return await runner.run({
      stage: req.stage,
      runId: req.runId,
      image: req.image,
      env,
      mounts: req.mounts,
      ...(req.network !== undefined ? { network: req.network } : {}),
      timeoutMs: req.timeoutMs,
      ...(req.phrase !== undefined ? { phrase: req.phrase } : {}),
      ...(req.memoryBytes !== undefined ? { memoryBytes: req.memoryBytes } : {}),
      ...(req.resume !== undefined ? { resume: req.resume } : {}),
      onLines: (stream, lines) => forwarder.add(stream, lines),
      signal: req.signal,
    });
  } finally {
    await forwarder.close();
  }
}

/** Why a finished container counts as a failure, or undefined when it succeeded. */
export function failureOf(result: StageResult, timeoutMs: number): string | undefined {
  if (result.timedOut) return `timed out after ${Math.round(timeoutMs / 1000)} s; the container was stopped`;
  if (result.oomKilled) return `the container was killed for running out of memory (exit code ${result.exitCode ?? 137})`;
  if (result.exitCode !== 0) return `the container exited with code ${result.exitCode ?? 'unknown'}`;
  return undefined;
}
