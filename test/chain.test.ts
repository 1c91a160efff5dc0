import t from 'tap';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Pipeline, uid } from './helpers/pipeline';

t.test('full chain with new data: files land, model trained, each event once and in order', async (t) => {
  const p = await Pipeline.start({ envFiles: { transform: { NEW_DATA: '1', API_TOKEN: 'sekret-token-4711' } } });
  t.teardown(() => p.close());
  const runId = uid();
  await p.publish('transform.trigger', { runId, reason: 'test' });
  const end = await p.waitForRunEnd(runId);
  t.equal(end.subject, 'model.done');
  t.equal(end.data.outcome, 'trained');
  t.same(p.trail(runId), [
    'transform.trigger',
    'transform.done new-data',
    'data.new',
    'load.done loaded',
    'model.trigger',
    'model.mismatch',
    'model.done trained',
  ]);
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
  t.ok(lines.some((l) => l.includes('****')), 'the env-file secret is masked in forwarded lines');
  t.notOk(JSON.stringify(p.logBatches).includes('sekret-token-4711'), 'secret never forwarded');
  t.notOk(p.logLines.join('\n').includes('sekret-token-4711'), 'secret never logged');
  t.same(await p.containers(runId), [], 'no container left behind');
  const serviceLog = p.logLines.map((l) => JSON.parse(l) as { runId?: string; service?: string; stage?: string });
  t.ok(serviceLog.some((l) => l.runId === runId && l.service !== undefined && l.stage !== undefined), 'log lines carry service, stage and runId');
});
