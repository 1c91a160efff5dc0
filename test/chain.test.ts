import t from 'tap';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Pipeline, uid, waitForContainer } from '../kit/pipeline';

t.test('full chain with new data: files land, model trained, each event once and in order', async (t) => {
  const p = await Pipeline.start({ envFiles: { transform: { NEW_DATA: '1', API_TOKEN: 'sekret-token-4711' } } });
  t.teardown(() => p.close());
  const runId = uid();
  await p.publish('transform.trigger', { runId, reason: 'test' });
  const end = await p.waitForRunEnd(runId);
  t.equal(end.subject, 'model.done');
  t.equal(end.data.outcome, 'trained');
  t.same(p.trail(runId), ['transform.trigger', 'transform.done new-data', 'data.new', 'load.done loaded', 'model.trigger', 'model.mismatch', 'model.done trained']);
  t.same(readdirSync(join(p.dirs.aws, 'remote', 'processed')), [`${runId}.csv`], 'processed data pushed to the remote');
  t.same(readdirSync(join(p.dirs.aws, 'remote', 'viz')), [`${runId}.png`], 'viz data pushed to the remote');
  t.same(readdirSync(p.dirs.processed), [], 'the load emptied the processed folder');
  t.ok(existsSync(join(p.dirs.aws, 'models', `${runId}.bin`)), 'model written');
  const load = p.eventsOf(runId).find((e) => e.subject === 'load.done');
  t.same(load?.data.loads, [
    { target: 'processed', outcome: 'loaded', exitCode: 0 },
    { target: 'viz', outcome: 'loaded', exitCode: 0 },
  ]);
  const lines = p.logLinesOf(runId, 'transform');
  t.ok(lines.includes('New data was transformed'), 'transform log lines published live');
  t.ok(
    lines.some((l) => l.includes('****')),
    'the env-file secret is masked in forwarded lines',
  );
  t.notOk(JSON.stringify(p.logBatches).includes('sekret-token-4711'), 'secret never forwarded');
  t.notOk(p.logLines.join('\n').includes('sekret-token-4711'), 'secret never logged');
  t.same(await p.leftBehind(runId), [], 'no container left behind');
  const serviceLog = p.logLines.map((l) => JSON.parse(l) as { runId?: string; service?: string; stage?: string });
  t.ok(
    serviceLog.some((l) => l.runId === runId && l.service !== undefined && l.stage !== undefined),
    'log lines carry service, stage and runId',
  );
});

t.test('health and metrics: /healthz answers, /metrics counts runs, durations, container starts and contention', async (t) => {
  const p = await Pipeline.start({ envFiles: { train: { SLEEP: '2' } } });
  t.teardown(() => p.close());
  const base = `http://127.0.0.1:${String(p.running?.healthPort)}`;
  const health = await fetch(`${base}/healthz`);
  t.equal(health.status, 200);
  t.match(await health.json(), { ok: true, nats: 'connected' });
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  await waitForContainer(runId, 'train');
  const busy = uid();
  await p.publish('transform.trigger', { runId: busy });
  await p.waitForRunEnd(busy);
  await p.waitForRunEnd(runId);
  const text = await (await fetch(`${base}/metrics`)).text();
  /** The value of a sample whose labels include all of `labels` (label order varies by metric type). */
  const sample = (name: string, labels: Record<string, string>) =>
    text
      .split('\n')
      .filter((l) => l.startsWith(`${name}{`) && Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)))
      .map((l) => Number(l.slice(l.lastIndexOf(' ') + 1)))[0];
  t.equal(sample('brain_stage_runs_total', { stage: 'transform', outcome: 'new-data' }), 1);
  t.equal(sample('brain_stage_runs_total', { stage: 'transform', outcome: 'busy' }), 1);
  t.equal(sample('brain_stage_runs_total', { stage: 'model', outcome: 'trained' }), 1);
  t.equal(sample('brain_stage_duration_seconds_count', { stage: 'load' }), 1);
  t.equal(sample('brain_container_starts_total', { stage: 'load-viz' }), 1);
  t.equal(sample('brain_container_starts_total', { stage: 'transform' }), 1);
  t.equal(sample('brain_lock_contention_total', { lock: 'transform' }), 1);
  t.match(text, /brain_process_resident_memory_bytes/);
  await p.stopServices();
  const after = await fetch(`${base}/healthz`).catch(() => null);
  t.equal(after, null, 'the health endpoint goes away with the services');
});
