import { JetStreamApiCodes, JetStreamApiError, type StoredMsg } from '@nats-io/jetstream';
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
  /** Aborted when the lease was lost (taken over or expired): its holder stops its work. */
  readonly lost: AbortSignal;
  /** Refreshes now; false when the lease is no longer ours. */
  confirm(): Promise<boolean>;
  /**
   * Passes the lease on to the run's next stage without releasing it: it is still refreshed, quietly,
   * until the next stage takes it over (or `handOffMs` passes, or the locks are closed), so a lease
   * in transit does not expire while the next stage's event waits for its service.
   */
  handOff(): Promise<void>;
  /** Deletes the lease if it is still ours; false when it was not. */
  release(): Promise<boolean>;
}

export interface Locks {
  /**
   * Takes a free lock. A lock already held for the same run is taken over (a redelivered or handed-over run);
   * with `trigger`, only when this stage took it for that same trigger message (a second trigger reusing a run id is refused).
   */
  acquire(key: LockKey, runId: string, stage: string, opts?: { trigger?: number }): Promise<Lease | null>;
  /** Takes over the lock only if it is held for this run (a lease handed on by the run's previous stage). */
  takeOver(key: LockKey, runId: string, stage: string): Promise<Lease | null>;
  read(key: LockKey): Promise<LockInfo | null>;
  /** The lock is held, by anyone, for this run. */
  heldBy(key: LockKey, runId: string): Promise<boolean>;
  /** Stops refreshing the leases handed off by this process (on shutdown; they then expire unless taken over). */
  close(): void;
}

export interface LocksDeps {
  kv: KV;
  /** Reads the lock's latest write from the stream leader. */
  leader: { lastMessage(key: LockKey): Promise<StoredMsg | null> };
  /** Names this process in lease values, e.g. `transformer@host:pid`. */
  holder: string;
  ttlMs: number;
  logger: Logger;
  /**
   * For replicated buckets: after winning a compare-and-set, wait this long, then check with the stream
   * leader that our write is still the latest. nats-server before 2.9.21 checked the expected revision
   * before the Raft proposal, so concurrent writers could all succeed (nats-io/nats-server#4320); only the
   * last one written holds the lock. 0 (the default, right for a single server) skips the check.
   */
  settleMs?: number;
  /** How long a handed-off lease is refreshed while waiting for the next stage; default 10 minutes. */
  handOffMs?: number;
}

const encoder = new TextEncoder();
/** The server refused a compare-and-set: the key's revision is not the one we expected. */
const isWrongSequence = (err: unknown) =>
  err instanceof JetStreamApiError && (err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown);

export function createLocks(deps: LocksDeps): Locks {
  const { kv, holder, ttlMs, logger } = deps;
  const refreshEveryMs = Math.max(100, Math.floor(ttlMs / 3));
  const handOffMs = deps.handOffMs ?? 10 * 60_000;
  const requestTimeoutMs = Math.max(500, Math.floor(refreshEveryMs / 2));
  /** Stops the refreshes of handed-off leases. */
  const inTransit = new Set<() => void>();

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

  function lease(key: LockKey, holding: Holding, firstRevision: number): Lease {
    const { runId } = holding;
    let revision = firstRevision;
    let active = true;
    /** Handed off: still refreshed, but a refused refresh means the next stage took it over. */
    let handedOff = false;
    const lost = new AbortController();
    const stopTransit = () => {
      clearInterval(timer);
      clearTimeout(transitEnd);
      inTransit.delete(stopTransit);
    };
    let transitEnd: NodeJS.Timeout | undefined;
    const markLost = (why: string) => {
      if (!active) return;
      active = false;
      stopTransit();
      if (handedOff) return; // taken over by the next stage, as intended
      logger.warn({ lock: key, runId, why }, 'lock lease lost');
      lost.abort(new Error(`lock ${key} lost: ${why}`));
    };
    let writtenAt = Date.now();
    // One write at a time: a refresh racing a confirm or a release would make the other's compare-and-set
    // fail on the revision it just moved, and look like a lost lease.
    let writing: Promise<unknown> = Promise.resolve();
    const serially = <T>(write: () => Promise<T>): Promise<T> => {
      const next = writing.then(write, write);
      writing = next.catch(() => undefined);
      return next;
    };
    const refresh = (): Promise<boolean> =>
      serially(async () => {
        if (!active && !handedOff) return false;
        try {
          // Bounded well under the lease, so one request lost with a NATS node leaves time for the next.
          revision = await kv.update(key, encode(holding), revision, requestTimeoutMs);
          writtenAt = Date.now();
          return true;
        } catch (err) {
          if (!isWrongSequence(err)) {
            logger.warn({ lock: key, runId, err: describeError(err) }, 'lock refresh failed; will retry');
            return false;
          }
          const regained = await regain().catch(() => null);
          if (regained === null) {
            markLost('taken over or expired');
            return false;
          }
          revision = regained;
          writtenAt = Date.now();
          return true;
        }
      });
    /**
     * After a refused refresh: our own last write whose reply was lost (the lock names us at a newer
     * revision), or a lease that lapsed during a NATS outage while nobody took it (the key aged out, no marker),
     * is still ours. Anything else is not: null.
     */
    const regain = async (): Promise<number | null> => {
      if (handedOff) return null;
      const now = await latest(key);
      if (now?.deleted === true) return null; // released by a later holder: it was taken meanwhile
      if (now !== null) {
        const v = now.value;
        return v?.holder === holder && v.runId === runId && v.stage === holding.stage ? now.revision : null;
      }
      const taken = await kv.create(key, encode(holding));
      logger.warn({ lock: key, runId }, 'lease lapsed while NATS was unreachable and nobody took it; taken back');
      return taken;
    };
    const timer = setInterval(() => void refresh(), refreshEveryMs);
    return {
      key,
      runId,
      get revision() {
        return revision;
      },
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
      async handOff() {
        if (!active) return;
        handedOff = true;
        inTransit.add(stopTransit);
        transitEnd = setTimeout(stopTransit, handOffMs);
        transitEnd.unref();
        await writing;
      },
      async release() {
        if (!active || handedOff) return false;
        active = false;
        stopTransit();
        return serially(async () => {
          try {
            await kv.delete(key, { previousSeq: revision });
            return true;
          } catch (err) {
            logger.warn({ lock: key, runId, err: describeError(err) }, 'lock release refused: no longer ours');
            return false;
          }
        });
      },
    };
  }

  /** The lock's latest write, as the stream leader has it: a lagging replica's direct get could be stale. */
  async function latest(key: LockKey): Promise<(LockInfo & { deleted: boolean }) | null> {
    const msg = await deps.leader.lastMessage(key);
    if (msg === null) return null;
    const operation = msg.header?.get('KV-Operation') || 'PUT'; // a PUT carries no operation header
    let value: LeaseValue | null = null;
    if (operation === 'PUT') {
      try {
        value = LeaseValue.parse(JSON.parse(new TextDecoder().decode(msg.data)));
      } catch {
        value = null; // held by something we cannot read: never ours
      }
    }
    return { key, value, revision: msg.seq, writtenAt: msg.time, deleted: operation !== 'PUT' };
  }

  /** The write at `revision` is still the lock's latest after the settle time (see `LocksDeps.settleMs`). */
  async function stillLatest(key: LockKey, revision: number): Promise<boolean> {
    if ((deps.settleMs ?? 0) <= 0) return true;
    await new Promise((resolve) => setTimeout(resolve, deps.settleMs));
    const now = await latest(key);
    if (now?.revision === revision) return true;
    logger.warn({ lock: key, revision, latest: now?.revision }, 'a concurrent write won the lock after ours was accepted');
    return false;
  }

  async function read(key: LockKey): Promise<LockInfo | null> {
    const current = await latest(key);
    return current === null || current.deleted ? null : { key, value: current.value, revision: current.revision, writtenAt: current.writtenAt };
  }

  /** Compare-and-set on the revision seen (0: the key has never been written, or aged out). */
  async function write(key: LockKey, holding: Holding, expected: number): Promise<Lease | null> {
    try {
      const revision = expected === 0 ? await kv.create(key, encode(holding)) : await kv.update(key, encode(holding), expected);
      return (await stillLatest(key, revision)) ? lease(key, holding, revision) : null;
    } catch (err) {
      if (isWrongSequence(err)) return null;
      throw err;
    }
  }

  /** `seen`: the lock as the caller has just read it, which saves the first read. */
  async function takeOver(key: LockKey, runId: string, stage: string, seen?: LockInfo): Promise<Lease | null> {
    // A few tries: the previous holder's last refresh may land between our read and our write.
    for (let attempt = 0; attempt < 3; attempt++) {
      const current = attempt === 0 && seen !== undefined ? seen : await read(key);
      if (current?.value?.runId !== runId) return null;
      const holding = { runId, stage, trigger: current.value.trigger, acquiredAt: current.value.acquiredAt };
      const taken = await write(key, holding, current.revision);
      if (taken !== null) return taken;
    }
    return null;
  }

  async function acquire(key: LockKey, runId: string, stage: string, opts: { trigger?: number } = {}): Promise<Lease | null> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const current = await latest(key);
      if (current === null || current.deleted) {
        const holding = { runId, stage, trigger: opts.trigger, acquiredAt: new Date().toISOString() };
        const won = await write(key, holding, current?.revision ?? 0);
        if (won !== null) return won;
        continue; // someone wrote between our read and our write: look again
      }
      // With a trigger, only this stage's own earlier delivery of it may take it over, never a later stage's lease.
      const sameRun = current.value?.runId === runId && (opts.trigger === undefined || (current.value.trigger === opts.trigger && current.value.stage === stage));
      return sameRun ? takeOver(key, runId, stage, current) : null;
    }
    return null;
  }

  const heldBy = async (key: LockKey, runId: string) => (await read(key))?.value?.runId === runId;
  const close = () => {
    for (const stop of [...inTransit]) stop();
  };

  return { acquire, takeOver: (key, runId, stage) => takeOver(key, runId, stage), read, heldBy, close };
}

/** Releases each lease held (null: not held), at once. */
export const releaseAll = (...leases: (Lease | null)[]): Promise<unknown> => Promise.all(leases.filter((l) => l !== null).map((l) => l.release()));
/** Hands each lease held on to the run's next stage (null: not held), at once. */
export const handOffAll = (...leases: (Lease | null)[]): Promise<unknown> => Promise.all(leases.filter((l) => l !== null).map((l) => l.handOff()));
