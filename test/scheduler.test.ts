import t from 'tap';
import { jetstream } from '@nats-io/jetstream';
import { EVENTS_STREAM } from '../shared/nats';
import { loadConfig, runServices } from '../services/composition-root';
import { scheduledRunId } from '../services/scheduler/service';
import { Pipeline } from '../kit/pipeline';
import { spawnService, type ServiceProcess } from '../kit/service-process';
import { Writable } from 'node:stream';

// The subtests share nothing (each has its own nats-server and schedulers): run them at once, their waits for ticks overlapping.
t.jobs = 3;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sleepUntil = (ms: number) => sleep(Math.max(0, ms - Date.now()));

/** A six-field croner pattern that matches one instant a year: the given time's UTC second, minute, hour, day and month. */
const utcInstant = (d: Date) => `${d.getUTCSeconds()} ${d.getUTCMinutes()} ${d.getUTCHours()} ${d.getUTCDate()} ${d.getUTCMonth() + 1} *`;

/** The tick a scheduled run id names (`sYYYYMMDDTHHmmssZ`), in ms. */
function tickOf(runId: string): number {
  const m = /^s(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(runId);
  if (m === null) throw new Error(`not a scheduled run id: ${runId}`);
  const [, y, mo, d, h, mi, s] = m.map(Number) as number[];
  return Date.UTC(y ?? 0, (mo ?? 1) - 1, d, h, mi, s);
}

/** The transform.trigger events the stream stored (after its duplicate window dropped repeats). */
async function storedTriggers(p: Pipeline): Promise<{ runId: string; reason: string }[]> {
  const consumer = await jetstream(p.client).consumers.get(EVENTS_STREAM);
  const stored: { runId: string; reason: string }[] = [];
  for await (const m of await consumer.fetch({ max_messages: 1000, expires: 1500 })) if (m.subject === 'transform.trigger') stored.push(m.json());
  return stored;
}

/** transform.trigger messages as published (a core subscriber sees every replica's publish, duplicates included). */
const published = (p: Pipeline) => p.events.filter((e) => e.subject === 'transform.trigger');

async function until(what: string, cond: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

/** SIGTERM, then SIGKILL if the process has not exited within 5 s. */
async function stopProcess(proc: ServiceProcess): Promise<number | NodeJS.Signals> {
  proc.signal('SIGCONT');
  proc.signal('SIGTERM');
  const timer = setTimeout(() => proc.signal('SIGKILL'), 5000);
  const code = await proc.exited;
  clearTimeout(timer);
  return code;
}

t.test('the scheduler triggers on its cron (UTC); two replicas make one run per tick', async (t) => {
  const env = { TRANSFORM_SCHEDULE: '* * * * * *' }; // every second (croner's six-field form)
  const p = await Pipeline.start({ env, services: ['scheduler'] });
  t.teardown(() => p.close());
  const replica = await runServices(['scheduler'], loadConfig({ ...p.env }, ['scheduler']), { logDestination: new Writable({ write: (_c, _e, cb) => cb() }) });
  t.teardown(() => replica.stop());
  await sleep(3500);
  await replica.stop();
  await p.stopServices();
  const stored = await storedTriggers(p);
  t.ok(stored.length >= 2 && stored.length <= 5, `${stored.length} ticks in 3.5 s`);
  t.same(new Set(stored.map((s) => s.runId)).size, stored.length, 'each tick stored once although two replicas published it');
  t.ok(
    stored.every((s) => /^s\d{8}T\d{6}Z$/.test(s.runId) && s.reason === 'schedule'),
    'run ids name the tick',
  );
});

t.test('a replica whose timer fires 1.2 s late (its process stopped across the tick) publishes the planned tick: one run; the schedule is UTC in a New York process', async (t) => {
  // One instant, given in UTC fields: read in New York time it would be 4 or 5 hours away.
  const tick = new Date(Math.ceil(Date.now() / 1000) * 1000 + 8000);
  const p = await Pipeline.start({ env: { TRANSFORM_SCHEDULE: utcInstant(tick) }, services: ['scheduler'] });
  t.teardown(() => p.close());
  const late = spawnService(['service', 'scheduler'], { ...p.env, TZ: 'America/New_York' });
  t.teardown(() => stopProcess(late));
  const started = JSON.parse(await late.waitForLog(/scheduler started/)) as { nextRun?: string };
  t.equal(started.nextRun, tick.toISOString(), 'the replica in America/New_York plans the UTC instant');
  t.ok(tick.getTime() - Date.now() > 600, 'both replicas are up before the tick');

  // Frozen from 400 ms before the tick to 1.2 s after it: its timer fires late, across a second boundary.
  await sleepUntil(tick.getTime() - 400);
  late.signal('SIGSTOP');
  await sleepUntil(tick.getTime() + 1200);
  late.signal('SIGCONT');
  const fired = JSON.parse(await late.waitForLog(/scheduled transform triggered/, 10_000)) as { runId: string; lateMs: number };
  t.ok(fired.lateMs >= 1000, `the late replica fired ${fired.lateMs} ms after the tick`);
  t.equal(fired.runId, scheduledRunId(tick), 'and named the planned tick, not the moment it fired');
  await until('both replicas’ publishes', () => published(p).length >= 2, 5000);
  t.equal(await stopProcess(late), 0, 'the late replica stops cleanly');
  await p.stopServices();

  t.same(
    published(p).map((e) => e.data.runId),
    [scheduledRunId(tick), scheduledRunId(tick)],
    'the punctual replica and the late one published the same run id',
  );
  const stored = await storedTriggers(p);
  t.same(
    stored.map((s) => ({ runId: s.runId, reason: s.reason })),
    [{ runId: scheduledRunId(tick), reason: 'schedule' }],
    'exactly one transform.trigger stored for the tick',
  );
});

t.test('no catch-up: ticks missed while the scheduler was stopped are never published, only later ones', async (t) => {
  const p = await Pipeline.start({ env: { TRANSFORM_SCHEDULE: '*/2 * * * * *' }, services: ['scheduler'] });
  t.teardown(() => p.close());
  await until('a first tick', () => published(p).length >= 1, 5000);
  await p.stopServices();
  const stoppedAt = Date.now();
  // Down across at least one whole tick, and back 300 ms after a tick it missed.
  const missedLast = Math.ceil((stoppedAt + 2000) / 2000) * 2000;
  const restartAt = missedLast + 300;
  await sleepUntil(restartAt);
  await p.startServices();
  await until('a tick after the restart', () => published(p).some((e) => tickOf(String(e.data.runId)) > restartAt), 6000);
  await p.stopServices();

  const ticks = (await storedTriggers(p)).map((s) => tickOf(s.runId));
  t.ok(
    ticks.some((at) => at < stoppedAt),
    'ticks before the stop were published',
  );
  t.same(
    ticks.filter((at) => at > stoppedAt && at <= restartAt).map((at) => new Date(at).toISOString()),
    [],
    `no tick of the down time (${new Date(stoppedAt).toISOString()} to ${new Date(restartAt).toISOString()}) was published, not even the one 300 ms before the restart`,
  );
  t.ok(
    ticks.some((at) => at > restartAt),
    'the restarted scheduler publishes the ticks after its start',
  );
});
