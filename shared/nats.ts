import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
  type StoredMsg,
  type StreamConfig,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { Config } from './config';

export const EVENTS_STREAM = 'BRAIN_EVENTS';
export const LOGS_STREAM = 'BRAIN_LOGS';
export const LOCKS_BUCKET = 'locks';
export const EVENT_SUBJECTS = ['transform.>', 'data.>', 'load.>', 'model.>', 'rejected.>'];

/** Durable consumer name and filter for each consuming service. */
export const CONSUMERS = {
  transformer: { durable: 'transformer', subject: 'transform.trigger' },
  loader: { durable: 'loader', subject: 'data.new' },
  modelGate: { durable: 'model-gate', subject: 'model.trigger' },
  trainer: { durable: 'trainer', subject: 'model.mismatch' },
} as const;

export interface TopologyOptions {
  replicas?: number;
  lockTtlMs: number;
  ackWaitMs: number;
  /** Redeliveries before a message is given up (and reported by the server as an advisory). */
  maxDeliver?: number;
  logsMaxBytes?: number;
}

export async function connectNats(config: Config, name: string): Promise<NatsConnection> {
  return connect({
    servers: config.nats.servers,
    name,
    ...(config.nats.user !== undefined ? { user: config.nats.user, pass: config.nats.pass } : {}),
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
  });
}

const MS = 1_000_000; // nanoseconds per millisecond

async function ensureStream(jsm: JetStreamManager, config: Partial<StreamConfig> & { name: string }): Promise<void> {
  try {
    await jsm.streams.add(config);
  } catch (err) {
    if (!/already in use|exists/i.test((err as Error).message)) throw err;
    await jsm.streams.update(config.name, config);
  }
}

/** Creates (or brings up to date) the streams, durable consumers and the locks bucket. Idempotent. */
export async function ensureTopology(nc: NatsConnection, opts: TopologyOptions): Promise<void> {
  const jsm = await jetstreamManager(nc);
  const replicas = opts.replicas ?? 1;
  await ensureStream(jsm, {
    name: EVENTS_STREAM,
    subjects: EVENT_SUBJECTS,
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    max_age: 30 * 24 * 3600 * 1000 * MS,
    duplicate_window: 2 * 60 * 1000 * MS,
    num_replicas: replicas,
  });
  await ensureStream(jsm, {
    name: LOGS_STREAM,
    subjects: ['logs.>'],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    max_bytes: opts.logsMaxBytes ?? 256 * 1024 * 1024,
    max_age: 7 * 24 * 3600 * 1000 * MS,
    num_replicas: replicas,
  });
  for (const { durable, subject } of Object.values(CONSUMERS)) {
    const consumer = {
      durable_name: durable,
      filter_subject: subject,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.New,
      ack_wait: opts.ackWaitMs * MS,
      max_deliver: opts.maxDeliver ?? 20,
      max_ack_pending: 1000,
    };
    try {
      await jsm.consumers.add(EVENTS_STREAM, consumer);
    } catch (err) {
      if (!/already in use|exists/i.test((err as Error).message)) throw err;
      await jsm.consumers.update(EVENTS_STREAM, durable, {
        ack_wait: consumer.ack_wait,
        max_deliver: consumer.max_deliver,
        max_ack_pending: consumer.max_ack_pending,
      });
    }
  }
  await new Kvm(nc).create(LOCKS_BUCKET, { history: 1, ttl: opts.lockTtlMs, replicas });
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
        return await jsm.streams.getMessage(`KV_${bucket}`, { last_by_subj: `$KV.${bucket}.${key}` });
      } catch (err) {
        if (/no message found|not found/i.test((err as Error).message)) return null;
        throw err;
      }
    },
  };
}

/** The locks bucket and its leader reader: what `createLocks` needs. */
export async function openLocks(nc: NatsConnection, ttlMs: number, replicas = 1, bucket = LOCKS_BUCKET) {
  const kv: KV = await new Kvm(nc).create(bucket, { history: 1, ttl: ttlMs, replicas });
  return { kv, leader: await lockReader(nc, bucket) };
}
