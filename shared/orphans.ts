import { LABELS, type ContainerRunner } from './docker';
import { describeError } from './errors';
import type { Stage } from './events';
import type { LockKey, Locks } from './lock';
import type { Logger } from './logger';

export interface OrphanSweeperDeps {
  runner: ContainerRunner;
  locks: Locks;
  /** The stages whose containers the service starts, and the lock their run holds while a container may exist. */
  stages: readonly Stage[];
  lock: LockKey;
  /**
   * How long a container must go unclaimed before it is removed. Longer than a redelivery takes
   * (the ack wait), so a restarted service adopts its containers before they count as orphans.
   */
  graceMs: number;
  logger: Logger;
}

export interface OrphanSweeper {
  /** One pass; returns the names of the containers removed. */
  sweep(): Promise<string[]>;
  start(): void;
  /** Stops the timer and waits for a pass in progress. */
  stop(): Promise<void>;
}

/**
 * Finds labelled containers of this service's stages whose run no longer holds its lock (left by a
 * crash, or by a stage whose service died) and removes them once they have stayed unclaimed for the grace period.
 * With a stage on the Swarm backend the runner lists (and removes) its job services too (`stageRunners`).
 */
export function createOrphanSweeper(deps: OrphanSweeperDeps): OrphanSweeper {
  const unclaimedSince = new Map<string, number>();
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<string[]> | undefined;

  async function pass(): Promise<string[]> {
    const removed: string[] = [];
    const seen = new Set<string>();
    const holder = (await deps.locks.read(deps.lock))?.value?.runId;
    for (const stage of deps.stages) {
      for (const container of await deps.runner.list({ stage })) {
        const runId = container.labels[LABELS.runId];
        seen.add(container.id);
        if (runId !== undefined && holder === runId) {
          unclaimedSince.delete(container.id);
          continue;
        }
        const since = unclaimedSince.get(container.id) ?? Date.now();
        unclaimedSince.set(container.id, since);
        if (Date.now() - since < deps.graceMs) continue;
        deps.logger.warn({ container: container.name, stage, runId, state: container.state }, 'removing orphaned container: its run no longer holds its lock');
        await deps.runner.remove(container.id);
        unclaimedSince.delete(container.id);
        removed.push(container.name);
      }
    }
    for (const id of unclaimedSince.keys()) if (!seen.has(id)) unclaimedSince.delete(id);
    return removed;
  }

  function sweep(): Promise<string[]> {
    running ??= pass().finally(() => {
      running = undefined;
    });
    return running;
  }

  return {
    sweep,
    start() {
      const tick = () => sweep().catch((err: unknown) => deps.logger.warn({ err: describeError(err) }, 'orphan sweep failed; will retry'));
      void tick();
      timer = setInterval(() => void tick(), Math.max(500, Math.floor(deps.graceMs / 2)));
    },
    async stop() {
      if (timer !== undefined) clearInterval(timer);
      timer = undefined;
      await running?.catch(() => undefined);
    },
  };
}
