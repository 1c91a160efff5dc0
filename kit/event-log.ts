/** The events a harness observes, and how tests and the bench wait for them. */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';

export interface RecordedEvent {
  subject: string;
  data: Record<string, unknown> & { runId?: string; outcome?: string; exitCode?: number | null; durationMs?: number; error?: string };
  /** performance.now() when the observer received it. */
  at: number;
}

/** A message body as JSON, or `{raw}` when it is not JSON (an invalid event is recorded too). */
export function bodyOf(msg: { json<T>(): T; string(): string }): RecordedEvent['data'] {
  try {
    return msg.json<RecordedEvent['data']>();
  } catch {
    return { raw: msg.string() };
  }
}

/** Core subscriptions to `subjects`, each message handed to `onEvent` as it arrives (no JetStream delivery in between). */
export function observeLive(client: NatsConnection, subjects: readonly string[], onEvent: (event: RecordedEvent) => void): Subscription[] {
  return subjects.map((subject) =>
    client.subscribe(subject, {
      callback: (_err, msg) => onEvent({ subject: msg.subject, data: bodyOf(msg), at: performance.now() }),
    }),
  );
}

/** A transform run is over when one of these arrives for it. */
export function isRunTerminal(e: RecordedEvent): boolean {
  if (e.subject === 'transform.done') return e.data.outcome !== 'new-data';
  if (e.subject === 'load.done') return e.data.outcome === 'failed';
  return e.subject === 'model.done';
}

/** The events a test harness observed, in order, and ways to wait for and summarise them. */
export class EventLog<E extends RecordedEvent = RecordedEvent> {
  readonly events: E[] = [];
  private waiters: { pred: (e: E) => boolean; resolve: (e: E) => void }[] = [];

  constructor(private readonly awsDir: string) {}

  protected record(event: E): void {
    this.events.push(event);
    this.waiters = this.waiters.filter((w) => {
      if (!w.pred(event)) return true;
      w.resolve(event);
      return false;
    });
  }

  /** Resolves with the first recorded event (past or future) matching the predicate. */
  waitFor(pred: (e: E) => boolean, timeoutMs = 30_000, what = 'event'): Promise<E> {
    const seen = this.events.find(pred);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.resolve !== done);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; saw:\n${this.events.map((e) => `${e.subject} ${JSON.stringify(e.data)}`).join('\n')}`));
      }, timeoutMs);
      const done = (e: E) => {
        clearTimeout(timer);
        resolve(e);
      };
      this.waiters.push({ pred, resolve: done });
    });
  }

  waitForSubject(subject: string, runId: string, timeoutMs?: number): Promise<E> {
    return this.waitFor((e) => e.subject === subject && e.data.runId === runId, timeoutMs, `${subject} of ${runId}`);
  }

  waitForRunEnd(runId: string, timeoutMs?: number): Promise<E> {
    return this.waitFor((e) => e.data.runId === runId && isRunTerminal(e), timeoutMs, `the end of run ${runId}`);
  }

  eventsOf(runId: string): E[] {
    return this.events.filter((e) => e.data.runId === runId);
  }

  /** `subject outcome` of a run's events, in order, for compact assertions. */
  trail(runId: string): string[] {
    return this.eventsOf(runId).map((e) => (e.data.outcome !== undefined ? `${e.subject} ${e.data.outcome}` : e.subject));
  }

  /** Lines the stand-in images recorded at each container start (`<name>-starts.log` in the AWS dir). */
  starts(name: 'transform' | 'load' | 'train'): string[] {
    const file = join(this.awsDir, `${name}-starts.log`);
    return existsSync(file)
      ? readFileSync(file, 'utf8')
          .split('\n')
          .filter((l) => l !== '')
      : [];
  }
}
