import { jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { LogBatch, RUN_ID_PATTERN, Subjects, type LogBatchEvent } from '../../shared/events';
import { EVENTS_STREAM, LOGS_STREAM } from '../../shared/nats';
import { CliError, withClient } from '../client';
import { readStream, streamState, type StoredMessage } from '../history';
import { painter, parseMessage, runIdOf, useColour, verdictOf, type Paint } from '../view';

/** After the run's end, how long stragglers of its log lines are still awaited. */
const LOG_GRACE_MS = 1000;

function parseBatch(m: StoredMessage): { ok: true; batch: LogBatchEvent } | { ok: false; error: string } {
  try {
    const parsed = LogBatch.safeParse(JSON.parse(Buffer.from(m.data).toString('utf8')));
    return parsed.success ? { ok: true, batch: parsed.data } : { ok: false, error: parsed.error.issues[0]?.message ?? 'invalid' };
  } catch {
    return { ok: false, error: 'body is not JSON' };
  }
}

function printer(paint: Paint): (m: StoredMessage) => void {
  return (m) => {
    const parsed = parseBatch(m);
    if (!parsed.ok) {
      process.stdout.write(`${paint('red', `(invalid log batch on ${m.subject}, seq ${m.seq}: ${parsed.error})`)}\n`);
      return;
    }
    const { stage, stream, lines } = parsed.batch;
    const prefix = stream === 'stderr' ? paint('red', `${stage}!`.padEnd(15)) : paint('cyan', stage.padEnd(15));
    for (const line of lines) process.stdout.write(`${prefix}${line}\n`);
  };
}

/**
 * Resolves when the run has ended, long ago or from now on: each ordered consumer delivers the stored
 * events of one *.done subject, then new ones. (One consumer per subject: nats-server 2.9 has no multi-filter.)
 */
async function runEnded(nc: NatsConnection, runId: string): Promise<void> {
  const found = new AbortController();
  await Promise.race(
    [Subjects.transformDone, Subjects.loadDone, Subjects.modelDone].map((filter) =>
      readStream(nc, EVENTS_STREAM, { filter, follow: found.signal }, (m) => {
        const event = parseMessage(m.subject, m.data);
        return runIdOf(event) === runId && verdictOf(event) !== undefined;
      }),
    ),
  );
  found.abort();
}

/** `brain logs`: a run's stored container lines; with `follow`, new ones until the run ends. */
export function run(runId: string, opts: { follow?: boolean }): Promise<void> {
  return withClient(async (nc) => {
    if (!RUN_ID_PATTERN.test(runId)) throw new CliError(`"${runId}" is not a run id (1-64 characters of A-Z a-z 0-9 _ -)`);
    const filter = `logs.*.${runId}`;
    const print = printer(painter(useColour(process.stdout)));
    const state = await streamState(await jetstreamManager(nc), LOGS_STREAM, filter);
    const stored = Object.values(state.subjects ?? {}).reduce((a, b) => a + b, 0);
    if (opts.follow !== true) {
      if (stored === 0) throw new CliError(`no log lines stored for run ${runId}`);
      await readStream(nc, LOGS_STREAM, { filter, untilSeq: state.last_seq }, print);
      return;
    }
    const stop = new AbortController();
    const following = readStream(nc, LOGS_STREAM, { filter, follow: stop.signal }, print);
    await runEnded(nc, runId);
    await new Promise((r) => setTimeout(r, LOG_GRACE_MS));
    stop.abort();
    await following;
  });
}
