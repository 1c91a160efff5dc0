import type { NatsConnection } from '@nats-io/transport-node';
import { JetStreamApiCodes, JetStreamApiError, jetstreamManager } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import { EVENTS_STREAM, RUNS_BUCKET, bucketStream, openRuns } from '../../shared/nats';
import { STEPS, StepRecord, type Step } from '../../shared/record';

/** One stage of a run as the API shows it. `running` while its step has begun and not ended. */
export interface StageView {
  outcome: string;
  durationMs: number;
  exitCode: number | null;
  error?: string;
  /** When its step began and ended (the step record's times). */
  startedAt: string;
  endedAt?: string;
}

export type RunResult = 'trained' | 'up-to-date' | 'no-new-data' | 'busy' | 'failed' | 'skipped' | 'running';

export interface RunView {
  runId: string;
  startedAt: string;
  endedAt?: string;
  trigger: { subject: string; reason: string | null };
  result: RunResult;
  stages: { transform?: StageView; load?: StageView; gate?: StageView; train?: StageView };
  /** Position in the runs list: the KV_runs stream sequence of the run's latest record write (see `listRuns`). */
  cursor: number;
}

export interface RunEvent {
  /** BRAIN_EVENTS stream sequence, when the event was read from the stream (a step's trigger). */
  seq?: number;
  subject: string;
  at: string;
  body: unknown;
}

const STAGE_OF_STEP = { transform: 'transform', load: 'load', 'model-trigger': 'gate', train: 'train' } as const;
const TERMINAL = new Set<string>(['trained', 'up-to-date', 'no-new-data', 'busy', 'failed', 'skipped']);
const decoder = new TextDecoder();

/** A direct get of a sequence whose message is gone answers "no message": absent, not an error. */
const notFound = (err: unknown): null => {
  if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.NoMessageFound) return null;
  throw err;
};

type Records = Partial<Record<Step, { record: StepRecord; seq: number }>>;

function parseRecord(data: Uint8Array): StepRecord | null {
  try {
    const parsed = StepRecord.safeParse(JSON.parse(decoder.decode(data)));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}

/** The body of a step's ending event on `subject`, if the step recorded one. */
function ending(record: StepRecord, subject: string): Record<string, unknown> | undefined {
  return record.events?.find((e) => e.subject === subject)?.body;
}

const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);

function stageOf(step: Step, r: StepRecord, now: number): { view: StageView; terminal?: RunResult; next: boolean } {
  const started = Date.parse(r.startedAt);
  const elapsed = Math.max(0, (r.endedAt !== undefined ? Date.parse(r.endedAt) : now) - started);
  const containerOf = (stage: keyof StepRecord['containers']) => r.containers[stage];
  const times = { startedAt: r.startedAt, ...(r.endedAt !== undefined ? { endedAt: r.endedAt } : {}) };
  if (r.events === undefined) {
    return { view: { outcome: 'running', durationMs: elapsed, exitCode: null, ...times }, next: false };
  }
  const view = (outcome: string, body: Record<string, unknown> | undefined, exitCode: number | null): StageView => ({
    outcome,
    durationMs: num(body?.durationMs) ?? elapsed,
    exitCode,
    ...(typeof body?.error === 'string' ? { error: body.error } : {}),
    ...times,
  });
  switch (step) {
    case 'transform': {
      const body = ending(r, 'transform.done');
      const outcome = String(body?.outcome ?? 'failed');
      const exitCode = num(body?.exitCode) ?? null;
      return { view: view(outcome, body, exitCode), ...(outcome !== 'new-data' ? { terminal: outcome as RunResult } : {}), next: outcome === 'new-data' };
    }
    case 'load': {
      const body = ending(r, 'load.done');
      const outcome = String(body?.outcome ?? 'failed');
      const loads = Array.isArray(body?.loads) ? (body.loads as { exitCode?: unknown }[]) : [];
      const codes = loads.map((l) => num(l.exitCode) ?? null);
      const exitCode = codes.find((c) => c !== 0) ?? (codes.length > 0 ? 0 : null);
      return { view: view(outcome, body, exitCode ?? null), ...(outcome === 'failed' ? { terminal: 'failed' as const } : {}), next: outcome !== 'failed' };
    }
    case 'model-trigger': {
      const exitCode = num(containerOf('model-trigger')?.exitCode) ?? null;
      const mismatch = ending(r, 'model.mismatch');
      if (mismatch !== undefined) {
        return { view: { outcome: String(mismatch.reason ?? 'mismatch'), durationMs: num(containerOf('model-trigger')?.durationMs) ?? elapsed, exitCode, ...times }, next: true };
      }
      const body = ending(r, 'model.done');
      const outcome = String(body?.outcome ?? 'failed');
      return { view: view(outcome, body, num(body?.exitCode) ?? exitCode), terminal: (TERMINAL.has(outcome) ? outcome : 'failed') as RunResult, next: false };
    }
    case 'train': {
      const body = ending(r, 'model.done');
      const outcome = String(body?.outcome ?? 'failed');
      return {
        view: view(outcome, body, num(body?.exitCode) ?? num(containerOf('train')?.exitCode) ?? null),
        terminal: (TERMINAL.has(outcome) ? outcome : 'failed') as RunResult,
        next: false,
      };
    }
  }
}

/** Folds a run's step records into its view; null when it has none. */
export function runView(runId: string, records: Records, now = Date.now()): RunView | null {
  const present = STEPS.filter((s) => records[s] !== undefined);
  const first = present[0];
  if (first === undefined) return null;
  const firstRecord = (records[first] as { record: StepRecord }).record;
  const stages: RunView['stages'] = {};
  let result: RunResult = 'running';
  let endedAt: string | undefined;
  for (const step of present) {
    const { record } = records[step] as { record: StepRecord };
    const { view, terminal } = stageOf(step, record, now);
    stages[STAGE_OF_STEP[step]] = view;
    if (terminal !== undefined) {
      result = terminal;
      endedAt = record.endedAt;
      break;
    }
  }
  return {
    runId,
    startedAt: present.map((s) => (records[s] as { record: StepRecord }).record.startedAt).sort()[0] ?? firstRecord.startedAt,
    ...(endedAt !== undefined ? { endedAt } : {}),
    trigger: { subject: firstRecord.subject, reason: firstRecord.reason ?? null },
    result,
    stages,
    cursor: Math.max(...present.map((s) => (records[s] as { seq: number }).seq)),
  };
}

const stepOfKey = (key: string): { runId: string; step: Step } | null => {
  const dot = key.lastIndexOf('.');
  const step = key.slice(dot + 1) as Step;
  return dot > 0 && (STEPS as readonly string[]).includes(step) ? { runId: key.slice(0, dot), step } : null;
};

export interface RunsReader {
  /**
   * The latest `limit` runs before `before` (a cursor from a previous page), newest first.
   *
   * "Newest" is the run's latest record write: each run's position is the highest KV_runs stream sequence
   * among its step records (the bucket keeps one value per key, so the stream holds exactly the latest write
   * of each). The stream is read backwards in growing windows of sequences until `limit` runs are seen, and
   * each run's other steps are read by key: the cost follows the page, not the history (see the bench).
   */
  list(limit: number, before?: number): Promise<{ runs: RunView[]; next: number | null }>;
  get(runId: string): Promise<RunView | null>;
  /** The run's events in order: each step's trigger read from BRAIN_EVENTS, then the ending events it recorded. */
  events(runId: string): Promise<RunEvent[]>;
}

export async function createRunsReader(nc: NatsConnection, kv?: KV): Promise<RunsReader> {
  const bucket = kv ?? (await openRuns(nc));
  const jsm = await jetstreamManager(nc);
  const stream = bucketStream(RUNS_BUCKET);
  const prefix = `$KV.${RUNS_BUCKET}.`;

  async function recordsOf(runId: string, known: Records = {}): Promise<Records> {
    const out: Records = { ...known };
    await Promise.all(
      STEPS.filter((s) => out[s] === undefined).map(async (step) => {
        const entry = await bucket.get(`${runId}.${step}`);
        if (entry === null || entry.operation !== 'PUT') return;
        const record = parseRecord(entry.value);
        if (record !== null) out[step] = { record, seq: entry.revision };
      }),
    );
    return out;
  }

  /**
   * The live messages of KV_runs with sequences in [start, end], oldest first: one direct get per sequence, in
   * parallel (a sequence whose value was replaced is simply absent). No consumer is created: on a long history a
   * consumer's creation costs what the history costs, a direct get by sequence does not.
   */
  async function window(start: number, end: number): Promise<{ seq: number; key: string; data: Uint8Array }[]> {
    const out: { seq: number; key: string; data: Uint8Array }[] = [];
    const seqs = Array.from({ length: end - start + 1 }, (_, i) => start + i);
    for (let i = 0; i < seqs.length; i += 256) {
      const got = await Promise.all(seqs.slice(i, i + 256).map((seq) => jsm.direct.getMessage(stream, { seq }).catch(notFound)));
      for (const m of got) if (m !== null && m.subject.startsWith(prefix)) out.push({ seq: m.seq, key: m.subject.slice(prefix.length), data: m.data });
    }
    return out;
  }

  async function list(limit: number, before?: number): Promise<{ runs: RunView[]; next: number | null }> {
    const state = (await jsm.streams.info(stream)).state;
    if (state.messages === 0) return { runs: [], next: null };
    let end = Math.min(state.last_seq, (before ?? Number.MAX_SAFE_INTEGER) - 1);
    const seen = new Set<string>();
    const found: RunView[] = [];
    // A run keeps up to four records (one per step) and its earlier writes leave gaps of replaced values: the
    // stream's own density of live messages sizes the first window to about the page asked for.
    const density = (state.last_seq - state.first_seq + 1) / state.messages;
    let size = Math.max(32, Math.ceil(limit * 4 * density * 1.25));
    let exhausted = false;
    let leftover = false;
    while (found.length < limit && end >= state.first_seq) {
      const start = Math.max(state.first_seq, end - size + 1);
      const messages = await window(start, end);
      const fresh = new Map<string, Records>();
      for (const m of messages.reverse()) {
        const parsed = stepOfKey(m.key);
        if (parsed === null || m.data.length === 0 || seen.has(parsed.runId)) continue;
        const record = parseRecord(m.data);
        if (record === null) continue;
        const known = fresh.get(parsed.runId) ?? {};
        known[parsed.step] ??= { record, seq: m.seq };
        fresh.set(parsed.runId, known);
      }
      // Newest first: a run's first sighting going backwards is its latest write, its place in the list. Only as
      // many runs as the page still needs are read in full.
      const candidates = [...fresh];
      let taken = 0;
      while (found.length < limit && taken < candidates.length) {
        const batch = candidates.slice(taken, taken + limit - found.length);
        taken += batch.length;
        const views = await Promise.all(batch.map(async ([runId, known]) => runView(runId, await recordsOf(runId, known))));
        for (const [runId] of batch) seen.add(runId);
        for (const v of views) {
          // A run written again at or after `before` was on an earlier page.
          if (v !== null && (before === undefined || v.cursor < before)) found.push(v);
        }
      }
      if (taken < candidates.length) leftover = true;
      end = start - 1;
      size *= 2;
      if (start === state.first_seq) exhausted = true;
    }
    found.sort((a, b) => b.cursor - a.cursor);
    const runs = found.slice(0, limit);
    const last = runs[runs.length - 1];
    const more = leftover || found.length > limit || (!exhausted && end >= state.first_seq);
    return { runs, next: more && last !== undefined ? last.cursor : null };
  }

  async function get(runId: string): Promise<RunView | null> {
    return runView(runId, await recordsOf(runId));
  }

  async function events(runId: string): Promise<RunEvent[]> {
    const records = await recordsOf(runId);
    const out: RunEvent[] = [];
    for (const step of STEPS) {
      const r = records[step]?.record;
      if (r === undefined) continue;
      const trigger = await jsm.streams.getMessage(EVENTS_STREAM, { seq: r.trigger }).catch((err: unknown) => {
        if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.NoMessageFound) return null;
        throw err;
      });
      if (trigger !== null) {
        let body: unknown;
        try {
          body = trigger.json();
        } catch {
          body = { invalid: trigger.string().slice(0, 200) };
        }
        const event: RunEvent = { seq: trigger.seq, subject: trigger.subject, at: trigger.time.toISOString(), body };
        // The trigger of a later step is the ending event of the one before (data.new, model.trigger, model.mismatch).
        const same = out.findIndex((e) => e.seq === undefined && e.subject === trigger.subject);
        if (same >= 0) out[same] = event;
        else out.push(event);
      }
      for (const e of r.events ?? []) {
        out.push({ subject: e.subject, at: typeof e.body.at === 'string' ? e.body.at : (r.endedAt ?? r.startedAt), body: e.body });
      }
    }
    return out;
  }

  return { list, get, events };
}
