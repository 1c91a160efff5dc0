import type { StoredMsg } from '@nats-io/jetstream';
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
  /** Stops refreshing without releasing (the next stage of the run takes the lease over); resolves once no write of ours is in flight. */
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
  /** Takes over the lock only if it is held for this run. */
  adopt(key: LockKey, runId: string, stage: string): Promise<Lease | null>;
  read(key: LockKey): Promise<LockInfo | null>;
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
      });
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
      async handOff() {
        active = false;
        clearInterval(timer);
        await writing;
      },
      async release() {
        if (!active) return false;
        active = false;
        clearInterval(timer);
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
  async function write(key: LockKey, holding: Holding, expected: number, resumed: boolean): Promise<Lease | null> {
    try {
      const revision = expected === 0 ? await kv.create(key, encode(holding)) : await kv.update(key, encode(holding), expected);
      return (await stillLatest(key, revision)) ? lease(key, holding, revision, resumed) : null;
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
      const taken = await write(key, holding, current.revision, current.value.stage === stage);
      if (taken !== null) return taken;
    }
    return null;
  }

  async function acquire(key: LockKey, runId: string, stage: string, opts: { trigger?: number } = {}): Promise<Lease | null> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const current = await latest(key);
      if (current === null || current.deleted) {
        const holding = { runId, stage, trigger: opts.trigger, acquiredAt: new Date().toISOString() };
        const won = await write(key, holding, current?.revision ?? 0, false);
        if (won !== null) return won;
        continue; // someone wrote between our read and our write: look again
      }
      // With a trigger, only this stage's own earlier delivery of it may be resumed, never a later stage's lease.
      const sameRun =
        current.value?.runId === runId &&
        (opts.trigger === undefined || (current.value.trigger === opts.trigger && current.value.stage === stage));
      return sameRun ? takeOver(key, runId, stage, current) : null;
    }
    return null;
  }

  const adopt = (key: LockKey, runId: string, stage: string) => takeOver(key, runId, stage);

  return { acquire, adopt, read };
}
