import { Cron } from 'croner';
import { describeError } from '../../shared/errors';
import { Subjects } from '../../shared/events';
import type { Service, ServiceDeps } from '../../shared/service';

/** Run id of a scheduled run: the tick's UTC time to the second, so every scheduler replica derives the same one. */
export const scheduledRunId = (tick: Date) => `s${tick.toISOString().slice(0, 19).replace(/[-:]/g, '')}Z`;

/**
 * Publishes transform.trigger on the cron schedule (UTC). Missed ticks are not caught up.
 * The message id is the run id, so replicas firing the same tick make one run.
 */
export function createScheduler(deps: Pick<ServiceDeps, 'config' | 'bus' | 'logger'>): Service {
  const { config, bus, logger } = deps;
  let job: Cron | undefined;

  async function tick(at: Date): Promise<void> {
    const runId = scheduledRunId(at);
    try {
      await bus.publish(Subjects.transformTrigger, { runId, reason: 'schedule' }, { msgId: runId });
      logger.info({ runId, nextRun: job?.nextRun()?.toISOString() }, 'scheduled transform triggered');
    } catch (err) {
      logger.error({ runId, err: describeError(err) }, 'could not publish the scheduled trigger');
    }
  }

  return {
    name: 'scheduler',
    async start() {
      job = new Cron(config.transformSchedule, { timezone: 'UTC', protect: false }, (self: Cron) => tick(self.currentRun() ?? new Date()));
      logger.info({ schedule: config.transformSchedule, nextRun: job.nextRun()?.toISOString() }, 'scheduler started');
    },
    async stop() {
      job?.stop();
    },
  };
}
