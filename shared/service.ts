import type { EventBus, Handler, Subscription } from './bus';
import type { Config, ServiceName } from './config';
import type { EventSubject, Stage } from './events';
import { ErrorCode, StageError } from './errors';
import type { ContainerRunner } from './docker';
import type { Locks } from './lock';
import type { Logger } from './logger';
import type { StepRecords } from './record';

/** What every stage service is given by its composition root. */
export interface ServiceDeps {
  config: Config;
  bus: EventBus;
  locks: Locks;
  runner: ContainerRunner;
  /** The durable record of each step of each run: what a restart reads to finish a step instead of guessing. */
  records: StepRecords;
  logger: Logger;
}

export interface Service {
  readonly name: string;
  start(): Promise<void>;
  /** Stops taking work, hands in-flight work back (containers keep running) and waits for it to settle. */
  stop(): Promise<void>;
}

/** The stages whose containers each service starts (and so sweeps when orphaned). */
export const STAGES_OF_SERVICE: Record<ServiceName, readonly Stage[]> = {
  scheduler: [],
  transformer: ['transform'],
  loader: ['load-processed', 'load-viz'],
  'model-gate': ['model-trigger'],
  trainer: ['train'],
};

/**
 * A run id for a trigger that carried none: derived from the message's stream sequence and store time,
 * so a redelivery gets the same id and two deployments sharing a Docker engine do not collide.
 */
export const generatedRunId = (prefix: string, ctx: { streamSequence: number; storedAt: Date }) =>
  `${prefix}${ctx.streamSequence}-${ctx.storedAt.getTime().toString(36)}`;

/** Message id for an event of a run, so a retried publish is dropped by the stream's duplicate window. */
export const msgIdFor = (runId: string, subject: string) => `${runId}:${subject}`;

/** The host AWS directory a service mounts; configuration validation guarantees it, this keeps the types honest. */
export function awsDir(config: Config, service: string): string {
  const { aws } = config.hostDirs;
  if (aws === undefined) throw new StageError(ErrorCode.Config, `the ${service} needs HOST_AWS_DIR`);
  return aws;
}

/** The host directories a service mounts; configuration validation guarantees them, this keeps the types honest. */
export function hostDirs(config: Config, service: string): { aws: string; processed: string; viz: string } {
  const { aws, processed, viz } = config.hostDirs;
  if (aws === undefined || processed === undefined || viz === undefined) {
    throw new StageError(ErrorCode.Config, `the ${service} needs HOST_AWS_DIR, HOST_PROCESSED_DIR and HOST_VIZ_DIR`);
  }
  return { aws, processed, viz };
}

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
