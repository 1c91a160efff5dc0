import type { Handler } from './bus';
import type { Config, SettingName } from './config';
import type { EventSubject, Stage } from './events';
import type { LockKey } from './lock';
import type { DurableConsumer } from './nats';
import { consumerService, type Service, type ServiceDeps } from './service';

/**
 * The settings of a stage's container that come from the environment: `config.images[settings]`,
 * `config.timeoutsMs[settings]` and `config.memoryBytes[settings]` (`<X>_IMAGE`, `<X>_TIMEOUT`, `<X>_MEMORY`).
 */
export type StageSettings = keyof Config['images'];

/** A host directory a stage may mount: a key of `config.hostDirs`. */
export type HostDir = keyof Config['hostDirs'];

/** The setting that names each host directory (required by a service whose stages mount it). */
export const HOST_DIR_SETTINGS = {
  aws: 'HOST_AWS_DIR',
  processed: 'HOST_PROCESSED_DIR',
  viz: 'HOST_VIZ_DIR',
} as const satisfies Record<HostDir, SettingName>;

/** One container stage: everything about its container that is not decided per run. */
export interface StageDefinition {
  readonly stage: Stage;
  readonly settings: StageSettings;
  /** Its env file in BRAIN_ENV_DIR; the values go to the container and nowhere else. */
  readonly envFile: string;
  /** Host directories (HOST_<X>_DIR, required by the service that runs the stage) and where the container sees them. */
  readonly mounts: readonly { readonly hostDir: HostDir; readonly target: string }[];
  /** The configured phrase the container's log is scanned for (`config.phrases[phrase]`). */
  readonly phrase?: keyof Config['phrases'];
}

/** A service as its composition root knows it: what it consumes, the stages it runs, what it needs, how it is made. */
export interface ServiceDefinition<N extends string = string, C extends DurableConsumer | undefined = DurableConsumer | undefined> {
  readonly name: N;
  /** The subject it handles and its durable consumer on the events stream; none for a service that only publishes. */
  readonly consumes: C;
  /** The subject its step ends with (`*.done`); a `busy` ending of it counts as contention for `lock`. */
  readonly ends?: EventSubject;
  /** The lock its step holds: its stages' containers may exist only while their run holds it (else they are orphans). */
  readonly lock?: LockKey;
  readonly stages: readonly StageDefinition[];
  /** Every setting it cannot run without beyond the defaults (the host directories its stages mount included). */
  readonly requires: readonly SettingName[];
  create(deps: ServiceDeps): Promise<Service>;
}

/** The settings a service's stages need: the host directories they mount, in HOST_DIR_SETTINGS order. */
function mountSettings(stages: readonly StageDefinition[]): SettingName[] {
  const dirs = new Set(stages.flatMap((s) => s.mounts.map((m) => m.hostDir)));
  return (Object.keys(HOST_DIR_SETTINGS) as HostDir[]).filter((d) => dirs.has(d)).map((d) => HOST_DIR_SETTINGS[d]);
}

/**
 * A service that handles one subject through its durable consumer. `handler` is called once, at start, and may
 * load the service's code (a dynamic import), so listing the definitions costs nothing.
 */
export function consumerDefinition<N extends string, S extends EventSubject>(def: {
  /** The service's name; its durable consumer is named the same. */
  name: N;
  /** The one subject it handles. */
  consumes: S;
  ends: EventSubject;
  lock: LockKey;
  stages: readonly StageDefinition[];
  requires?: readonly SettingName[];
  handler: (deps: ServiceDeps) => Promise<Handler<S>>;
}): ServiceDefinition<N, DurableConsumer> {
  const { name, ends, lock, stages, handler } = def;
  const consumes = { durable: name, subject: def.consumes };
  return {
    name,
    consumes,
    ends,
    lock,
    stages,
    requires: [...new Set([...mountSettings(stages), ...(def.requires ?? [])])],
    async create(deps) {
      return consumerService(deps.bus, name, consumes.durable, consumes.subject, await handler(deps));
    },
  };
}

/** A service that consumes nothing and runs no container (the scheduler). */
export function producerDefinition<N extends string>(def: {
  name: N;
  requires?: readonly SettingName[];
  create: (deps: ServiceDeps) => Promise<Service>;
}): ServiceDefinition<N, undefined> {
  return { name: def.name, consumes: undefined, stages: [], requires: def.requires ?? [], create: def.create };
}

// ---------------------------------------------------------------------------------------------------------------
// The tables, derived from the list of definitions
// ---------------------------------------------------------------------------------------------------------------

/** `load-processed` → `loadProcessed`. */
export type CamelCase<S extends string> = S extends `${infer Head}-${infer Tail}` ? `${Head}${Capitalize<CamelCase<Tail>>}` : S;
export const camelCase = <S extends string>(s: S): CamelCase<S> => s.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase()) as CamelCase<S>;

/** The names of the definitions that consume a subject. */
export type ConsumerName<D extends ServiceDefinition> = Extract<D, { consumes: DurableConsumer }>['name'];

/** Each consuming service's durable consumer, keyed by its name in camelCase (`modelGate`). */
export function consumersOf<D extends ServiceDefinition>(defs: readonly D[]): Record<CamelCase<ConsumerName<D>>, DurableConsumer> {
  const out: Record<string, DurableConsumer> = {};
  for (const d of defs) if (d.consumes !== undefined) out[camelCase(d.name)] = d.consumes;
  return out as Record<CamelCase<ConsumerName<D>>, DurableConsumer>;
}

/**
 * Each stage's env file, keyed by its stage in camelCase (`loadProcessed`).
 * @throws Error when two definitions claim one stage: the list of definitions is wrong.
 */
export function envFilesOf(defs: readonly ServiceDefinition[]): Record<CamelCase<Stage>, string> {
  const out: Record<string, string> = {};
  for (const { stage, envFile } of defs.flatMap((d) => d.stages)) {
    if (Object.hasOwn(out, camelCase(stage))) throw new Error(`stage ${stage} is defined twice`);
    out[camelCase(stage)] = envFile;
  }
  return out as Record<CamelCase<Stage>, string>;
}

/**
 * The lock a `busy` ending waited for, by the subject it ends with (for the contention metric).
 * @throws Error when two services end with the same subject but name different locks.
 */
export function contendedLocksOf(defs: readonly ServiceDefinition[]): ReadonlyMap<EventSubject, LockKey> {
  const out = new Map<EventSubject, LockKey>();
  for (const d of defs) {
    if (d.ends === undefined || d.lock === undefined) continue;
    const known = out.get(d.ends);
    if (known !== undefined && known !== d.lock) throw new Error(`${d.ends} ends steps holding the ${known} and the ${d.lock} lock`);
    out.set(d.ends, d.lock);
  }
  return out;
}
