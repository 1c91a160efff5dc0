import { connect, type NatsConnection } from '@nats-io/transport-node';
import { errors as natsErrors } from '@nats-io/nats-core';
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type ConsumerConfig,
  type JetStreamManager,
  type StoredMsg,
  type StreamConfig,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { Config } from './config';
import type { EventSubject } from './events';
import { BrainError, ErrorCode } from './errors';

export const EVENTS_STREAM = 'BRAIN_EVENTS';
export const LOGS_STREAM = 'BRAIN_LOGS';
export const LOCKS_BUCKET = 'locks';
/** The durable per-run, per-stage record: keys `<runId>.<stage>`, one value each (history 1), kept 30 days. */
export const RUNS_BUCKET = 'runs';
export const RUNS_MAX_AGE_MS = 30 * 24 * 3600 * 1000;
/** The schedule's pause (shared/schedule.ts): no max age, a short history of who paused and resumed. */
export const SCHEDULE_BUCKET = 'schedule';
export const SCHEDULE_HISTORY = 16;
export const EVENT_SUBJECTS = ['transform.>', 'data.>', 'load.>', 'model.>', 'rejected.>'];

/** The stream behind a KV bucket. */
export const bucketStream = (bucket: string) => `KV_${bucket}`;

/** A service's durable consumer on the events stream and the one subject it takes (see `ServiceDefinition.consumes`). */
export interface DurableConsumer {
  readonly durable: string;
  readonly subject: EventSubject;
}

export interface TopologyOptions {
  replicas?: number;
  lockTtlMs: number;
  ackWaitMs: number;
  /** Redeliveries before a message is given up (and reported by the server as an advisory). */
  maxDeliver?: number;
  logsMaxBytes?: number;
}

/** The topology settings of a configuration. */
export const topologyOptions = (config: Config): TopologyOptions => ({
  lockTtlMs: config.lockTtlMs,
  ackWaitMs: config.ackWaitMs,
  replicas: config.nats.replicas,
});

/**
 * The inbox prefix of a connection: `NATS_INBOX_PREFIX`, else `_INBOX_<user>` for a named NATS user, else the
 * client's default. Each role of deploy/nats/auth.conf may subscribe to its own prefix only, so no role receives
 * another's replies or pull deliveries.
 */
export function inboxPrefixFor(nats: Config['nats']): string | undefined {
  return nats.inboxPrefix ?? (nats.user !== undefined ? `_INBOX_${nats.user}` : undefined);
}

export async function connectNats(config: Config, name: string): Promise<NatsConnection> {
  const inboxPrefix = inboxPrefixFor(config.nats);
  return connect({
    servers: config.nats.servers,
    name,
    ...(config.nats.user !== undefined ? { user: config.nats.user, pass: config.nats.pass } : {}),
    ...(inboxPrefix !== undefined ? { inboxPrefix } : {}),
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
  });
}

const MS = 1_000_000; // nanoseconds per millisecond
const DUPLICATE_WINDOW_MS = 2 * 60 * 1000;

// ---------------------------------------------------------------------------------------------------------------
// The wanted topology, declared once
// ---------------------------------------------------------------------------------------------------------------

type Shown = 'duration' | 'bytes' | 'count' | 'text' | 'subjects';

/** One setting of a stream or consumer that the pipeline relies on. */
interface Field {
  /** Its key in the server's config. */
  key: string;
  wanted: unknown;
  show: Shown;
  /** False when the server cannot change it in place (the stream or consumer would have to be recreated). */
  mutable: boolean;
  /** The environment setting it comes from, with its value as configured; none for the pipeline's fixed values. */
  setting?: { name: string; value: string };
  /** How a mismatch reads: `<setting> but <part> <says> <actual>`. */
  says?: string;
}

interface StreamPart {
  kind: 'stream';
  /** The stream's name (`KV_<bucket>` for a bucket). */
  name: string;
  /** For people: "the BRAIN_EVENTS stream", "the locks bucket (KV_locks)". */
  label: string;
  fields: Field[];
  create(nc: NatsConnection, jsm: JetStreamManager): Promise<void>;
  /** Extra keys sent with an update, derived from the changed ones (a bucket's duplicate window follows its max age). */
  patch?(changed: Record<string, unknown>): Record<string, unknown>;
}

interface ConsumerPart {
  kind: 'consumer';
  stream: string;
  name: string;
  label: string;
  fields: Field[];
  config: Partial<ConsumerConfig> & { durable_name: string };
}

type Part = StreamPart | ConsumerPart;

/** Every stream, bucket and consumer, in creation order (a consumer after its stream). */
export interface Topology {
  readonly parts: readonly Part[];
  /** NATS_REPLICAS: copies of every stream and bucket. */
  readonly replicas: number;
}

const seconds = (ms: number) => `${ms / 1000} s`;

function replicaField(replicas: number): Field {
  return { key: 'num_replicas', wanted: replicas, show: 'count', mutable: true, setting: { name: 'NATS_REPLICAS', value: String(replicas) }, says: 'has replicas' };
}

function streamPart(config: Partial<StreamConfig> & { name: string }, fields: Field[]): StreamPart {
  return {
    kind: 'stream',
    name: config.name,
    label: `the ${config.name} stream`,
    fields,
    async create(_nc, jsm) {
      await jsm.streams.add(config);
    },
  };
}

function bucketPart(bucket: string, opts: { history: number; ttlMs: number; replicas: number; ttlSetting?: { name: string; value: string }; says?: string }): StreamPart {
  return {
    kind: 'stream',
    name: bucketStream(bucket),
    label: `the ${bucket} bucket (${bucketStream(bucket)})`,
    fields: [
      { key: 'subjects', wanted: [`$KV.${bucket}.>`], show: 'subjects', mutable: true },
      { key: 'storage', wanted: StorageType.File, show: 'text', mutable: false },
      { key: 'max_msgs_per_subject', wanted: opts.history, show: 'count', mutable: true, says: 'keeps per key' },
      {
        key: 'max_age',
        wanted: opts.ttlMs * MS,
        show: 'duration',
        mutable: true,
        ...(opts.ttlSetting !== undefined ? { setting: opts.ttlSetting } : {}),
        says: opts.says ?? 'keeps entries',
      },
      replicaField(opts.replicas),
    ],
    async create(nc) {
      await new Kvm(nc).create(bucket, { history: opts.history, ttl: opts.ttlMs, replicas: opts.replicas, storage: StorageType.File });
    },
    patch(changed) {
      // The server refuses a duplicate window longer than the max age; a KV bucket's is at most 2 minutes.
      const maxAge = changed.max_age;
      return typeof maxAge === 'number' ? { duplicate_window: Math.min(maxAge, DUPLICATE_WINDOW_MS * MS) } : {};
    },
  };
}

/**
 * The topology the configuration wants: the streams, the buckets and the given durable consumers. A service passes
 * its own consumers only (all its NATS user may read); `brain setup` passes every service's (see the composition
 * root's `wantedTopology`).
 */
export function topologyOf(opts: TopologyOptions, consumers: readonly DurableConsumer[]): Topology {
  const replicas = opts.replicas ?? 1;
  const parts: Part[] = [
    streamPart(
      {
        name: EVENTS_STREAM,
        subjects: EVENT_SUBJECTS,
        storage: StorageType.File,
        retention: RetentionPolicy.Limits,
        max_age: 30 * 24 * 3600 * 1000 * MS,
        duplicate_window: DUPLICATE_WINDOW_MS * MS,
        num_replicas: replicas,
      },
      [
        { key: 'subjects', wanted: EVENT_SUBJECTS, show: 'subjects', mutable: true },
        { key: 'storage', wanted: StorageType.File, show: 'text', mutable: false },
        { key: 'retention', wanted: RetentionPolicy.Limits, show: 'text', mutable: false },
        { key: 'max_age', wanted: 30 * 24 * 3600 * 1000 * MS, show: 'duration', mutable: true, says: 'keeps events' },
        { key: 'max_msgs', wanted: -1, show: 'count', mutable: true, says: 'keeps at most' },
        { key: 'max_bytes', wanted: -1, show: 'bytes', mutable: true, says: 'keeps at most' },
        { key: 'duplicate_window', wanted: DUPLICATE_WINDOW_MS * MS, show: 'duration', mutable: true, says: 'drops duplicates within' },
        replicaField(replicas),
      ],
    ),
    streamPart(
      {
        name: LOGS_STREAM,
        subjects: ['logs.>'],
        storage: StorageType.File,
        retention: RetentionPolicy.Limits,
        discard: DiscardPolicy.Old,
        max_bytes: opts.logsMaxBytes ?? 256 * 1024 * 1024,
        max_age: 7 * 24 * 3600 * 1000 * MS,
        num_replicas: replicas,
      },
      [
        { key: 'subjects', wanted: ['logs.>'], show: 'subjects', mutable: true },
        { key: 'storage', wanted: StorageType.File, show: 'text', mutable: false },
        { key: 'retention', wanted: RetentionPolicy.Limits, show: 'text', mutable: false },
        { key: 'discard', wanted: DiscardPolicy.Old, show: 'text', mutable: true },
        { key: 'max_bytes', wanted: opts.logsMaxBytes ?? 256 * 1024 * 1024, show: 'bytes', mutable: true, says: 'keeps at most' },
        { key: 'max_age', wanted: 7 * 24 * 3600 * 1000 * MS, show: 'duration', mutable: true, says: 'keeps lines' },
        replicaField(replicas),
      ],
    ),
    bucketPart(LOCKS_BUCKET, { history: 1, ttlMs: opts.lockTtlMs, replicas, ttlSetting: { name: 'LOCK_TTL', value: seconds(opts.lockTtlMs) }, says: 'keeps leases' }),
  ];
  parts.push(bucketPart(RUNS_BUCKET, { history: 1, ttlMs: RUNS_MAX_AGE_MS, replicas, says: 'keeps run records' }));
  // The schedule's pause (shared/schedule.ts): no max age, a short history of who paused and resumed.
  parts.push(bucketPart(SCHEDULE_BUCKET, { history: SCHEDULE_HISTORY, ttlMs: 0, replicas, says: 'keeps the pause' }));
  for (const { durable, subject } of consumers) {
    const config = {
      durable_name: durable,
      filter_subject: subject,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.New,
      ack_wait: opts.ackWaitMs * MS,
      max_deliver: opts.maxDeliver ?? 20,
      max_ack_pending: 1000,
    };
    parts.push({
      kind: 'consumer',
      stream: EVENTS_STREAM,
      name: durable,
      label: `the ${durable} consumer (on ${EVENTS_STREAM})`,
      config,
      fields: [
        { key: 'filter_subject', wanted: config.filter_subject, show: 'text', mutable: false },
        { key: 'ack_policy', wanted: config.ack_policy, show: 'text', mutable: false },
        { key: 'deliver_policy', wanted: config.deliver_policy, show: 'text', mutable: false },
        { key: 'ack_wait', wanted: config.ack_wait, show: 'duration', mutable: true, setting: { name: 'ACK_WAIT', value: seconds(opts.ackWaitMs) }, says: 'redelivers after' },
        { key: 'max_deliver', wanted: config.max_deliver, show: 'count', mutable: true, says: 'delivers at most (times)' },
        { key: 'max_ack_pending', wanted: config.max_ack_pending, show: 'count', mutable: true, says: 'has max_ack_pending' },
      ],
    });
  }
  return { parts, replicas };
}

// ---------------------------------------------------------------------------------------------------------------
// Comparing with the server, converging, refusing
// ---------------------------------------------------------------------------------------------------------------

/** One setting the server holds differently from the configuration. */
export interface TopologyDifference {
  part: string;
  key: string;
  wanted: string;
  actual: string;
  /** The environment setting behind it, if any. */
  setting?: string;
  mutable: boolean;
  /** For people: "LOCK_TTL=60 s but the locks bucket (KV_locks) keeps leases 30 s". */
  problem: string;
}

/** What `convergeTopology` did to one part. */
export interface TopologyChange {
  action: 'created' | 'updated';
  part: string;
  differences: TopologyDifference[];
}

export type TopologyErrorReason = 'refused' | 'cannot-converge' | 'unreadable' | 'missing';

/**
 * The topology on the server differs from the configuration and this process cannot (or may not) fix it.
 * `reason`: `refused` — the NATS user lacks the rights (run `brain setup` as the admin user); `cannot-converge` —
 * the server refuses the setting (replicas on a single server, a field that cannot change in place);
 * `unreadable` — the user may not even read a part; `missing` — a bucket opened before it was created.
 */
export class TopologyError extends BrainError {
  constructor(
    readonly reason: TopologyErrorReason,
    readonly problems: string[],
    message: string,
    options?: { cause?: unknown },
  ) {
    super(ErrorCode.Topology, message, options);
    this.name = 'TopologyError';
  }
}

/** True when the NATS server refused the operation for lack of permission (the client's error class, through causes). */
export function isPermissionDenied(err: unknown): boolean {
  let e: unknown = err;
  for (let depth = 0; depth < 5 && e instanceof Error; depth++) {
    if (e instanceof natsErrors.PermissionViolationError) return true;
    e = e.cause;
  }
  return false;
}

const isApiError = (err: unknown, code: number): boolean => err instanceof JetStreamApiError && err.code === code;

function show(value: unknown, how: Shown): string {
  if (value === undefined || value === null) return 'unset';
  if (how === 'subjects') return Array.isArray(value) ? value.join(', ') : String(value);
  if (typeof value !== 'number') return String(value);
  if (how === 'duration') {
    const s = value / 1e9;
    if (s === 0) return 'forever';
    return s >= 86400 && s % 86400 === 0 ? `${s / 86400} d` : s >= 3600 && s % 3600 === 0 ? `${s / 3600} h` : `${s} s`;
  }
  if (how === 'bytes') return value < 0 ? 'unlimited bytes' : value % (1024 * 1024) === 0 ? `${value / (1024 * 1024)} MiB` : `${value} B`;
  return value < 0 && how === 'count' ? 'unlimited' : String(value);
}

function same(actual: unknown, wanted: unknown): boolean {
  if (Array.isArray(wanted)) return Array.isArray(actual) && [...actual].sort().join('\n') === [...wanted].sort().join('\n');
  return actual === wanted;
}

function differencesOf(part: Part, config: Record<string, unknown>): TopologyDifference[] {
  const out: TopologyDifference[] = [];
  for (const f of part.fields) {
    const actual = config[f.key];
    if (same(actual, f.wanted)) continue;
    const [wanted, got] = [show(f.wanted, f.show), show(actual, f.show)];
    const says = f.says ?? `has ${f.key}`;
    const problem =
      f.setting !== undefined
        ? `${f.setting.name}=${f.setting.value} but ${part.label} ${says} ${got} (${f.key})`
        : `${part.label} ${says} ${got} (${f.key}); the pipeline needs ${wanted}`;
    out.push({ part: part.label, key: f.key, wanted, actual: got, mutable: f.mutable, problem, ...(f.setting !== undefined ? { setting: f.setting.name } : {}) });
  }
  return out;
}

export interface PartState {
  part: string;
  missing: boolean;
  differences: TopologyDifference[];
}

const who = (user: string | undefined) => (user !== undefined ? `NATS user "${user}"` : 'this NATS connection');

/** The server's config of one part; null when it does not exist. Read-only (an INFO request). */
async function readPart(jsm: JetStreamManager, part: Part, user?: string): Promise<Record<string, unknown> | null> {
  try {
    if (part.kind === 'stream') return (await jsm.streams.info(part.name)).config as unknown as Record<string, unknown>;
    return (await jsm.consumers.info(part.stream, part.name)).config as unknown as Record<string, unknown>;
  } catch (err) {
    if (isApiError(err, JetStreamApiCodes.StreamNotFound) || isApiError(err, JetStreamApiCodes.ConsumerNotFound)) return null;
    if (isPermissionDenied(err)) {
      const problem = `${who(user)} may not read ${part.label}`;
      throw new TopologyError('unreadable', [problem], `${problem} (${(err as Error).message}); \`brain setup\` runs as the admin NATS user`, { cause: err });
    }
    throw err;
  }
}

const problemsOf = (states: readonly PartState[]) => states.flatMap((s) => (s.missing ? [`${s.part} does not exist`] : s.differences.map((d) => d.problem)));

/**
 * Compares the server's topology with the wanted one, with INFO requests only.
 * @throws TopologyError `cannot-converge` when replicas are wanted from a server outside a cluster (it would
 *   accept and record them, and keep one copy).
 */
export async function inspectTopology(nc: NatsConnection, topology: Topology, opts: { user?: string } = {}): Promise<PartState[]> {
  if (topology.replicas > 1 && (nc.info?.cluster ?? '') === '') {
    throw cannotConverge([
      `NATS_REPLICAS=${topology.replicas} but the NATS server ${nc.info?.server_name ?? ''} is not part of a cluster: it keeps one copy (use NATS_REPLICAS=1)`,
    ]);
  }
  const jsm = await jetstreamManager(nc);
  const states: PartState[] = [];
  for (const part of topology.parts) {
    const config = await readPart(jsm, part, opts.user);
    states.push({ part: part.label, missing: config === null, differences: config === null ? [] : differencesOf(part, config) });
  }
  return states;
}

function refused(user: string | undefined, problems: string[], cause: unknown): TopologyError {
  return new TopologyError(
    'refused',
    problems,
    `${problems.join('; ')}: ${who(user)} may not create or update the NATS topology; run \`brain setup\` with the admin NATS user (compose: \`docker compose run --rm setup\`), then start again`,
    { cause },
  );
}

function cannotConverge(problems: string[], cause?: unknown): TopologyError {
  return new TopologyError(
    'cannot-converge',
    problems,
    `the NATS topology cannot be brought to the configuration: ${problems.join('; ')}; change the setting named, or the server`,
    cause !== undefined ? { cause } : undefined,
  );
}

async function createPart(nc: NatsConnection, jsm: JetStreamManager, part: Part): Promise<void> {
  if (part.kind === 'stream') await part.create(nc, jsm);
  else await jsm.consumers.add(part.stream, part.config);
}

async function updatePart(jsm: JetStreamManager, part: Part, differences: readonly TopologyDifference[]): Promise<void> {
  const changed: Record<string, unknown> = {};
  for (const d of differences) changed[d.key] = part.fields.find((f) => f.key === d.key)?.wanted;
  if (part.kind === 'stream') {
    await jsm.streams.update(part.name, { ...changed, ...(part.patch?.(changed) ?? {}) });
  } else {
    await jsm.consumers.update(part.stream, part.name, changed);
  }
}

/** A JetStream API refusal as one line: what failed, which settings were involved, what the server said. */
function apiRefusal(action: string, part: Part, differences: readonly TopologyDifference[], err: JetStreamApiError): string {
  const settings = [...new Set(differences.flatMap((d) => (d.setting !== undefined ? [d.setting] : [])))];
  const why = differences.map((d) => d.problem).join('; ');
  return `${action} ${part.label}${settings.length > 0 ? ` for ${settings.join(', ')}` : ''} was refused by the server: ${err.message} (JetStream error ${err.code})${why !== '' ? ` [${why}]` : ''}`;
}

/**
 * Brings the server's topology to the wanted one: creates what is missing, updates what differs, then reads it
 * all back. Returns what it changed (nothing when it already matched).
 * @throws TopologyError `refused` when the NATS user may not change it, `cannot-converge` when the server refuses
 *   a setting or keeps a different value (each problem names the setting, e.g. NATS_REPLICAS, LOCK_TTL, ACK_WAIT).
 */
export async function convergeTopology(nc: NatsConnection, topology: Topology, opts: { user?: string } = {}): Promise<TopologyChange[]> {
  const jsm = await jetstreamManager(nc);
  const changes: TopologyChange[] = [];
  const states = await inspectTopology(nc, topology, opts);
  for (const [i, part] of topology.parts.entries()) {
    const state = states[i];
    if (state === undefined || (!state.missing && state.differences.length === 0)) continue;
    try {
      let differences = state.differences;
      let action: TopologyChange['action'] = 'updated';
      if (state.missing) {
        try {
          await createPart(nc, jsm, part);
          action = 'created';
        } catch (err) {
          // Created by someone else meanwhile (StreamNameExist and the like): compare with theirs.
          const config = err instanceof JetStreamApiError ? await readPart(jsm, part, opts.user) : null;
          if (config === null) throw err;
          differences = differencesOf(part, config);
          if (differences.length === 0) continue;
        }
      }
      if (action === 'updated') {
        const fixed = differences.filter((d) => !d.mutable);
        if (fixed.length > 0) {
          throw cannotConverge(fixed.map((d) => `${d.problem}, which cannot change in place (delete ${part.label} and run \`brain setup\`)`));
        }
        await updatePart(jsm, part, differences);
      }
      changes.push({ action, part: part.label, differences });
    } catch (err) {
      if (isPermissionDenied(err)) throw refused(opts.user, problemsOf(states.slice(i)), err);
      if (err instanceof JetStreamApiError) throw cannotConverge([apiRefusal(state.missing ? 'creating' : 'updating', part, state.differences, err)], err);
      throw err;
    }
  }
  if (changes.length > 0) {
    // The server may accept a setting and keep another (a single server caps replicas at 1): read it back.
    const left = problemsOf(await inspectTopology(nc, topology, opts));
    if (left.length > 0) throw cannotConverge(left.map((p) => `${p} after the update (the server keeps its own value)`));
  }
  return changes;
}

/**
 * What a service does at start: compares the topology it uses with the configuration (INFO requests only); when
 * something is missing or differs, converges it if this NATS user may, and refuses to start otherwise.
 * @throws TopologyError naming each differing setting and saying to run `brain setup`.
 */
export async function verifyTopology(nc: NatsConnection, topology: Topology, opts: { user?: string } = {}): Promise<TopologyChange[]> {
  const states = await inspectTopology(nc, topology, opts);
  if (states.every((s) => !s.missing && s.differences.length === 0)) return [];
  return convergeTopology(nc, topology, opts);
}

/** One line per change, for `brain setup` and the services' start-up log. */
export function describeChange(change: TopologyChange): string {
  if (change.action === 'created') return `created ${change.part}`;
  return `updated ${change.part}: ${change.differences.map((d) => `${d.key} ${d.actual} → ${d.wanted}${d.setting !== undefined ? ` (${d.setting})` : ''}`).join(', ')}`;
}

/**
 * Identifies this deployment: the creation time of its event stream, the same for every service and
 * replica that shares it, and different for another pipeline on the same Docker engine.
 */
export async function deploymentId(nc: NatsConnection): Promise<string> {
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(EVENTS_STREAM);
  return `${EVENTS_STREAM}@${info.created}`;
}

/** Reads a lock's latest write (value or delete marker) from the stream leader. */
export async function lockReader(nc: NatsConnection, bucket = LOCKS_BUCKET): Promise<{ lastMessage(key: string): Promise<StoredMsg | null> }> {
  const jsm = await jetstreamManager(nc);
  return {
    async lastMessage(key) {
      try {
        return await jsm.streams.getMessage(bucketStream(bucket), { last_by_subj: `$KV.${bucket}.${key}` });
      } catch (err) {
        if (isApiError(err, JetStreamApiCodes.NoMessageFound)) return null;
        throw err;
      }
    },
  };
}

/**
 * Opens an existing bucket (an INFO request, nothing created), reading through direct gets when the bucket allows them.
 * @throws TopologyError `missing` when it does not exist.
 */
export async function openBucket(nc: NatsConnection, bucket: string): Promise<KV> {
  const jsm = await jetstreamManager(nc);
  let direct: boolean;
  try {
    direct = (await jsm.streams.info(bucketStream(bucket))).config.allow_direct === true;
  } catch (err) {
    if (isApiError(err, JetStreamApiCodes.StreamNotFound)) {
      throw new TopologyError('missing', [`the ${bucket} bucket does not exist`], `the ${bucket} bucket does not exist: run \`brain setup\``, { cause: err });
    }
    throw err;
  }
  return new Kvm(nc).open(bucket, { allow_direct: direct });
}

/** The runs bucket (`RUNS_BUCKET`), as created by `brain setup` or a service's start-up; nothing is created here. */
export async function openRuns(nc: NatsConnection): Promise<KV> {
  return openBucket(nc, RUNS_BUCKET);
}

/** An existing locks bucket and its leader reader: what `createLocks` needs. Nothing is created. */
export async function lockStore(nc: NatsConnection, bucket = LOCKS_BUCKET) {
  return { kv: await openBucket(nc, bucket), leader: await lockReader(nc, bucket) };
}

/** A locks bucket brought to `ttlMs` and `replicas` (created or updated as needed), and its leader reader. */
export async function openLocks(nc: NatsConnection, ttlMs: number, replicas = 1, bucket = LOCKS_BUCKET) {
  const part = bucketPart(bucket, { history: 1, ttlMs, replicas, ttlSetting: { name: 'LOCK_TTL', value: seconds(ttlMs) }, says: 'keeps leases' });
  await convergeTopology(nc, { parts: [part], replicas });
  return lockStore(nc, bucket);
}
