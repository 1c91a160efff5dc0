import { EventSchemas, MAX_EVENT_BYTES, Rejected, parseEvent, previewOf, type EventMap, type EventSubject, type RejectedEvent } from '../shared/events';

/** A valid pipeline event, discriminated by its subject. */
export type KnownEvent = { [S in EventSubject]: { kind: 'event'; subject: S; event: EventMap[S] } }[EventSubject];

/** What the CLI makes of one message on an event subject: never throws, a bad body is `invalid`. */
export type ParsedMessage = KnownEvent | { kind: 'rejected'; subject: string; event: RejectedEvent } | { kind: 'invalid'; subject: string; error: string; preview: string };

const isEventSubject = (subject: string): subject is EventSubject => Object.hasOwn(EventSchemas, subject);

export function parseMessage(subject: string, data: Uint8Array): ParsedMessage {
  if (isEventSubject(subject)) {
    const parsed = parseEvent(subject, data);
    if (parsed.ok) return { kind: 'event', subject, event: parsed.value } as KnownEvent;
    return { kind: 'invalid', subject, error: parsed.error, preview: previewOf(data) };
  }
  if (subject.startsWith('rejected.')) {
    let json: unknown;
    try {
      json = data.length > MAX_EVENT_BYTES ? undefined : JSON.parse(Buffer.from(data).toString('utf8'));
    } catch {
      json = undefined;
    }
    const parsed = Rejected.safeParse(json);
    if (parsed.success) return { kind: 'rejected', subject, event: parsed.data };
    return { kind: 'invalid', subject, error: 'not a valid rejection report', preview: previewOf(data) };
  }
  return { kind: 'invalid', subject, error: 'not a pipeline event subject', preview: previewOf(data) };
}

export const runIdOf = (m: ParsedMessage): string | undefined => (m.kind === 'invalid' ? undefined : m.event.runId);

/** How a run ended; `stage` names where. */
export interface Verdict {
  status: 'ok' | 'failed' | 'busy';
  result: string;
  stage: 'transform' | 'load' | 'model';
  error?: string;
}

/**
 * The verdict when this event ends its run: a transform run ends with transform.done other than new-data,
 * a failed load.done, or model.done; a model run ends with model.done.
 */
export function verdictOf(m: ParsedMessage): Verdict | undefined {
  if (m.kind !== 'event') return undefined;
  const status = (outcome: string): Verdict['status'] => (outcome === 'failed' ? 'failed' : outcome === 'busy' ? 'busy' : 'ok');
  const withError = (v: Verdict, error: string | undefined): Verdict => (error !== undefined ? { ...v, error } : v);
  switch (m.subject) {
    case 'transform.done':
      if (m.event.outcome === 'new-data') return undefined;
      return withError({ status: status(m.event.outcome), result: m.event.outcome, stage: 'transform' }, m.event.error);
    case 'load.done':
      if (m.event.outcome !== 'failed') return undefined;
      return withError({ status: 'failed', result: 'failed', stage: 'load' }, m.event.error);
    case 'model.done':
      return withError({ status: status(m.event.outcome), result: m.event.outcome, stage: 'model' }, m.event.error);
    default:
      return undefined;
  }
}

/** 1234 → `1.2s`, 95000 → `1m35s`. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  const s = Math.round(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** Colour on a TTY unless NO_COLOR is set (https://no-color.org). */
export function useColour(stream: NodeJS.WriteStream): boolean {
  return stream.isTTY === true && (process.env.NO_COLOR ?? '') === '';
}

const CODES = { red: 31, green: 32, yellow: 33, cyan: 36, dim: 2, bold: 1 } as const;
export type Paint = (style: keyof typeof CODES, text: string) => string;
export const painter =
  (colour: boolean): Paint =>
  (style, text) =>
    colour ? `\x1b[${CODES[style]}m${text}\x1b[0m` : text;

/** Colour of an outcome word: red for failures, yellow for busy, green otherwise. */
export function paintOutcome(paint: Paint, outcome: string): string {
  if (outcome === 'failed' || outcome === 'invalid' || outcome === 'rejected') return paint('red', outcome);
  if (outcome === 'busy' || outcome === 'running') return paint('yellow', outcome);
  return paint('green', outcome);
}

const clock = (at: Date) => at.toISOString().slice(11, 19);

/** One readable line: time (UTC), subject, runId, outcome, duration, error. */
export function formatEventLine(m: ParsedMessage, receivedAt: Date, paint: Paint): string {
  if (m.kind === 'invalid') {
    return `${clock(receivedAt)}  ${m.subject.padEnd(17)} ${paint('red', 'INVALID')}  ${m.error}  ${paint('dim', m.preview)}`;
  }
  if (m.kind === 'rejected') {
    return `${clock(new Date(m.event.at))}  ${m.subject.padEnd(17)} ${(m.event.runId ?? '-').padEnd(24)} ${paint('red', 'rejected')}  ${m.event.error}`;
  }
  const e = m.event;
  const parts = [`${clock(e.at !== undefined ? new Date(e.at) : receivedAt)}  ${paint('cyan', m.subject.padEnd(17))} ${(e.runId ?? '(new run)').padEnd(24)}`];
  if ('outcome' in e) parts.push(paintOutcome(paint, e.outcome));
  else if ('reason' in e && e.reason !== undefined) parts.push(paint('dim', e.reason));
  if ('durationMs' in e) parts.push(formatDuration(e.durationMs));
  if ('error' in e && e.error !== undefined) parts.push(paint('red', e.error));
  return parts.join('  ');
}

/** The machine form of a message: `{subject, event}`, or `{subject, invalid, preview}` for a bad body. */
export function eventJson(m: ParsedMessage): string {
  if (m.kind === 'invalid') return JSON.stringify({ subject: m.subject, invalid: m.error, preview: m.preview });
  return JSON.stringify({ subject: m.subject, event: m.event });
}
