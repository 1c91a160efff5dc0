import { performance } from 'node:perf_hooks';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, type ConsumerMessages, type JetStreamClient, type JsMsg } from '@nats-io/jetstream';
import {
  EventSchemas,
  logsSubject,
  parseEvent,
  previewOf,
  rejectedSubject,
  sanitiseOutgoing,
  type EventBody,
  type EventMap,
  type EventSubject,
  type LogBatchEvent,
  type RejectedEvent,
  type Stage,
} from './events';
import { EVENTS_STREAM } from './nats';
import { BrainError, ErrorCode, describeError } from './errors';
import type { LockKey } from './lock';
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

/**
 * A handler returns `handed-back` when it stopped on shutdown without finishing: the message is redelivered at once.
 * `rejected`: the event is valid but cannot be accepted (e.g. a reused run id); it is reported on `rejected.<subject>` and terminated.
 */
export type HandlerResult = 'done' | 'handed-back' | { rejected: string };
export type Handler<S extends EventSubject> = (event: EventMap[S], ctx: HandlerContext) => Promise<HandlerResult>;

export interface Subscription {
  /**
   * Stops pulling (waits for the pull request in progress to end on the server, so none of ours is left there),
   * hands back at once (nak, no delay) whatever was delivered but not started, then hands in-flight work back
   * and waits for it to settle.
   */
  stop(): Promise<void>;
  readonly inFlight: number;
}

export interface EventBus {
  /**
   * Publishes one of our own events. The body is sanitised first (`sanitiseOutgoing`: a negative duration is 0,
   * an over-long error or reason is cut), so an outcome is always publishable; a body that still fails its schema
   * is a programming error: logged with the issues and thrown as an `OutgoingEventError`.
   */
  publish<S extends EventSubject>(subject: S, body: EventBody<S>, opts?: { msgId?: string }): Promise<EventMap[S]>;
  publishLogs(stage: Stage, runId: string, stream: 'stdout' | 'stderr', lines: string[]): void;
  flush(): Promise<void>;
  /**
   * Runs `handler` for each message of the durable consumer, at most one handler per stream sequence in this
   * process: a redelivery of a message whose handler still runs here (its heartbeats did not reach the server,
   * e.g. through a NATS outage longer than the ack wait) starts nothing; the running handler's heartbeats and
   * its final ack or nak go to the newest delivery.
   */
  consume<S extends EventSubject>(durable: string, subject: S, handler: Handler<S>): Promise<Subscription>;
}

export interface BusDeps {
  nc: NatsConnection;
  logger: Logger;
  ackWaitMs: number;
  metrics?: Metrics;
  /** How long a failing publish is retried before the handler gives up (and the message is redelivered). */
  publishRetryMs?: number;
  /** The lock a `busy` ending waited for, by the subject it ends with (`contendedLocksOf` the definitions): the contention metric. */
  contendedLocks?: ReadonlyMap<EventSubject, LockKey>;
  /** In-flight messages per consumer; each is worked on concurrently. */
  concurrency?: number;
  /** How long each pull request waits on the server (≥ 1000 ms; default 2000); a stopping consumer waits for its last one to end. */
  pullExpiresMs?: number;
}

/** Our own event failed its schema after sanitising: a bug in the publisher, never retried into success. */
export class OutgoingEventError extends BrainError {
  constructor(
    readonly subject: string,
    readonly issues: readonly { path: readonly PropertyKey[]; message: string }[],
  ) {
    super(ErrorCode.EventInvalid, `our own ${subject} event is invalid: ${issues.map((i) => `${i.path.map(String).join('.') || '(body)'}: ${i.message}`).join('; ')}`);
    this.name = 'OutgoingEventError';
  }
}

/** A monotonic time stamp in milliseconds (not the wall clock), for `elapsedMs`. */
export const monotonicNow = (): number => performance.now();

/** Milliseconds since `startedAt` (from `monotonicNow()`), rounded; never negative, whatever the wall clock does. */
export const elapsedMs = (startedAt: number): number => Math.max(0, Math.round(performance.now() - startedAt));

/** Delay before a message whose handler threw (an infrastructure fault, not a stage outcome) is retried. */
const RETRY_DELAY_MS = 2000;
/** How long an ack waits for the server's confirmation. */
const ACK_CONFIRM_TIMEOUT_MS = 5000;
const DEFAULT_PULL_EXPIRES_MS = 2000;
/** Pause after a failed pull (NATS down, consumer missing) before the next one. */
const PULL_RETRY_MS = 500;

/** A timer that can be cancelled, so a wait that lost its race keeps no process alive. */
function sleep(ms: number): { done: Promise<void>; cancel(): void } {
  let timer: NodeJS.Timeout | undefined;
  let resolve: () => void = () => undefined;
  const done = new Promise<void>((r) => {
    resolve = r;
    timer = setTimeout(r, ms);
  });
  return {
    done,
    cancel() {
      clearTimeout(timer);
      resolve();
    },
  };
}

export function createEventBus(deps: BusDeps): EventBus {
  const { nc, logger } = deps;
  const js: JetStreamClient = jetstream(nc);
  const encoder = new TextEncoder();
  const pullExpiresMs = Math.max(1000, deps.pullExpiresMs ?? DEFAULT_PULL_EXPIRES_MS);

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

  /** Each `*.done` event is one stage run for the metrics; a `busy` one is contention for its lock. */
  function recordOutcome(subject: EventSubject, event: unknown): void {
    if (deps.metrics === undefined || !subject.endsWith('.done')) return;
    const { outcome, durationMs } = event as { outcome: string; durationMs: number };
    const stage = subject.slice(0, subject.indexOf('.'));
    deps.metrics.stageEnded(stage, outcome, durationMs);
    const lock = deps.contendedLocks?.get(subject);
    if (outcome === 'busy' && lock !== undefined) deps.metrics.lockContended(lock);
  }

  async function publish<S extends EventSubject>(subject: S, body: EventBody<S>, opts: { msgId?: string } = {}): Promise<EventMap[S]> {
    const candidate = sanitiseOutgoing({ v: 1, at: new Date().toISOString(), ...body });
    const parsed = EventSchemas[subject].safeParse(candidate);
    if (!parsed.success) {
      const error = new OutgoingEventError(subject, parsed.error.issues);
      logger.fatal({ subject, issues: parsed.error.issues, body: candidate, code: error.code }, 'BUG: our own event fails its schema; it is not published');
      throw error;
    }
    const event = parsed.data as EventMap[S];
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
   * Acks a finished message and waits for the server's confirmation (true when it came). The client sends an ack at most once per
   * delivery (a second `ackAck()` on it resolves false without sending), so there is no retrying one delivery.
   * If the server redelivered the message while we waited (the ack was lost and the ack wait passed), that newest
   * delivery is acked in turn: the message is finished here. Otherwise a lost ack is logged with the stream
   * sequence and the server redelivers the message after the ack wait; recognising that redelivery as finished is
   * the handler's business.
   */
  async function acknowledge(delivery: { msg: JsMsg }, subject: string): Promise<boolean> {
    for (;;) {
      const msg = delivery.msg;
      const streamSequence = msg.info.streamSequence;
      let failure: string | undefined;
      try {
        if (await msg.ackAck({ timeout: ACK_CONFIRM_TIMEOUT_MS })) {
          // A redelivery that joined while the ack was on its way is the one the server counts now: answer it too.
          if (delivery.msg !== msg) delivery.msg.ack();
          return true;
        }
        failure = 'already answered';
      } catch (err) {
        failure = describeError(err);
      }
      if (delivery.msg !== msg) {
        logger.warn({ subject, streamSequence, deliveryCount: delivery.msg.info.deliveryCount, err: failure }, 'ack not confirmed; acking the redelivery that arrived meanwhile');
        continue;
      }
      logger.warn({ subject, streamSequence, err: failure }, 'ack not confirmed; the message may be redelivered');
      return false;
    }
  }

  async function consume<S extends EventSubject>(durable: string, subject: S, handler: Handler<S>): Promise<Subscription> {
    const consumer = await js.consumers.get(EVENTS_STREAM, durable);
    const concurrency = Math.max(1, deps.concurrency ?? 64);
    const shutdown = new AbortController();
    let stopping = false;
    /** One entry per stream sequence whose handler runs here; `msg` is its newest delivery. */
    const inFlight = new Map<number, { msg: JsMsg }>();
    /**
     * Stream sequences whose ack the server confirmed in the last two ack waits, with when: a redelivery it sent
     * before our ack reached it arrives after its handler ended, and is acked rather than handled again.
     */
    const acked = new Map<number, number>();
    const forgetAcked = (now: number) => {
      for (const [seq, at] of acked) if (now - at > 2 * deps.ackWaitMs) acked.delete(seq);
    };
    const tasks = new Set<Promise<void>>();
    let wakePuller: (() => void) | undefined;
    let batch: ConsumerMessages | undefined;
    const wake = () => {
      wakePuller?.();
      wakePuller = undefined;
    };

    async function handle(delivery: { msg: JsMsg }): Promise<void> {
      const first = delivery.msg;
      const parsed = parseEvent(subject, first.data);
      if (!parsed.ok) {
        try {
          await reject(subject, delivery.msg, parsed.error);
          delivery.msg.term(`invalid event: ${parsed.error}`);
        } catch (err) {
          logger.error({ subject, err: describeError(err) }, 'could not report a rejected event; will retry');
          delivery.msg.nak(RETRY_DELAY_MS);
        }
        return;
      }
      // Always the newest delivery: a redelivery joined by this running handler is the one the server counts.
      const heartbeat = setInterval(() => delivery.msg.working(), Math.max(250, Math.floor(deps.ackWaitMs / 3)));
      try {
        const result = await handler(parsed.value, {
          signal: shutdown.signal,
          streamSequence: first.info.streamSequence,
          storedAt: first.time,
        });
        clearInterval(heartbeat);
        if (result === 'handed-back') delivery.msg.nak();
        else if (typeof result === 'object') {
          await reject(subject, delivery.msg, result.rejected);
          delivery.msg.term(result.rejected);
        } else {
          // Only a confirmed ack: after a lost one, the redelivery is handled (and finds its step ended in the record).
          if (await acknowledge(delivery, subject)) {
            const now = monotonicNow();
            forgetAcked(now);
            acked.set(first.info.streamSequence, now);
          }
        }
      } catch (err) {
        logger.error({ subject, streamSequence: first.info.streamSequence, err: describeError(err) }, 'handler failed; message will be redelivered');
        delivery.msg.nak(shutdown.signal.aborted ? 0 : RETRY_DELAY_MS);
      } finally {
        clearInterval(heartbeat);
      }
    }

    function receive(msg: JsMsg): void {
      const seq = msg.info.streamSequence;
      const running = inFlight.get(seq);
      if (running !== undefined) {
        running.msg = msg;
        logger.warn(
          { subject, streamSequence: seq, deliverySequence: msg.info.deliverySequence, deliveryCount: msg.info.deliveryCount },
          'redelivered while its handler still runs here; that handler answers for the new delivery',
        );
        return;
      }
      const ackedAt = acked.get(seq);
      if (ackedAt !== undefined && monotonicNow() - ackedAt <= 2 * deps.ackWaitMs) {
        msg.ack();
        logger.info(
          { subject, streamSequence: seq, deliverySequence: msg.info.deliverySequence, deliveryCount: msg.info.deliveryCount },
          'redelivered just after its handler ended here and was acked; acked again',
        );
        return;
      }
      if (stopping) {
        // Delivered to a stopping consumer, never started: straight back (its pull is over, so not to us again).
        msg.nak();
        logger.info({ subject, streamSequence: seq }, 'delivered while stopping; handed back');
        return;
      }
      const delivery = { msg };
      inFlight.set(seq, delivery);
      const task: Promise<void> = handle(delivery)
        .catch((err: unknown) => logger.error({ subject, streamSequence: seq, err: describeError(err) }, 'message handling failed'))
        .finally(() => {
          inFlight.delete(seq);
          tasks.delete(task);
          wake();
        });
      tasks.add(task);
    }

    /**
     * One pull request at a time, for one message, read to its end (the message, or the server's expiry). A pull
     * ends on the server as soon as it delivers, so a stopping consumer leaves no request there once its last pull
     * ended, and a message it nak's is never redelivered to itself. A pull the client abandoned early would leave
     * the server a request whose message nobody reads (redelivered only after the ack wait).
     */
    const puller = (async () => {
      while (!stopping) {
        if (inFlight.size >= concurrency) {
          await new Promise<void>((resolve) => (wakePuller = resolve));
          continue;
        }
        try {
          batch = await consumer.fetch({ max_messages: 1, expires: pullExpiresMs });
          for await (const msg of batch) receive(msg);
        } catch (err) {
          if (stopping || nc.isClosed()) break;
          logger.warn({ subject, durable, err: describeError(err) }, 'pull failed; pulling again');
          const pause = sleep(PULL_RETRY_MS);
          wakePuller = pause.cancel;
          await pause.done;
        } finally {
          batch = undefined;
        }
      }
    })();

    return {
      get inFlight() {
        return inFlight.size;
      },
      async stop() {
        stopping = true;
        wake();
        // The pull in progress ends on the server within its expiry; waiting for it leaves no request of ours
        // there, and whatever it still delivers is nak'd at once. A connection that is down cannot end it: give up.
        const grace = sleep(pullExpiresMs + 3000);
        const ended = await Promise.race([puller.then(() => true), grace.done.then(() => false)]);
        grace.cancel();
        if (!ended) {
          logger.warn({ subject, durable }, 'the last pull did not end in time; closing it');
          await batch?.close();
          await puller;
        }
        shutdown.abort();
        await Promise.allSettled([...tasks]);
      },
    };
  }

  return { publish, publishLogs, flush: () => nc.flush(), consume };
}
