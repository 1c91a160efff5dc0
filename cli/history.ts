import type { NatsConnection } from '@nats-io/transport-node';
import { DeliverPolicy, jetstream, jetstreamManager, type JetStreamManager, JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import { EVENTS_STREAM } from '../shared/nats';
import { generatedRunId } from '../shared/service';
import { CliError } from './client';
import { parseMessage, runIdOf, verdictOf, type ParsedMessage, type Verdict } from './view';

/** One message of a stream, as the CLI reads it back. */
export interface StoredMessage {
  seq: number;
  subject: string;
  data: Uint8Array;
  time: Date;
}

export interface StoredEvent {
  seq: number;
  time: Date;
  message: ParsedMessage;
}

/** Stream info, or a clear error when the stream has never been created. */
export async function streamState(jsm: JetStreamManager, stream: string, subjectsFilter?: string) {
  try {
    return (await jsm.streams.info(stream, subjectsFilter !== undefined ? { subjects_filter: subjectsFilter } : {})).state;
  } catch (err) {
    if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound) {
      throw new CliError(`stream ${stream} does not exist: no brain service has connected to this NATS server yet`);
    }
    throw err;
  }
}

/**
 * Reads stream messages with an ordered consumer, from `fromSeq` (or the start), until `untilSeq`, until none
 * are pending, or, with `follow`, on into new ones until that signal aborts. `onMessage` returns true to stop.
 * Without `follow` the caller must know at least one message matches, or this waits for one.
 */
export async function readStream(
  nc: NatsConnection,
  stream: string,
  opts: { fromSeq?: number; untilSeq?: number; filter?: string; follow?: AbortSignal },
  onMessage: (m: StoredMessage) => boolean | void,
): Promise<void> {
  const consumer = await jetstream(nc).consumers.get(stream, {
    ...(opts.fromSeq !== undefined ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: opts.fromSeq } : { deliver_policy: DeliverPolicy.All }),
    ...(opts.filter !== undefined ? { filter_subjects: opts.filter } : {}),
  });
  const messages = await consumer.consume();
  const stop = () => void messages.close();
  if (opts.follow?.aborted === true) stop();
  opts.follow?.addEventListener('abort', stop, { once: true });
  try {
    for await (const m of messages) {
      if (opts.untilSeq !== undefined && m.seq > opts.untilSeq) break;
      if (onMessage({ seq: m.seq, subject: m.subject, data: m.data, time: m.time }) === true) break;
      if (opts.follow === undefined && (m.seq === opts.untilSeq || m.info.pending === 0)) break;
    }
  } finally {
    opts.follow?.removeEventListener('abort', stop);
    await messages.close();
  }
}

export interface InvalidEvent {
  seq: number;
  subject: string;
  error: string;
}

/**
 * How one step of a run ended, as the history shows it (a cell of `brain runs`). Not the runner's `StageResult`
 * (one container's exit): the load step is two containers, the gate step's outcome may be `mismatch` or `forced`.
 */
export interface StepOutcome {
  outcome: string;
  durationMs?: number;
  error?: string;
}

export interface RunSummary {
  runId: string;
  /** The trigger that started the run. */
  kind: 'transform' | 'model';
  /** The trigger's reason: `schedule`, a person's text, or `hand` when none was given. */
  trigger: string;
  startedAt: string;
  lastEventAt: string;
  /** By step (the JSON field keeps its published name `stages`); `gate` is the model-trigger step. */
  stages: { transform?: StepOutcome; load?: StepOutcome; gate?: StepOutcome; train?: StepOutcome };
  /** Undefined while the run is still going. */
  verdict?: Verdict;
}

const stepOutcome = (outcome: string, durationMs: number | undefined, error: string | undefined): StepOutcome => ({
  outcome,
  ...(durationMs !== undefined ? { durationMs } : {}),
  ...(error !== undefined ? { error } : {}),
});

/**
 * Folds stored events into runs, oldest first. A run starts with a trigger; events of a run whose trigger
 * is not among `events` (it started before what was read) are left out.
 */
export function foldRuns(events: readonly StoredEvent[]): { runs: RunSummary[]; invalid: InvalidEvent[] } {
  const runs = new Map<string, RunSummary>();
  const order: RunSummary[] = [];
  const invalid: InvalidEvent[] = [];
  const modelTriggeredAt = new Map<RunSummary, number>();
  for (const stored of events) {
    const { message: m, time } = stored;
    if (m.kind === 'invalid') {
      invalid.push({ seq: stored.seq, subject: m.subject, error: m.error });
      continue;
    }
    if (m.kind === 'rejected') continue;
    const at = m.event.at ?? time.toISOString();
    const isStart = m.subject === 'transform.trigger' || (m.subject === 'model.trigger' && m.event.reason !== 'loaded');
    // A trigger without a run id gets one from the service that takes it, derived from its stream position.
    const runId = runIdOf(m) ?? generatedRunId(m.subject === 'model.trigger' ? 'm' : 't', { streamSequence: stored.seq, storedAt: time });
    let run = runs.get(runId);
    if (isStart && (run === undefined || run.verdict !== undefined)) {
      run = {
        runId,
        kind: m.subject === 'model.trigger' ? 'model' : 'transform',
        trigger: (m.subject === 'transform.trigger' || m.subject === 'model.trigger' ? m.event.reason : undefined) ?? 'hand',
        startedAt: at,
        lastEventAt: at,
        stages: {},
      };
      runs.set(runId, run);
      order.push(run);
    }
    if (run === undefined) continue;
    run.lastEventAt = at;
    switch (m.subject) {
      case 'transform.done':
        run.stages.transform = stepOutcome(m.event.outcome, m.event.durationMs, m.event.error);
        break;
      case 'load.done':
        run.stages.load = stepOutcome(m.event.outcome, m.event.durationMs, m.event.error);
        break;
      case 'model.trigger':
        modelTriggeredAt.set(run, Date.parse(at));
        break;
      case 'model.mismatch': {
        const since = modelTriggeredAt.get(run);
        run.stages.gate = stepOutcome(m.event.reason, since !== undefined ? Date.parse(at) - since : undefined, undefined);
        break;
      }
      case 'model.done':
        if (run.stages.gate === undefined) run.stages.gate = stepOutcome(m.event.outcome, m.event.durationMs, m.event.error);
        else run.stages.train = stepOutcome(m.event.outcome, m.event.durationMs, m.event.error);
        break;
      default:
        break;
    }
    run.verdict ??= verdictOf(m);
  }
  return { runs: order, invalid };
}

/**
 * The last `limit` runs from the BRAIN_EVENTS stream. It reads backwards in growing windows
 * until it has seen the trigger of `limit` runs, so the cost follows the runs asked for, not the stream's size.
 */
export async function recentRuns(nc: NatsConnection, limit: number): Promise<{ runs: RunSummary[]; invalid: InvalidEvent[] }> {
  const jsm = await jetstreamManager(nc);
  const state = await streamState(jsm, EVENTS_STREAM);
  if (state.messages === 0) return { runs: [], invalid: [] };
  let events: StoredEvent[] = [];
  let from = state.last_seq + 1;
  let window = Math.max(64, limit * 12);
  for (;;) {
    const start = Math.max(state.first_seq, state.last_seq - window + 1);
    const chunk: StoredEvent[] = [];
    if (start < from) {
      await readStream(nc, EVENTS_STREAM, { fromSeq: start, untilSeq: from - 1 }, (m) => {
        chunk.push({ seq: m.seq, time: m.time, message: parseMessage(m.subject, m.data) });
      });
    }
    events = [...chunk, ...events];
    from = start;
    const { runs, invalid } = foldRuns(events);
    if (runs.length >= limit || start === state.first_seq) return { runs: runs.slice(-limit), invalid };
    window *= 4;
  }
}
