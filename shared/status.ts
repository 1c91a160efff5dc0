import type { NatsConnection } from '@nats-io/transport-node';
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import { errors } from '@nats-io/nats-core';
import { Kvm } from '@nats-io/kv';
import { Svcm, type ServiceInfo } from '@nats-io/services';
import { parseJson } from './events';
import { LeaseValue } from './lock';
import { LOCKS_BUCKET } from './nats';

/** The pipeline's state as `brain status` and the web's GET /api/status show it: services up, run locks held. */

/** The stream (or the bucket's stream) does not exist yet: nothing was ever set up or started. */
export const isStreamNotFound = (err: unknown) => err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound;

/** No service subscribed to the services API: none is up. */
export const isNoResponders = (err: unknown) => err instanceof errors.NoRespondersError || (err instanceof errors.RequestError && err.isNoResponders());

export interface ServiceStatus {
  service: string;
  up: boolean;
  instances: { id: string; version: string; startedAt?: string; holder?: string }[];
}

/**
 * Each of `names` (as registered, `brain-<name>`) with its instances, from the NATS services API: replies are
 * collected for `maxWait` ms, or, with `stall`, until none came for `stall` ms.
 */
export async function servicesUp(nc: NatsConnection, names: readonly string[], opts: { maxWait: number; stall?: number }): Promise<ServiceStatus[]> {
  const infos: ServiceInfo[] = [];
  try {
    const strategy = opts.stall !== undefined ? { strategy: 'stall' as const, stall: opts.stall } : { strategy: 'timer' as const };
    const replies = await new Svcm(nc).client({ ...strategy, maxWait: opts.maxWait }).info();
    for await (const info of replies) infos.push(info);
  } catch (err) {
    if (!isNoResponders(err)) throw err;
  }
  return names.map((service) => {
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

export const RUN_LOCKS = ['transform', 'model'] as const;

export interface LockHeld {
  key: (typeof RUN_LOCKS)[number];
  held: boolean;
  runId?: string;
  holder?: string;
  stage?: string;
  /** Since the holder last refreshed the lease. */
  refreshedMsAgo?: number;
  invalid?: string;
}

/** The run locks (KV bucket `locks`): free, or held by a run; `acquiredAt` is when the run took it. */
export async function locksHeld(nc: NatsConnection, now = Date.now()): Promise<{ lock: LockHeld; acquiredAt?: string }[]> {
  const kv = await new Kvm(nc).open(LOCKS_BUCKET);
  // No bucket yet: no service has ever started, so no lock is held.
  const entries = await Promise.all(RUN_LOCKS.map((key) => kv.get(key))).catch((err: unknown) => {
    if (isStreamNotFound(err)) return RUN_LOCKS.map(() => null);
    throw err;
  });
  return RUN_LOCKS.map((key, i) => {
    const entry = entries[i];
    if (entry === null || entry === undefined || entry.operation !== 'PUT') return { lock: { key, held: false } };
    const refreshedMsAgo = now - entry.created.getTime();
    const value = parseJson(LeaseValue, entry.string());
    if (!value.success) return { lock: { key, held: true, refreshedMsAgo, invalid: `unreadable lease value: ${entry.string().slice(0, 80)}` } };
    return { lock: { key, held: true, runId: value.data.runId, holder: value.data.holder, stage: value.data.stage, refreshedMsAgo }, acquiredAt: value.data.acquiredAt };
  });
}
