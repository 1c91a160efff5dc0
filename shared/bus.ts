import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, type JetStreamClient, type JsMsg } from '@nats-io/jetstream';
import {
  EventSchemas,
  logsSubject,
  parseEvent,
  previewOf,
  rejectedSubject,
  type EventBody,
  type EventMap,
  type EventSubject,
  type LogBatchEvent,
  type RejectedEvent,
  type Stage,
} from './events';
import { EVENTS_STREAM } from './nats';
import { describeError } from './errors';
import type { Logger } from './logger';
import type { Metrics } from './metrics';

export interface HandlerContext {
  /** Aborted when the service shuts down: stop waiting and hand the work back. */
  signal: AbortSignal;
  /** JetStream stream sequence of the message: stable across redeliveries. */
  streamSequence: number;
  /** When the message was stored: stable across redeliveries. */
  storedAt: Date;
}

/** A handler returns `handed-back` when it stopped on shutdown without finishing: the message is redelivered at once. */
export type HandlerResult = 'done' | 'handed-back';
export type Handler<S extends EventSubject> = (event: EventMap[S], ctx: HandlerContext) => Promise<HandlerResult>;

export interface Subscription {
  /** Stops taking messages, hands in-flight work back and waits for it to settle. */
  stop(): Promise<void>;
  readonly inFlight: number;
}

export interface EventBus {
  publish<S extends EventSubject>(subject: S, body: EventBody<S>, opts?: { msgId?: string }): Promise<EventMap[S]>;
  publishLogs(stage: Stage, runId: string, stream: 'stdout' | 'stderr', lines: string[]): void;
  flush(): Promise<void>;
  consume<S extends EventSubject>(durable: string, subject: S, handler: Handler<S>): Promise<Subscription>;
}

export interface BusDeps {
  nc: NatsConnection;
  logger: Logger;
  ackWaitMs: number;
  metrics?: Metrics;
  /** How long a failing publish is retried before the handler gives up (and the message is redelivered). */
  publishRetryMs?: number;
  /** In-flight messages per consumer; each is worked on concurrently. */
  concurrency?: number;
}

/** Delay before a message whose handler threw (an infrastructure fault, not a stage outcome) is retried. */
const RETRY_DELAY_MS = 2000;

export function createEventBus(deps: BusDeps): EventBus {
  const { nc, logger } = deps;
  const js: JetStreamClient = jetstream(nc);
  const encoder = new TextEncoder();

  /**
   * A stage's outcome must not be lost to a NATS restart: retry until the server stores it (or the
   * retry budget runs out). Safe because every event carries a message id the stream deduplicates.
   */
  async function publishWithRetry(subject: string, data: Uint8Array, msgId: string | undefined): Promise<void> {
    const deadline = Date.now() + (deps.publishRetryMs ?? 120_000);
    for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
      try {
        await js.publish(subject, data, msgId !== undefined ? { msgID: msgId } : {});
        return;
      } catch (err) {
        if (nc.isClosed() || Date.now() + delay > deadline) throw err;
        logger.warn({ subject, err: describeError(err) }, 'publish failed; retrying');
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  /** Each `*.done` event is one stage run for the metrics; a `busy` one is lock contention. */
  function recordOutcome(subject: EventSubject, event: unknown): void {
    if (deps.metrics === undefined || !subject.endsWith('.done')) return;
    const { outcome, durationMs } = event as { outcome: string; durationMs: number };
    const stage = subject.slice(0, subject.indexOf('.'));
    deps.metrics.stageEnded(stage, outcome, durationMs);
    if (outcome === 'busy') deps.metrics.lockContended(stage === 'model' ? 'model' : 'transform');
  }

  async function publish<S extends EventSubject>(
    subject: S,
    body: EventBody<S>,
    opts: { msgId?: string } = {},
  ): Promise<EventMap[S]> {
    const event = EventSchemas[subject].parse({ v: 1, at: new Date().toISOString(), ...body }) as EventMap[S];
    await publishWithRetry(subject, encoder.encode(JSON.stringify(event)), opts.msgId);
    recordOutcome(subject, event);
    return event;
  }

  function publishLogs(stage: Stage, runId: string, stream: 'stdout' | 'stderr', lines: string[]): void {
    const batch: LogBatchEvent = { v: 1, runId, at: new Date().toISOString(), stage, stream, lines };
    nc.publish(logsSubject(stage, runId), encoder.encode(JSON.stringify(batch)));
  }

  async function reject(subject: string, msg: JsMsg, error: string): Promise<void> {
    const report: RejectedEvent = { v: 1, at: new Date().toISOString(), subject, error, preview: previewOf(msg.data) };
    await publishWithRetry(rejectedSubject(subject), encoder.encode(JSON.stringify(report)), `rejected:${EVENTS_STREAM}:${msg.info.streamSequence}`);
    deps.metrics?.eventRejected(subject);
    logger.warn({ subject, error, streamSequence: msg.info.streamSequence }, 'rejected invalid event');
  }

  /**
   * Acks a finished message and waits for the server to confirm, retrying through a NATS node failure
   * or leader election: a lost ack would redeliver a run that already ended and start it again.
   */
  async function acknowledge(msg: JsMsg): Promise<void> {
    const deadline = Date.now() + Math.max(deps.ackWaitMs, 5000);
    for (;;) {
      const confirmed = await msg.ackAck({ timeout: 2000 }).catch(() => false);
      if (confirmed || Date.now() > deadline) {
        if (!confirmed) logger.warn({ subject: msg.subject, streamSequence: msg.info.streamSequence }, 'ack not confirmed; the message may be redelivered');
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  async function consume<S extends EventSubject>(durable: string, subject: S, handler: Handler<S>): Promise<Subscription> {
    const consumer = await js.consumers.get(EVENTS_STREAM, durable);
    const messages = await consumer.consume({ max_messages: deps.concurrency ?? 64 });
    const shutdown = new AbortController();
    const inFlight = new Set<Promise<void>>();

    async function handle(msg: JsMsg): Promise<void> {
      const parsed = parseEvent(subject, msg.data);
      if (!parsed.ok) {
        try {
          await reject(subject, msg, parsed.error);
          msg.term(`invalid event: ${parsed.error}`);
        } catch (err) {
          logger.error({ subject, err: describeError(err) }, 'could not report a rejected event; will retry');
          msg.nak(RETRY_DELAY_MS);
        }
        return;
      }
      const heartbeat = setInterval(() => msg.working(), Math.max(250, Math.floor(deps.ackWaitMs / 3)));
      try {
        const result = await handler(parsed.value, {
          signal: shutdown.signal,
          streamSequence: msg.info.streamSequence,
          storedAt: msg.time,
        });
        if (result === 'handed-back') msg.nak();
        else await acknowledge(msg);
      } catch (err) {
        logger.error({ subject, err: describeError(err) }, 'handler failed; message will be redelivered');
        msg.nak(shutdown.signal.aborted ? 0 : RETRY_DELAY_MS);
      } finally {
        clearInterval(heartbeat);
      }
    }

    const loop = (async () => {
      for await (const msg of messages) {
        const task = handle(msg);
        inFlight.add(task);
        void task.finally(() => inFlight.delete(task));
      }
    })();

    return {
      get inFlight() {
        return inFlight.size;
      },
      async stop() {
        await messages.close();
        await loop;
        shutdown.abort();
        await Promise.allSettled([...inFlight]);
      },
    };
  }

  return { publish, publishLogs, flush: () => nc.flush(), consume };
}
