import type { EventBus, Handler, Subscription } from './bus';
import type { Config } from './config';
import type { EventSubject } from './events';
import type { ContainerRunner } from './docker';
import type { Locks } from './lock';
import type { Logger } from './logger';
import type { StepRecords } from './record';
import type { ScheduleControl } from './schedule';

/** What every stage service is given by its composition root. */
export interface ServiceDeps {
  config: Config;
  bus: EventBus;
  locks: Locks;
  runner: ContainerRunner;
  /** The durable record of each step of each run: what a restart reads to finish a step instead of guessing. */
  records: StepRecords;
  /** The schedule's durable pause (null until `brain setup` created its bucket); the scheduler reads it at each tick. */
  schedule?: ScheduleControl | null;
  logger: Logger;
}

export interface Service {
  readonly name: string;
  start(): Promise<void>;
  /** Stops taking work, hands in-flight work back (containers keep running) and waits for it to settle. */
  stop(): Promise<void>;
}

/**
 * A run id for a trigger that carried none: derived from the message's stream sequence and store time,
 * so a redelivery gets the same id and two deployments sharing a Docker engine do not collide.
 */
export const generatedRunId = (prefix: string, ctx: { streamSequence: number; storedAt: Date }) => `${prefix}${ctx.streamSequence}-${ctx.storedAt.getTime().toString(36)}`;

/** Message id for an event of a run, so a retried publish is dropped by the stream's duplicate window. */
export const msgIdFor = (runId: string, subject: string) => `${runId}:${subject}`;

/** A service that handles one subject through its durable consumer. */
export function consumerService<S extends EventSubject>(bus: EventBus, name: string, durable: string, subject: S, handle: Handler<S>): Service {
  let subscription: Subscription | undefined;
  return {
    name,
    async start() {
      subscription = await bus.consume(durable, subject, handle);
    },
    async stop() {
      await subscription?.stop();
    },
  };
}
