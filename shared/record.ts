import type { KV } from '@nats-io/kv';
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import { z } from 'zod';
import { RunId, STAGES, type Stage } from './events';
import type { Logger } from './logger';

/**
 * A step is one service's unit of work in a run: the transformer's transform, the loader's two loads,
 * the model gate, the training. Each has one record in the `runs` bucket, keyed `<runId>.<step>`.
 */
export const STEPS = ['transform', 'load', 'model-trigger', 'train'] as const;
export type Step = (typeof STEPS)[number];

const iso = z.iso.datetime({ offset: true });

/** What is known of one stage container: written when it started and when it exited, read after a restart. */
export const ContainerRecord = z.object({
  id: z.string(),
  name: z.string(),
  state: z.enum(['started', 'exited', 'removed']),
  exitCode: z.number().int().nullable().optional(),
  oomKilled: z.boolean().optional(),
  timedOut: z.boolean().optional(),
  phraseFound: z.boolean().optional(),
  durationMs: z.number().optional(),
});
export type ContainerRecord = z.infer<typeof ContainerRecord>;

/** An event that ends the step, recorded before it is published so that a restart publishes it again. */
export const RecordedEvent = z.object({ subject: z.string(), body: z.record(z.string(), z.unknown()), msgId: z.string() });
export type RecordedEvent = z.infer<typeof RecordedEvent>;

export const StepRecord = z.object({
  runId: RunId,
  step: z.enum(STEPS),
  /** Subject and stream sequence of the message that began the step: tells its redelivery from a second message. */
  subject: z.string(),
  trigger: z.number().int(),
  reason: z.string().optional(),
  startedAt: iso,
  containers: z.partialRecord(z.enum(STAGES), ContainerRecord),
  /** The step's end: its events, written before the first is published. */
  events: z.array(RecordedEvent).optional(),
  /** How many of `events` the stream has stored. */
  published: z.number().int().default(0),
  endedAt: iso.optional(),
  /** Every container of the step was removed after its events were stored. */
  closed: z.boolean().default(false),
});
export type StepRecord = z.infer<typeof StepRecord>;

export const recordKey = (runId: string, step: Step) => `${runId}.${step}`;

const isWrongSequence = (err: unknown) =>
  err instanceof JetStreamApiError && (err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown);

export interface StepRecords {
  /**
   * Opens the step's record for a message: creates it, or returns the one a previous delivery wrote
   * (`existing` true); `sameMessage` is false when another message already began this step of the run.
   */
  open(init: Pick<StepRecord, 'runId' | 'step' | 'subject' | 'trigger' | 'reason'>): Promise<StepHandle>;
}

export interface StepHandle {
  readonly record: StepRecord;
  /** The record existed: this is a redelivery (or a second message for the same run and step, see `sameMessage`). */
  readonly existing: boolean;
  /** The existing record was begun by this very message (a redelivery), not by another one. */
  readonly sameMessage: boolean;
  container(stage: Stage, value: ContainerRecord): Promise<void>;
  /** Records the step's ending events; later calls keep the first ending (a restart re-publishes it, never a second one). */
  end(events: RecordedEvent[]): Promise<RecordedEvent[]>;
  /** Notes that the first `count` events are stored in the stream. */
  published(count: number): Promise<void>;
  /** Notes that the step's containers are removed: nothing of it is left to do. */
  close(): Promise<void>;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function createStepRecords(deps: { kv: KV; logger: Logger }): StepRecords {
  const { kv, logger } = deps;

  async function readWithRevision(key: string): Promise<{ value: StepRecord; revision: number } | null> {
    const entry = await kv.get(key);
    if (entry === null || entry.operation !== 'PUT') return null;
    const parsed = StepRecord.safeParse(JSON.parse(decoder.decode(entry.value)));
    if (!parsed.success) {
      logger.error({ key, error: parsed.error.message }, 'unreadable run record; treating it as absent');
      return null;
    }
    return { value: parsed.data, revision: entry.revision };
  }

  async function open(init: Pick<StepRecord, 'runId' | 'step' | 'subject' | 'trigger' | 'reason'>): Promise<StepHandle> {
    const key = recordKey(init.runId, init.step);
    let current: { value: StepRecord; revision: number } | null = null;
    let existing = false;
    for (let attempt = 0; current === null; attempt++) {
      const fresh: StepRecord = { ...init, startedAt: new Date().toISOString(), containers: {}, published: 0, closed: false };
      try {
        current = { value: fresh, revision: await kv.create(key, encoder.encode(JSON.stringify(fresh))) };
      } catch (err) {
        if (!isWrongSequence(err) || attempt >= 3) throw err;
        current = await readWithRevision(key);
        existing = current !== null;
      }
    }
    const state = current;
    const sameMessage = !existing || (state.value.trigger === init.trigger && state.value.subject === init.subject);

    // One write at a time (the two loads record their containers concurrently); a write that loses a
    // compare-and-set to another process re-reads and applies its change again.
    let writing: Promise<unknown> = Promise.resolve();
    const update = (change: (r: StepRecord) => StepRecord): Promise<StepRecord> => {
      const next = writing.then(async () => {
        for (let attempt = 0; ; attempt++) {
          const value = change(state.value);
          try {
            state.revision = await kv.update(key, encoder.encode(JSON.stringify(value)), state.revision);
            state.value = value;
            return value;
          } catch (err) {
            if (!isWrongSequence(err) || attempt >= 5) throw err;
            const reread = await readWithRevision(key);
            if (reread === null) throw err;
            Object.assign(state, reread);
          }
        }
      });
      writing = next.catch(() => undefined);
      return next;
    };

    return {
      get record() {
        return state.value;
      },
      existing,
      sameMessage,
      async container(stage, value) {
        await update((r) => ({ ...r, containers: { ...r.containers, [stage]: { ...r.containers[stage], ...value } } }));
      },
      async end(events) {
        const ended = await update((r) => (r.events !== undefined ? r : { ...r, events, endedAt: new Date().toISOString() }));
        return ended.events ?? events;
      },
      async published(count) {
        await update((r) => ({ ...r, published: Math.max(r.published, count) }));
      },
      async close() {
        await update((r) => ({
          ...r,
          closed: true,
          containers: Object.fromEntries(Object.entries(r.containers).map(([s, c]) => [s, { ...c, state: 'removed' as const }])),
        }));
      },
    };
  }

  return { open };
}
