import t from 'tap';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ENV_FILES } from '../services';
import { JetStreamApiCodes, JetStreamApiError, jetstream } from '@nats-io/jetstream';
import { headers } from '@nats-io/nats-core';
import { PROBE_HEADER, RUN_ID_PATTERN } from '../shared/events';
import { Pipeline } from '../kit/pipeline';

const BRAIN = resolve(__dirname, '../../bin/brain.js');

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the real CLI as a child process; `untilStdout` stops it (SIGINT) once its output matches. */
function brain(p: Pipeline, args: string[], opts: { untilStdout?: (out: string) => boolean; timeoutMs?: number } = {}) {
  const child = spawn(process.execPath, [BRAIN, ...args], {
    env: { ...process.env, NATS_URL: p.nats.url, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => {
    stdout += c.toString();
    if (opts.untilStdout?.(stdout) === true) child.kill('SIGINT');
  });
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
  const done = new Promise<Result>((res) =>
    child.on('close', (code) => {
      clearTimeout(timer);
      res({ code, stdout, stderr });
    }),
  );
  return { child, done, output: () => stdout };
}

const run = (p: Pipeline, ...args: string[]) => brain(p, args).done;
const setTransformEnv = (p: Pipeline, values: string) => writeFileSync(join(p.dirs.env, ENV_FILES.transform), `${values}\n`);

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await probe();
    if (value !== undefined) return value;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}`);
}

interface RunJson {
  runId: string;
  trigger: string;
  result: string;
  stages: Record<string, { outcome: string; durationMs?: number }>;
}

t.test('the brain CLI against a live pipeline', async (t) => {
  const p = await Pipeline.start();
  t.teardown(() => p.close());

  // watch first, and know it is subscribed: it must show an invalid event as such.
  const watch = brain(p, ['watch', '--json'], { untilStdout: (out) => /"subject":"model.done"/.test(out) });
  await until('watch to subscribe', async () => {
    await p.publish('transform.trigger', 'not json');
    return watch.output().includes('"invalid"') ? true : undefined;
  });
  // The web service's permission probe (services/web/me.ts): refused by JetStream, so never stored, but seen by core
  // subscribers; watch skips it.
  const probe = headers();
  probe.set(PROBE_HEADER, 'permission');
  const refused = await jetstream(p.client)
    .publish('model.trigger', '', { headers: probe, expect: { lastSequence: Number.MAX_SAFE_INTEGER } })
    .then(
      () => false,
      (err: unknown) => err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamWrongLastSequence,
    );
  t.ok(refused, 'the probe is refused by JetStream (nothing stored)');

  let okRun = '';
  await t.test('trigger --wait: a full chain succeeds', async (t) => {
    const r = await run(p, 'trigger', 'transform', '--wait', '--timeout', '60');
    t.equal(r.code, 0, r.stderr);
    const [runId, summary] = r.stdout.trim().split('\n');
    t.match(runId, RUN_ID_PATTERN);
    t.equal(summary, `run ${runId} ended: model trained`);
    okRun = runId ?? '';
  });

  await t.test('watch --json saw the run, and the bad event as invalid', async (t) => {
    const w = await watch.done;
    const lines = w.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { subject: string; event?: { runId?: string }; invalid?: string });
    t.ok(
      lines.some((l) => l.subject === 'transform.trigger' && l.invalid !== undefined),
      'invalid event shown as such',
    );
    t.notOk(
      lines.some((l) => l.subject === 'model.trigger' && l.invalid !== undefined),
      'the permission probe is not shown',
    );
    t.same(
      lines.filter((l) => l.event?.runId === okRun).map((l) => l.subject),
      ['transform.trigger', 'transform.done', 'data.new', 'load.done', 'model.trigger', 'model.mismatch', 'model.done'],
    );
  });

  await t.test('logs prints the run lines', async (t) => {
    const r = await run(p, 'logs', okRun);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, /^transform\s+New data was transformed$/m);
    t.match(r.stdout, /^load-processed\s/m);
    const none = await run(p, 'logs', 'no-such-run');
    t.equal(none.code, 1);
    t.equal(none.stderr, 'brain: no log lines stored for run no-such-run\n');
  });

  await t.test('trigger --wait: a failing transform exits 1 and says where', async (t) => {
    setTransformEnv(p, 'EXIT_CODE=1');
    const r = await run(p, 'trigger', 'transform', '--wait', '--reason', 'cli test');
    t.equal(r.code, 1);
    t.match(r.stderr, /^brain: run \S+ failed at transform: .*\n$/);
  });

  await t.test('status shows the services and a held lock; logs -f follows to the end', async (t) => {
    setTransformEnv(p, 'SLEEP=3\nNEW_DATA=1');
    const trig = await run(p, 'trigger', 'transform', '--run-id', 'slow-run');
    t.equal(trig.stdout, 'slow-run\n');
    const follow = brain(p, ['logs', '-f', 'slow-run']);
    // Both views at (nearly) the same moment; the lock moves from stage to stage and is gone at the run's end.
    const [status, text] = await until('the transform lock to be held', async () => {
      const [json, text] = await Promise.all([run(p, 'status', '--json'), run(p, 'status')]);
      const s = JSON.parse(json.stdout) as { services: { service: string; up: boolean }[]; locks: { key: string; runId?: string; holder?: string }[] };
      const held = s.locks.some((l) => l.key === 'transform' && l.runId === 'slow-run') && /held +run slow-run/.test(text.stdout);
      return held ? ([s, text.stdout] as const) : undefined;
    });
    t.same(
      status.services.map((s) => `${s.service} ${s.up ? 'up' : 'down'}`),
      ['scheduler down', 'transformer up', 'loader up', 'model-gate up', 'trainer up', 'web down'],
    );
    t.match(status.locks.find((l) => l.key === 'transform')?.holder, /^(transformer|loader|model-gate):/);
    t.match(text, /^ {2}transform +held +run slow-run \(\S+\) by \S+, for [\d.]+m?s, refreshed/m);
    t.match(text, /^ {2}transformer +up +\S+ up /m);
    t.match(text, /^ {2}load +\S+ +loaded in/m, 'last load shown');
    const f = await follow.done;
    t.equal(f.code, 0, f.stderr);
    t.match(f.stdout, /^transform\s+transform slow-run starting/m);
    t.match(f.stdout, /^load-viz\s/m, 'lines of later stages followed live');
  });

  await t.test('runs lists finished runs with stage outcomes, also after the services restart', async (t) => {
    await p.waitForRunEnd('slow-run');
    await p.stopServices();
    await p.startServices();
    const r = await run(p, 'runs', '--json', '--limit', '3');
    t.equal(r.code, 0, r.stderr);
    t.match(r.stderr, /invalid transform.trigger event in the history/);
    const runs = JSON.parse(r.stdout) as RunJson[];
    t.equal(runs.length, 3);
    const ok = runs[0];
    t.equal(ok?.runId, okRun);
    t.equal(ok?.trigger, 'hand');
    t.equal(ok?.result, 'trained');
    t.same(Object.fromEntries(Object.entries(ok?.stages ?? {}).map(([k, v]) => [k, v.outcome])), { transform: 'new-data', load: 'loaded', gate: 'mismatch', train: 'trained' });
    t.ok(
      Object.values(ok?.stages ?? {}).every((s) => typeof s.durationMs === 'number'),
      'every stage has a duration',
    );
    t.equal(runs[1]?.trigger, 'cli test');
    t.equal(runs[1]?.result, 'failed');
    t.equal(runs[2]?.runId, 'slow-run');
    const table = await run(p, 'runs', '--limit', '1');
    t.match(table.stdout, /^RUN\s+STARTED \(UTC\)\s+TRIGGER\s+TRANSFORM\s+LOAD\s+GATE\s+TRAIN\s+RESULT\s+TOTAL\nslow-run\s.*\btrained\b/);
  });

  await t.test('bad configuration is one line and exit 2', async (t) => {
    const child = spawn(process.execPath, [BRAIN, 'status'], { env: { ...process.env, NATS_URL: 'http://nope' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const code = await new Promise((res) => child.on('close', res));
    t.equal(code, 2);
    t.match(stderr, /^brain: invalid configuration: NATS_URL: must be one or more nats:\/\/ URLs[^\n]*\n$/);
  });
});
