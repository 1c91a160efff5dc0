import type { KV } from '@nats-io/kv';
import { z } from 'zod';
import { describeError } from './errors';
import type { Logger } from './logger';

export type LockKey = 'transform' | 'model';

export const LeaseValue = z.object({
  runId: z.string(),
  holder: z.string(),
  stage: z.string(),
  /** When the run took the lock; kept through refreshes and hand-overs. */
  acquiredAt: z.string(),
  /** Stream sequence of the trigger message that started the run: tells its redelivery from a second trigger. */
  trigger: z.number().optional(),
});
export type LeaseValue = z.infer<typeof LeaseValue>;

export interface LockInfo {
  key: LockKey;
  value: LeaseValue | null;
  revision: number;
  /** When the lease was last written (acquired or refreshed). */
  writtenAt: Date;
}

/**
 * A held lock. The KV revision is the fencing token: every refresh is a compare-and-set on it,
 * so a holder that was frozen past its lease cannot refresh, and cannot release, a lease taken since.
 */
export interface Lease {
  readonly key: LockKey;
  readonly runId: string;
  readonly revision: number;
  /** The lease was taken over from the same stage of the same run: a restarted service resuming its own work. */
  readonly resumed: boolean;
  /** Aborted when the lease was lost (taken over or expired). */
  readonly lost: AbortSignal;
  /** Refreshes now; false when the lease is no longer ours. */
  confirm(): Promise<boolean>;
  /** Stops refreshing without releasing: the next stage of the run takes the lease over. */
  handOff(): void;
  /** Deletes the lease if it is still ours; false when it was not. */
  release(): Promise<boolean>;
}

export interface Locks {
  /**
   * Takes a free lock. A lock already held for the same run is taken over (a redelivered or handed-over run);
   * with `trigger`, only when this stage took it for that same trigger message (a second trigger reusing a run id is refused).
   */
  acquire(key: LockKey, runId: string, stage: string, opts?: { trigger?: number }): Promise<Lease | null>;
  /** Takes over the lock only if it is held for this run. */
  adopt(key: LockKey, runId: string, stage: string): Promise<Lease | null>;
  read(key: LockKey): Promise<LockInfo | null>;
}

export interface LocksDeps {
  kv: KV;
  /** Names this process in lease values, e.g. `transformer@host:pid`. */
  holder: string;
  ttlMs: number;
  logger: Logger;
}

const encoder = new TextEncoder();
const isWrongSequence = (err: unknown) => /wrong last sequence|key exists|10071/i.test(describeError(err));

export function createLocks(deps: LocksDeps): Locks {
  const { kv, holder, ttlMs, logger } = deps;
  const refreshEveryMs = Math.max(100, Math.floor(ttlMs / 3));

  interface Holding {
    runId: string;
    stage: string;
    trigger: number | undefined;
    acquiredAt: string;
  }
  const encode = (h: Holding) =>
    encoder.encode(
      JSON.stringify({ runId: h.runId, holder, stage: h.stage, acquiredAt: h.acquiredAt, ...(h.trigger !== undefined ? { trigger: h.trigger } : {}) } satisfies LeaseValue),
    );

  function lease(key: LockKey, holding: Holding, firstRevision: number, resumed = false): Lease {
    const { runId } = holding;
    let revision = firstRevision;
    let active = true;
    const lost = new AbortController();
    const markLost = (why: string) => {
      if (!active) return;
      active = false;
      clearInterval(timer);
      logger.warn({ lock: key, runId, why }, 'lock lease lost');
      lost.abort(new Error(`lock ${key} lost: ${why}`));
    };
    let writtenAt = Date.now();
    const refresh = async (): Promise<boolean> => {
      if (!active) return false;
      try {
        revision = await kv.update(key, encode(holding), revision);
        writtenAt = Date.now();
        return true;
      } catch (err) {
        if (isWrongSequence(err)) markLost('taken over or expired');
        else logger.warn({ lock: key, runId, err: describeError(err) }, 'lock refresh failed; will retry');
        return false;
      }
    };
    const timer = setInterval(() => void refresh(), refreshEveryMs);
    return {
      key,
      runId,
      get revision() {
        return revision;
      },
      resumed,
      lost: lost.signal,
      // A refresh failing for a passing reason (NATS reconnecting, a JetStream leader election) is retried
      // until the lease would have run out: only then, or on a CAS refusal, is it no longer ours.
      async confirm() {
        while (active) {
          if (await refresh()) return true;
          if (active && Date.now() - writtenAt >= ttlMs) markLost('not refreshed within its lease');
          if (active) await new Promise((r) => setTimeout(r, 250));
        }
        return false;
      },
      handOff() {
        active = false;
        clearInterval(timer);
      },
      async release() {
        if (!active) return false;
        active = false;
        clearInterval(timer);
        try {
          await kv.delete(key, { previousSeq: revision });
          return true;
        } catch (err) {
          logger.warn({ lock: key, runId, err: describeError(err) }, 'lock release refused: no longer ours');
          return false;
        }
      },
    };
  }

  async function read(key: LockKey): Promise<LockInfo | null> {
    const entry = await kv.get(key);
    if (entry === null || entry.operation !== 'PUT') return null;
    let value: LeaseValue | null = null;
    try {
      value = LeaseValue.parse(JSON.parse(entry.string()));
    } catch {
      value = null;
    }
    return { key, value, revision: entry.revision, writtenAt: entry.created };
  }

  async function adopt(key: LockKey, runId: string, stage: string): Promise<Lease | null> {
    const current = await read(key);
    if (current?.value?.runId !== runId) return null;
    const holding = { runId, stage, trigger: current.value.trigger, acquiredAt: current.value.acquiredAt };
    try {
      const revision = await kv.update(key, encode(holding), current.revision);
      return lease(key, holding, revision, current.value.stage === stage);
    } catch (err) {
      if (isWrongSequence(err)) return null;
      throw err;
    }
  }

  async function acquire(key: LockKey, runId: string, stage: string, opts: { trigger?: number } = {}): Promise<Lease | null> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const holding = { runId, stage, trigger: opts.trigger, acquiredAt: new Date().toISOString() };
      try {
        const revision = await kv.create(key, encode(holding));
        return lease(key, holding, revision);
      } catch (err) {
        if (!isWrongSequence(err)) throw err;
      }
      const current = await read(key);
      if (current === null) continue; // released or expired between our create and read: try again
      // With a trigger, only this stage's own earlier delivery of it may be resumed, never a later stage's lease.
      const sameRun =
        current.value?.runId === runId &&
        (opts.trigger === undefined || (current.value.trigger === opts.trigger && current.value.stage === stage));
      return sameRun ? adopt(key, runId, stage) : null;
    }
    return null;
  }

  return { acquire, adopt, read };
}
