import { randomBytes } from 'node:crypto';
import { Argument, Command, InvalidArgumentError, Option } from 'commander';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { EventSchemas, RUN_ID_PATTERN, Subjects } from '../../shared/events';
import { EVENT_SUBJECTS } from '../../shared/nats';
import { CliError, EXIT, withClient } from '../client';
import { formatDuration, formatEventLine, painter, parseMessage, runIdOf, useColour, verdictOf, type Verdict } from '../view';

/** `h` (by hand), the UTC second, and random hex: sortable, unique, and within RUN_ID_PATTERN. */
export function newRunId(now = new Date()): string {
  return `h${now.toISOString().slice(0, 19).replace(/[-:]/g, '')}Z-${randomBytes(3).toString('hex')}`;
}

function runIdArg(value: string): string {
  if (!RUN_ID_PATTERN.test(value)) throw new InvalidArgumentError('must be 1-64 characters of A-Z a-z 0-9 _ -');
  return value;
}

function seconds(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('must be a positive number of seconds');
  return n;
}

interface TriggerOptions {
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

export function triggerCommand(): Command {
  return new Command('trigger')
    .description('start a transform run (the whole chain) or a model run by hand')
    .addArgument(new Argument('<what>', 'transform or model').choices(['transform', 'model']))
    .option('--run-id <id>', 'run id (default: generated)', runIdArg)
    .option('--reason <text>', 'why, shown by `brain runs` (default: hand)')
    .option('--wait', 'follow the run to its end; exit 1 when it failed, 3 when it was busy')
    .addOption(new Option('--timeout <s>', 'with --wait, give up after this many seconds (exit 4)').default(3600).argParser(seconds))
    .action((what: 'transform' | 'model', opts: TriggerOptions) =>
      withClient(async (nc) => {
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
      }),
    );
}
