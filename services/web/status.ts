import type { NatsConnection } from '@nats-io/transport-node';
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import { errors } from '@nats-io/nats-core';
import { Svcm, type ServiceInfo } from '@nats-io/services';
import { SERVICE_NAMES } from '../index';
import { parseJson } from '../../shared/events';
import { LeaseValue } from '../../shared/lock';
import { LOCKS_BUCKET, TopologyError, openBucket } from '../../shared/nats';

/** How long to collect the services' replies: until none came for `STALL_MS`, at most `MAX_WAIT_MS`. */
const STALL_MS = 300;
const MAX_WAIT_MS = 1500;

export interface ServiceStatus {
  service: string;
  up: boolean;
  instances: { id: string; version: string; startedAt?: string; holder?: string }[];
}

export interface LockStatus {
  key: 'transform' | 'model';
  held: boolean;
  runId?: string;
  holder?: string;
  stage?: string;
  /** Since the run took the lock (kept through refreshes and hand-overs). */
  ageMs?: number;
  /** Since the holder last refreshed the lease. */
  refreshedMsAgo?: number;
  invalid?: string;
}

const isNoResponders = (err: unknown) => err instanceof errors.NoRespondersError || (err instanceof errors.RequestError && err.isNoResponders());
const isNotFound = (err: unknown) => (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound) || err instanceof TopologyError;

/** The services up, from the NATS services API (`$SRV.INFO`), each with its instances. */
export async function servicesUp(nc: NatsConnection): Promise<ServiceStatus[]> {
  const infos: ServiceInfo[] = [];
  try {
    const replies = await new Svcm(nc).client({ strategy: 'stall', stall: STALL_MS, maxWait: MAX_WAIT_MS }).info();
    for await (const info of replies) infos.push(info);
  } catch (err) {
    if (!isNoResponders(err)) throw err;
  }
  return SERVICE_NAMES.map((service) => {
    const instances = infos
      .filter((i) => i.name === `brain-${service}`)
      .map((i) => ({
        id: i.id,
        version: i.version,
        ...(i.metadata?.startedAt !== undefined ? { startedAt: i.metadata.startedAt } : {}),
        ...(i.metadata?.holder !== undefined ? { holder: i.metadata.holder } : {}),
      }));
    return { service, up: instances.length > 0, instances };
  });
}

/** The run locks: free, or held by a run (its holder, since when, last refreshed). */
export async function locksHeld(nc: NatsConnection, now = Date.now()): Promise<LockStatus[]> {
  const keys = ['transform', 'model'] as const;
  let entries: Awaited<ReturnType<Awaited<ReturnType<typeof openBucket>>['get']>>[];
  try {
    const kv = await openBucket(nc, LOCKS_BUCKET);
    entries = await Promise.all(keys.map((key) => kv.get(key)));
  } catch (err) {
    // No bucket yet: no service has ever started, so no lock is held.
    if (!isNotFound(err)) throw err;
    entries = keys.map(() => null);
  }
  return keys.map((key, i): LockStatus => {
    const entry = entries[i];
    if (entry === null || entry === undefined || entry.operation !== 'PUT') return { key, held: false };
    const refreshedMsAgo = Math.max(0, now - entry.created.getTime());
    const value = parseJson(LeaseValue, entry.string());
    if (!value.success) return { key, held: true, refreshedMsAgo, invalid: 'unreadable lease value' };
    const acquired = Date.parse(value.data.acquiredAt);
    return {
      key,
      held: true,
      runId: value.data.runId,
      holder: value.data.holder,
      stage: value.data.stage,
      ...(Number.isFinite(acquired) ? { ageMs: Math.max(0, now - acquired) } : {}),
      refreshedMsAgo,
    };
  });
}
