import { randomBytes } from 'node:crypto';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { EventSchemas, Subjects } from '../../shared/events';
import { EVENT_SUBJECTS } from '../../shared/nats';
import { CliError, EXIT, withClient } from '../client';
import { formatDuration, formatEventLine, painter, parseMessage, runIdOf, useColour, verdictOf, type Verdict } from '../view';

/** `h` (by hand), the UTC second, and random hex: sortable, unique, and within RUN_ID_PATTERN. */
export function newRunId(now = new Date()): string {
  return `h${now.toISOString().slice(0, 19).replace(/[-:]/g, '')}Z-${randomBytes(3).toString('hex')}`;
}

export interface TriggerOptions {
  runId?: string;
  reason?: string;
  wait?: boolean;
  timeout: number;
}

/**
 * Follows a run's events until its verdict. The subscription is made before the trigger is published,
 * so no event of the run can be missed; stage events go to stderr when it is a TTY.
 */
async function follow(nc: NatsConnection, runId: string, timeoutMs: number, publish: () => Promise<void>): Promise<Verdict> {
  const progress = process.stderr.isTTY === true;
  const paint = painter(useColour(process.stderr));
  const started = Date.now();
  let settle: (v: Verdict) => void = () => undefined;
  const verdict = new Promise<Verdict>((resolve) => (settle = resolve));
  const subs = EVENT_SUBJECTS.map((subject) =>
    nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err !== null) return;
        const m = parseMessage(msg.subject, msg.data);
        if (runIdOf(m) !== runId) return;
        if (progress) process.stderr.write(`${paint('dim', `+${formatDuration(Date.now() - started).padStart(6)}`)}  ${formatEventLine(m, new Date(), paint)}\n`);
        const v = verdictOf(m);
        if (v !== undefined) settle(v);
      },
    }),
  );
  let timer: NodeJS.Timeout | undefined;
  try {
    await nc.flush();
    await publish();
    return await Promise.race([
      verdict,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new CliError(`run ${runId} had not ended after ${timeoutMs / 1000} s`, EXIT.timeout)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
    for (const sub of subs) sub.unsubscribe();
  }
}

/** `brain trigger`: publishes the trigger and prints the run id; with `wait`, follows the run to its verdict. */
export function run(what: 'transform' | 'model', opts: TriggerOptions): Promise<void> {
  return withClient(async (nc) => {
    if (opts.reason !== undefined && opts.reason.length > 200) throw new CliError('--reason must be at most 200 characters');
    const runId = opts.runId ?? newRunId();
    const subject = what === 'transform' ? Subjects.transformTrigger : Subjects.modelTrigger;
    const body = EventSchemas[subject].parse({ v: 1, runId, at: new Date().toISOString(), reason: opts.reason ?? 'hand' });
    const publish = async () => {
      await jetstream(nc).publish(subject, JSON.stringify(body));
      process.stdout.write(`${runId}\n`);
    };
    if (opts.wait !== true) return publish();
    const v = await follow(nc, runId, opts.timeout * 1000, publish);
    if (v.status === 'ok') {
      process.stdout.write(`run ${runId} ended: ${v.stage} ${v.result}\n`);
      return;
    }
    const why = v.error !== undefined ? `: ${v.error}` : '';
    throw new CliError(`run ${runId} ${v.status === 'busy' ? 'was busy' : 'failed'} at ${v.stage}${why}`, v.status === 'busy' ? EXIT.busy : 1);
  });
}
