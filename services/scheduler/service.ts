import { Cron } from 'croner';
import { describeError } from '../../shared/errors';
import { Subjects } from '../../shared/events';
import type { ScheduleControl } from '../../shared/schedule';
import type { Service, ServiceDeps } from '../../shared/service';

/** Run id of a scheduled run: the planned tick's UTC time to the second, so every scheduler replica derives the same one. */
export const scheduledRunId = (tick: Date) => `s${tick.toISOString().slice(0, 19).replace(/[-:]/g, '')}Z`;

/**
 * How late a timer may fire (a stalled process, a blocked event loop, a stopped VM) and still publish its tick.
 * A later one is skipped, never caught up: well inside the events stream's 2-minute duplicate window, so a
 * replica that fires late never makes a second run of a tick another replica already published.
 */
export const MAX_LATENESS_MS = 60_000;

/** Longest delay `setTimeout` takes (about 24.8 days); a farther tick is reached by re-arming. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Publishes transform.trigger on the cron schedule (UTC). Missed ticks are not caught up.
 *
 * Croner is used for the pattern alone: each timer is armed for one planned tick, and the run id is derived
 * from that planned tick, not from the moment the timer fired (croner's `currentRun()` is the fire time, so a
 * replica whose timer fired late across a second boundary named a second run). The message id is the run id,
 * so replicas firing the same tick make one run.
 */
export function createScheduler(deps: Pick<ServiceDeps, 'config' | 'bus' | 'logger'> & { schedule?: Pick<ScheduleControl, 'read'> | null }): Service {
  const { config, bus, logger } = deps;
  /** No callback: croner computes the ticks, our own timer fires them. */
  const pattern = new Cron(config.transformSchedule, { timezone: 'UTC' });
  let timer: NodeJS.Timeout | undefined;
  let stopped = true;
  const publishing = new Set<Promise<void>>();

  async function publish(tick: Date, lateMs: number, nextRun: Date | null): Promise<void> {
    const runId = scheduledRunId(tick);
    // The durable pause (KV bucket schedule), read at each tick by every replica. When it cannot be read, the tick
    // is skipped: a pause is never overridden by a NATS fault.
    if (deps.schedule != null) {
      try {
        if ((await deps.schedule.read()).paused) {
          logger.info({ runId, nextRun: nextRun?.toISOString() }, 'scheduled tick skipped: the schedule is paused');
          return;
        }
      } catch (err) {
        logger.error({ runId, err: describeError(err) }, 'scheduled tick skipped: cannot read whether the schedule is paused');
        return;
      }
    }
    try {
      await bus.publish(Subjects.transformTrigger, { runId, reason: 'schedule' }, { msgId: runId });
      logger.info({ runId, tick: tick.toISOString(), lateMs, nextRun: nextRun?.toISOString() }, 'scheduled transform triggered');
    } catch (err) {
      logger.error({ runId, err: describeError(err) }, 'could not publish the scheduled trigger');
    }
  }

  /** Arms the timer for the first tick strictly after `afterMs`. */
  function planAfter(afterMs: number): Date | null {
    const next = pattern.nextRun(new Date(afterMs));
    if (next === null) logger.warn({ schedule: config.transformSchedule }, 'the schedule has no further tick');
    else arm(next);
    return next;
  }

  function arm(tick: Date): void {
    if (stopped) return;
    const wait = Math.min(Math.max(0, tick.getTime() - Date.now()), MAX_TIMER_MS);
    timer = setTimeout(() => fire(tick), wait);
  }

  function fire(tick: Date): void {
    const at = Date.now();
    const planned = tick.getTime();
    // Woke before the tick: the wall clock was set back, or the tick is beyond one timer's reach.
    if (at < planned) return arm(tick);
    const lateMs = at - planned;
    // The next tick after both the planned one and now: ticks passed while this timer was late are not caught up.
    const next = planAfter(Math.max(at, planned));
    if (lateMs > MAX_LATENESS_MS) {
      logger.warn({ runId: scheduledRunId(tick), lateMs, nextRun: next?.toISOString() }, 'scheduled tick skipped: the timer fired too late (no catch-up)');
      return;
    }
    const done: Promise<void> = publish(tick, lateMs, next).finally(() => publishing.delete(done));
    publishing.add(done);
  }

  return {
    name: 'scheduler',
    async start() {
      stopped = false;
      const next = planAfter(Date.now());
      logger.info({ schedule: config.transformSchedule, nextRun: next?.toISOString() }, 'scheduler started');
    },
    /** Stops the timer and waits for a trigger being published. */
    async stop() {
      stopped = true;
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      await Promise.all(publishing);
    },
  };
}
