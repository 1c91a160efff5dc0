import { z } from 'zod';

/** A run id is placed in subjects and container names, so it must be subject- and name-safe. */
export const RUN_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
export const RunId = z.string().regex(RUN_ID_PATTERN, 'runId must be 1-64 characters of A-Z a-z 0-9 _ -');

/** Bodies larger than this are rejected before parsing. */
/**
 * Header of the web service's permission probes (services/web/me.ts): a JetStream publish to a trigger subject that
 * JetStream refuses, so never stored, but seen by core subscribers (`nats sub '>'`, `brain watch`), which skip it.
 */
export const PROBE_HEADER = 'Brain-Probe';
export const MAX_EVENT_BYTES = 64 * 1024;

export const Subjects = {
  transformTrigger: 'transform.trigger',
  transformDone: 'transform.done',
  dataNew: 'data.new',
  loadDone: 'load.done',
  modelTrigger: 'model.trigger',
  modelMismatch: 'model.mismatch',
  modelDone: 'model.done',
} as const;
export type EventSubject = (typeof Subjects)[keyof typeof Subjects];

export const STAGES = ['transform', 'load-processed', 'load-viz', 'model-trigger', 'train'] as const;
export type Stage = (typeof STAGES)[number];

export const logsSubject = (stage: Stage, runId: string): string => `logs.${stage}.${runId}`;
export const rejectedSubject = (subject: string): string => `rejected.${subject}`;

const at = z.iso.datetime({ offset: true });
const envelope = { v: z.literal(1), runId: RunId, at };
const exitCode = z.number().int().nullable();
const durationMs = z.number().nonnegative();
/** Longest `error` an event may carry; longer ones are cut on publish (see `sanitiseOutgoing`). */
export const MAX_ERROR_CHARS = 2000;
/** Longest free-text `reason` a trigger may carry; longer ones are cut on publish. */
export const MAX_REASON_CHARS = 200;
const error = z.string().max(MAX_ERROR_CHARS).optional();
const reason = z.string().max(MAX_REASON_CHARS).optional();

/** Triggers come from people as well as services: every field is optional and `{}` or an empty body is valid. */
const trigger = z.strictObject({ v: z.literal(1).optional(), runId: RunId.optional(), at: at.optional(), reason });

export const TransformTrigger = trigger;
export const TransformDone = z.strictObject({
  ...envelope,
  outcome: z.enum(['new-data', 'no-new-data', 'busy', 'failed']),
  exitCode,
  durationMs,
  error,
});
export const DataNew = z.strictObject({ ...envelope });
export const LoadTarget = z.enum(['processed', 'viz']);
export const LoadDone = z.strictObject({
  ...envelope,
  outcome: z.enum(['loaded', 'skipped', 'failed']),
  loads: z.array(z.strictObject({ target: LoadTarget, outcome: z.enum(['loaded', 'failed']), exitCode })),
  durationMs,
  error,
});
export const ModelTrigger = trigger;
export const ModelMismatch = z.strictObject({ ...envelope, reason: z.enum(['mismatch', 'forced']) });
export const ModelDone = z.strictObject({
  ...envelope,
  outcome: z.enum(['trained', 'up-to-date', 'skipped', 'busy', 'failed']),
  exitCode: exitCode.optional(),
  durationMs,
  error,
});
export const LogBatch = z.strictObject({
  ...envelope,
  stage: z.enum(STAGES),
  stream: z.enum(['stdout', 'stderr']),
  lines: z.array(z.string()),
});
export const Rejected = z.strictObject({
  v: z.literal(1),
  at,
  runId: RunId.optional(),
  subject: z.string(),
  error: z.string(),
  preview: z.string(),
});

export const EventSchemas = {
  [Subjects.transformTrigger]: TransformTrigger,
  [Subjects.transformDone]: TransformDone,
  [Subjects.dataNew]: DataNew,
  [Subjects.loadDone]: LoadDone,
  [Subjects.modelTrigger]: ModelTrigger,
  [Subjects.modelMismatch]: ModelMismatch,
  [Subjects.modelDone]: ModelDone,
} as const;

export type EventMap = { [S in EventSubject]: z.infer<(typeof EventSchemas)[S]> };
export type TransformDoneEvent = EventMap['transform.done'];
export type LoadDoneEvent = EventMap['load.done'];
export type ModelDoneEvent = EventMap['model.done'];
export type TriggerEvent = EventMap['transform.trigger'];
export type LogBatchEvent = z.infer<typeof LogBatch>;
export type RejectedEvent = z.infer<typeof Rejected>;

/** What a publisher supplies; the envelope's `v` and `at` are filled in on publish. */
export type EventBody<S extends EventSubject> = Omit<EventMap[S], 'v' | 'at'>;

export type ParseResult<T> = { ok: true; value: T } | { ok: false; error: string };

/** Decodes and validates a message body for a subject; an empty body is `{}`. */
export function parseEvent<S extends EventSubject>(subject: S, body: Uint8Array): ParseResult<EventMap[S]> {
  if (body.length > MAX_EVENT_BYTES) return { ok: false, error: `body is ${body.length} bytes; the limit is ${MAX_EVENT_BYTES}` };
  const text = Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8');
  let json: unknown;
  if (text.trim() === '') json = {};
  else {
    try {
      json = JSON.parse(text);
    } catch (err) {
      return { ok: false, error: `body is not JSON: ${(err as Error).message}` };
    }
  }
  const result = EventSchemas[subject].safeParse(json);
  if (!result.success) {
    const detail = result.error.issues
      .slice(0, 5)
      .map((i) => `${i.path.length > 0 ? i.path.join('.') : '(body)'}: ${i.message}`)
      .join('; ');
    return { ok: false, error: detail };
  }
  return { ok: true, value: result.data as EventMap[S] };
}

/** `schema.safeParse` of a text read as JSON: text that is not JSON fails like any other invalid value. */
export function parseJson<T extends z.ZodType>(schema: T, text: string): ReturnType<T['safeParse']> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return schema.safeParse(json) as ReturnType<T['safeParse']>;
}

/** The first bytes of a body, printable, for rejection reports. */
export function previewOf(body: Uint8Array, max = 200): string {
  const text = Buffer.from(body.buffer, body.byteOffset, Math.min(body.byteLength, max * 4)).toString('utf8');
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/** Cuts text to at most `max` UTF-16 units, keeping its start and ending with `…` (never splitting a surrogate pair). */
export function cutText(text: string, max: number): string {
  if (text.length <= max) return text;
  let end = Math.max(0, max - 1);
  const last = text.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end -= 1;
  return `${text.slice(0, end)}…`;
}

/**
 * Makes our own outgoing event body publishable whatever the clock or an error message did: a `durationMs`
 * that is negative or not finite (the wall clock stepped back) becomes 0, an `error` or a string `reason`
 * longer than the schema allows is cut. Everything else is left to validation.
 */
export function sanitiseOutgoing<T extends Record<string, unknown>>(body: T): T {
  const out: Record<string, unknown> = { ...body };
  if ('durationMs' in out) {
    const d = out.durationMs;
    if (typeof d !== 'number' || !Number.isFinite(d) || d < 0) out.durationMs = 0;
  }
  if (typeof out.error === 'string') out.error = cutText(out.error, MAX_ERROR_CHARS);
  if (typeof out.reason === 'string') out.reason = cutText(out.reason, MAX_REASON_CHARS);
  return out as T;
}
