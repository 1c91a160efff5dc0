import type { NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { SERVICE_NAMES } from '../../services/index';
import { Subjects } from '../../shared/events';
import { EVENTS_STREAM } from '../../shared/nats';
import { scheduleView, type ScheduleView } from '../../shared/schedule';
import { isStreamNotFound as isNotFound, locksHeld, servicesUp, type LockHeld, type ServiceStatus } from '../../shared/status';
import { withClient } from '../client';
import { recentRuns } from '../history';
import { formatDuration, paintOutcome, painter, parseMessage, useColour } from '../view';
import { clientSchedule, describeSchedule, readPause } from './schedule';

/** How long to collect replies from the services API. */
const DISCOVERY_WAIT_MS = 1500;

interface LockStatus extends LockHeld {
  /** Since the run started (from the history), when it is known. */
  heldForMs?: number;
}

type StageName = 'transform' | 'load' | 'model';
/** The last *.done event of a stage; `invalid` when it did not validate. */
type LastRun =
  { stage: StageName; runId: string; at: string; outcome: string; durationMs: number; error?: string } | { stage: StageName; at: string; invalid: string } | { stage: StageName };

const services = (nc: NatsConnection): Promise<ServiceStatus[]> => servicesUp(nc, SERVICE_NAMES, { maxWait: DISCOVERY_WAIT_MS });

async function locks(nc: NatsConnection): Promise<LockStatus[]> {
  const held: LockStatus[] = (await locksHeld(nc)).map((l) => l.lock);
  if (held.some((l) => l.runId !== undefined)) {
    const { runs } = await recentRuns(nc, 20);
    for (const lock of held) {
      const run = runs.find((r) => r.runId === lock.runId);
      if (run !== undefined) lock.heldForMs = Date.now() - Date.parse(run.startedAt);
    }
  }
  return held;
}

async function lastRuns(nc: NatsConnection): Promise<LastRun[]> {
  const jsm = await jetstreamManager(nc);
  const stages = [
    ['transform', Subjects.transformDone],
    ['load', Subjects.loadDone],
    ['model', Subjects.modelDone],
  ] as const;
  return Promise.all(
    stages.map(async ([stage, subject]): Promise<LastRun> => {
      const stored = await jsm.streams.getMessage(EVENTS_STREAM, { last_by_subj: subject }).catch((err: unknown) => {
        if (isNotFound(err)) return null;
        throw err;
      });
      if (stored === null) return { stage };
      const at = stored.time.toISOString();
      const m = parseMessage(stored.subject, stored.data);
      if (m.kind === 'invalid') return { stage, at, invalid: m.error };
      if (m.kind !== 'event' || !('outcome' in m.event)) return { stage, at, invalid: `unexpected ${m.subject} event` };
      const { runId, outcome, durationMs, error } = m.event;
      return { stage, runId, at, outcome, durationMs, ...(error !== undefined ? { error } : {}) };
    }),
  );
}

function render(status: { services: ServiceStatus[]; locks: LockStatus[]; schedule: ScheduleView; lastRuns: LastRun[] }, colour: boolean): string {
  const paint = painter(colour);
  const out = ['services'];
  for (const s of status.services) {
    const state = s.up ? paint('green', 'up') : paint('red', 'down');
    const detail = s.instances.map((i) => {
      const uptime = i.startedAt !== undefined ? ` up ${formatDuration(Date.now() - Date.parse(i.startedAt))}` : '';
      return `${i.holder ?? i.id}${uptime}`;
    });
    out.push(`  ${s.service.padEnd(12)} ${state}${' '.repeat(s.up ? 4 : 2)} ${detail.join(', ')}`.trimEnd());
  }
  out.push('locks');
  for (const l of status.locks) {
    if (!l.held) out.push(`  ${l.key.padEnd(12)} ${paint('dim', 'free')}`);
    else if (l.invalid !== undefined) out.push(`  ${l.key.padEnd(12)} ${paint('red', 'held')}   ${l.invalid}`);
    else {
      const age = l.heldForMs !== undefined ? `for ${formatDuration(l.heldForMs)}, ` : '';
      const refreshed = l.refreshedMsAgo !== undefined ? `${age}refreshed ${formatDuration(l.refreshedMsAgo)} ago` : age;
      out.push(`  ${l.key.padEnd(12)} ${paint('yellow', 'held')}   run ${l.runId} (${l.stage}) by ${l.holder}, ${refreshed}`);
    }
  }
  out.push('schedule');
  const line = describeSchedule(status.schedule);
  out.push(`  ${'transform'.padEnd(12)} ${status.schedule.paused ? paint('yellow', line) : line}  [${status.schedule.schedule}, UTC]`);
  out.push('last runs');
  for (const r of status.lastRuns) {
    const head = `  ${r.stage.padEnd(12)} `;
    if (!('at' in r)) out.push(`${head}${paint('dim', 'none yet')}`);
    else if ('invalid' in r) out.push(`${head}${paint('red', 'INVALID')} event (${r.invalid})`);
    else {
      const when = `${r.at.slice(0, 19).replace('T', ' ')} UTC (${formatDuration(Date.now() - Date.parse(r.at))} ago)`;
      const error = r.error !== undefined ? `  ${paint('red', r.error)}` : '';
      out.push(`${head}${r.runId}  ${paintOutcome(paint, r.outcome)} in ${formatDuration(r.durationMs)}, ended ${when}${error}`);
    }
  }
  return out.join('\n');
}

/** `brain status`: services up, locks held, the schedule (paused or its next run) and each stage's last run. */
export function run(opts: { json?: boolean }): Promise<void> {
  return withClient(async (nc) => {
    const pattern = clientSchedule(process.env);
    const [svc, held, pause, last] = await Promise.all([services(nc), locks(nc), readPause(nc), lastRuns(nc)]);
    // The next tick counted from now, after the services' discovery wait.
    const schedule = scheduleView(pause, pattern);
    if (opts.json === true) {
      process.stdout.write(`${JSON.stringify({ services: svc, locks: held, schedule, lastRuns: last })}\n`);
      return;
    }
    process.stdout.write(`${render({ services: svc, locks: held, schedule, lastRuns: last }, useColour(process.stdout))}\n`);
  });
}
