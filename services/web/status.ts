import type { NatsConnection } from '@nats-io/transport-node';
import { SERVICE_NAMES } from '../index';
import { locksHeld, servicesUp, type LockHeld, type ServiceStatus } from '../../shared/status';

/** The page's wait for the services' replies: until none came for 300 ms, at most 1.5 s. */
const DISCOVERY = { stall: 300, maxWait: 1500 };

export interface LockStatus extends LockHeld {
  /** Since the run took the lock (kept through refreshes and hand-overs). */
  ageMs?: number;
}

/** GET /api/status: the services up (the NATS services API) and the run locks held, with their age. */
export async function pipelineStatus(nc: NatsConnection, now = Date.now()): Promise<{ services: ServiceStatus[]; locks: LockStatus[] }> {
  const [services, held] = await Promise.all([servicesUp(nc, SERVICE_NAMES, DISCOVERY), locksHeld(nc, now)]);
  const locks = held.map(({ lock, acquiredAt }): LockStatus => {
    const acquired = acquiredAt !== undefined ? Date.parse(acquiredAt) : Number.NaN;
    return Number.isFinite(acquired) ? { ...lock, ageMs: Math.max(0, now - acquired) } : lock;
  });
  return { services, locks };
}
