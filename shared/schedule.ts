import type { NatsConnection } from '@nats-io/transport-node';
import { JetStreamApiCodes, JetStreamApiError, jetstreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { Cron } from 'croner';
import { z } from 'zod';
import { parseJson } from './events';
import { SCHEDULE_BUCKET } from './nats';

/**
 * The schedule's durable state: KV bucket `schedule`, key `paused`. No max age (a pause lasts until someone
 * resumes), a short history (who paused and resumed, last first). Every scheduler replica reads it at each tick,
 * so a pause is obeyed by all of them and survives restarts of every service.
 */
export { SCHEDULE_BUCKET };
export const PAUSE_KEY = 'paused';

export const PauseState = z.strictObject({
  paused: z.boolean(),
  /** The NATS user that changed it (never a password). */
  by: z.string().max(64).optional(),
  at: z.iso.datetime({ offset: true }),
});
export type PauseState = z.infer<typeof PauseState>;

export interface ScheduleControl {
  /** The current state; `{paused: false}` when nobody ever paused. An unreadable value counts as paused (fail safe). */
  read(): Promise<PauseState & { revision: number }>;
  set(paused: boolean, by?: string): Promise<PauseState>;
}

const encoder = new TextEncoder();

export function scheduleControl(kv: KV): ScheduleControl {
  return {
    async read() {
      const entry = await kv.get(PAUSE_KEY);
      if (entry === null || entry.operation !== 'PUT') return { paused: false, at: new Date(0).toISOString(), revision: 0 };
      const parsed = parseJson(PauseState, entry.string());
      if (!parsed.success) return { paused: true, at: entry.created.toISOString(), revision: entry.revision };
      return { ...parsed.data, revision: entry.revision };
    },
    async set(paused, by) {
      const state: PauseState = { paused, at: new Date().toISOString(), ...(by !== undefined ? { by } : {}) };
      await kv.put(PAUSE_KEY, encoder.encode(JSON.stringify(state)));
      return state;
    },
  };
}

/** The schedule bucket, or null when it does not exist yet (`brain setup` creates it). Nothing is created. */
export async function openSchedule(nc: NatsConnection): Promise<ScheduleControl | null> {
  const jsm = await jetstreamManager(nc);
  let direct: boolean;
  try {
    direct = (await jsm.streams.info(`KV_${SCHEDULE_BUCKET}`)).config.allow_direct === true;
  } catch (err) {
    if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound) return null;
    throw err;
  }
  return scheduleControl(await new Kvm(nc).open(SCHEDULE_BUCKET, { allow_direct: direct }));
}

/** The schedule as people see it (`GET /api/schedule`, `brain status`): paused or not, the cron, the next tick, who changed it. */
export interface ScheduleView {
  paused: boolean;
  /** TRANSFORM_SCHEDULE (cron, UTC). */
  schedule: string;
  /** The next tick (ISO, UTC) a scheduler would publish; null while paused or when the pattern has no further tick. */
  nextRun: string | null;
  changedBy?: string;
  changedAt?: string;
}

/** The view of a pause state under a cron pattern (UTC), the next tick counted from `now`. */
export function scheduleView(state: { paused: boolean; by?: string; at?: string }, pattern: string, now = new Date()): ScheduleView {
  let nextRun: string | null = null;
  if (!state.paused) {
    const cron = new Cron(pattern, { timezone: 'UTC', paused: true });
    nextRun = cron.nextRun(now)?.toISOString() ?? null;
    cron.stop();
  }
  return {
    paused: state.paused,
    schedule: pattern,
    nextRun,
    ...(state.by !== undefined ? { changedBy: state.by } : {}),
    // A schedule nobody ever paused reads as the epoch: no change to show.
    ...(state.at !== undefined && state.at !== new Date(0).toISOString() ? { changedAt: state.at } : {}),
  };
}
