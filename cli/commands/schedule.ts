import type { NatsConnection } from '@nats-io/transport-node';
import { environmentWithDotenv, parseConfig } from '../../shared/config';
import { ConfigError } from '../../shared/errors';
import { isPermissionDenied } from '../../shared/nats';
import { openSchedule, scheduleView, type ScheduleView } from '../../shared/schedule';
import { CliError, EXIT, loadClientConfig, withClient } from '../client';
import { formatDuration } from '../view';

/**
 * TRANSFORM_SCHEDULE as the scheduler reads it (the environment, then `.env`; the default hourly), to show the next
 * tick. The pause itself is the deployment's (KV bucket `schedule`); the pattern is the one configured here.
 * @throws CliError (exit 2) when the pattern is not a cron expression.
 */
export function clientSchedule(env: NodeJS.ProcessEnv): string {
  const merged = environmentWithDotenv(env);
  try {
    return parseConfig({ TRANSFORM_SCHEDULE: merged.TRANSFORM_SCHEDULE }, []).transformSchedule;
  } catch (err) {
    if (err instanceof ConfigError) throw new CliError(`invalid configuration: ${err.problems.join('; ')}`, EXIT.config);
    throw err;
  }
}

/** The schedule's pause state: `{paused: false}` before anyone paused it, and when its bucket does not exist yet. */
export async function readPause(nc: NatsConnection): Promise<{ paused: boolean; by?: string; at?: string }> {
  const control = await openSchedule(nc);
  return control !== null ? await control.read() : { paused: false };
}

/** One line: `paused by operator 3m ago` or `next run 2026-01-01 13:00:00 UTC (in 12m)`. */
export function describeSchedule(view: ScheduleView, now = Date.now()): string {
  if (view.paused) {
    const by = view.changedBy !== undefined ? ` by ${view.changedBy}` : '';
    const when = view.changedAt !== undefined ? ` ${formatDuration(now - Date.parse(view.changedAt))} ago` : '';
    return `paused${by}${when}: no scheduled run until \`brain resume\` (hand triggers still run)`;
  }
  if (view.nextRun === null) return 'running, but the pattern has no further tick';
  return `next run ${view.nextRun.slice(0, 19).replace('T', ' ')} UTC (in ${formatDuration(Math.max(0, Date.parse(view.nextRun) - now))})`;
}

/**
 * `brain pause` / `brain resume`: sets the durable pause every scheduler replica reads at each tick. Needs a NATS
 * user that may write the schedule's `paused` key (`operator`); any other is refused by NATS, exit 1.
 */
export function run(action: 'pause' | 'resume'): Promise<void> {
  return withClient(async (nc) => {
    const user = loadClientConfig(process.env).user;
    const pattern = clientSchedule(process.env);
    const control = await openSchedule(nc);
    if (control === null) throw new CliError('the schedule bucket does not exist yet: run `brain setup` (or start a service)');
    let state;
    try {
      state = await control.set(action === 'pause', user);
    } catch (err) {
      if (!isPermissionDenied(err)) throw err;
      const who = user !== undefined ? `NATS user "${user}"` : 'this NATS connection';
      throw new CliError(`${who} may not ${action} the schedule: the NATS server refused it (it takes the operator user)`);
    }
    const view = scheduleView(state, pattern);
    process.stdout.write(`schedule ${action}d: ${describeSchedule(view)}\n`);
  });
}
