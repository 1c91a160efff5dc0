import type { NatsConnection } from '@nats-io/transport-node';
import { DeliverPolicy, JetStreamApiCodes, JetStreamApiError, jetstream, jetstreamManager, type ConsumerMessages } from '@nats-io/jetstream';
import { LogBatch, STAGES } from '../../shared/events';
import { LOGS_STREAM } from '../../shared/nats';

/** One container line of a run, from BRAIN_LOGS. `seq` and `i` place it: the batch's stream sequence and its index there. */
export interface LogLine {
  seq: number;
  i: number;
  stage: string;
  stream: 'stdout' | 'stderr';
  at: string;
  line: string;
}

/** A position in a run's log: before line `i` of batch `seq` (`i` undefined: before the whole batch). */
export interface LogCursor {
  seq: number;
  i?: number;
}

export const formatCursor = (c: LogCursor): string => (c.i !== undefined ? `${c.seq}-${c.i}` : String(c.seq));
export const parseCursor = (text: string): LogCursor => {
  const [seq, i] = text.split('-');
  return { seq: Number(seq), ...(i !== undefined ? { i: Number(i) } : {}) };
};

export interface LogBatchView {
  seq: number;
  stage: string;
  stream: 'stdout' | 'stderr';
  at: string;
  lines: string[];
}

const filterOf = (runId: string) => `logs.*.${runId}`;

function decodeBatch(seq: number, data: Uint8Array): LogBatchView | null {
  try {
    const parsed = LogBatch.safeParse(JSON.parse(new TextDecoder().decode(data)));
    if (!parsed.success) return null;
    return { seq, stage: parsed.data.stage, stream: parsed.data.stream, at: parsed.data.at, lines: parsed.data.lines };
  } catch {
    return null;
  }
}

export interface LogsReader {
  /** The stream sequence of the run's last log batch; 0 when it has none (yet). */
  lastSeq(runId: string): Promise<number>;
  /**
   * The last `limit` lines before `before` (or the end), oldest first, and the cursor of the page before them (null at
   * the start). Reads BRAIN_LOGS backwards in growing windows of sequences filtered on the run's subjects, so a huge
   * log costs what the page costs.
   */
  tail(runId: string, limit: number, before?: LogCursor): Promise<{ lines: LogLine[]; before: LogCursor | null }>;
  /** Follows the run's batches after `afterSeq` until `signal` aborts. */
  follow(runId: string, afterSeq: number, signal: AbortSignal, onBatch: (b: LogBatchView) => Promise<void>): Promise<void>;
}

export async function createLogsReader(nc: NatsConnection): Promise<LogsReader> {
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);

  async function lastSeq(runId: string): Promise<number> {
    const seqs = await Promise.all(
      STAGES.map((stage) =>
        jsm.streams.getMessage(LOGS_STREAM, { last_by_subj: `logs.${stage}.${runId}` }).then(
          (m) => m?.seq ?? 0,
          (err: unknown) => {
            if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.NoMessageFound) return 0;
            throw err;
          },
        ),
      ),
    );
    return Math.max(0, ...seqs);
  }

  /** The run's batches with sequences in [start, end], oldest first; `end` must be below some batch of the run. */
  async function window(runId: string, start: number, end: number): Promise<LogBatchView[]> {
    const consumer = await js.consumers.get(LOGS_STREAM, { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start, filter_subjects: filterOf(runId) });
    const out: LogBatchView[] = [];
    const messages = await consumer.consume({ max_messages: 256 });
    try {
      for await (const m of messages) {
        if (m.seq > end) break;
        const batch = decodeBatch(m.seq, m.data);
        if (batch !== null) out.push(batch);
        if (m.seq === end || m.info.pending === 0) break;
      }
    } finally {
      await messages.close();
    }
    return out;
  }

  async function tail(runId: string, limit: number, before?: LogCursor): Promise<{ lines: LogLine[]; before: LogCursor | null }> {
    const last = await lastSeq(runId);
    if (last === 0) return { lines: [], before: null };
    const first = (await jsm.streams.info(LOGS_STREAM)).state.first_seq;
    let end = Math.min(last, before !== undefined ? (before.i !== undefined ? before.seq : before.seq - 1) : last);
    const lines: LogLine[] = [];
    let size = 256;
    let start = end + 1;
    while (lines.length < limit && end >= first) {
      start = Math.max(first, end - size + 1);
      const batches = await window(runId, start, end);
      const found: LogLine[] = [];
      for (const b of batches) {
        b.lines.forEach((line, i) => {
          if (before !== undefined && b.seq === before.seq && before.i !== undefined && i >= before.i) return;
          found.push({ seq: b.seq, i, stage: b.stage, stream: b.stream, at: b.at, line });
        });
      }
      lines.unshift(...found);
      end = start - 1;
      size *= 4;
    }
    const page = lines.slice(Math.max(0, lines.length - limit));
    const oldest = page[0];
    const more = lines.length > limit || start > first;
    return { lines: page, before: more && oldest !== undefined ? { seq: oldest.seq, i: oldest.i } : null };
  }

  async function follow(runId: string, afterSeq: number, signal: AbortSignal, onBatch: (b: LogBatchView) => Promise<void>): Promise<void> {
    const consumer = await js.consumers.get(LOGS_STREAM, {
      filter_subjects: filterOf(runId),
      ...(afterSeq > 0 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: afterSeq + 1 } : { deliver_policy: DeliverPolicy.All }),
    });
    const messages: ConsumerMessages = await consumer.consume({ max_messages: 256 });
    const stop = () => void messages.close();
    if (signal.aborted) stop();
    signal.addEventListener('abort', stop, { once: true });
    try {
      for await (const m of messages) {
        const batch = decodeBatch(m.seq, m.data);
        if (batch !== null) await onBatch(batch);
      }
    } finally {
      signal.removeEventListener('abort', stop);
      await messages.close();
    }
  }

  return { lastSeq, tail, follow };
}
