import t from 'tap';
import { Pipeline, uid } from '../kit/pipeline';

t.test('malformed events end on rejected.<subject>, start nothing, and the services keep serving', async (t) => {
  const p = await Pipeline.start({ envFiles: { transform: { NEW_DATA: '0' } } });
  t.teardown(() => p.close());
  const cases: [string, string | object, RegExp][] = [
    ['transform.trigger', '{not json', /not JSON/],
    ['transform.trigger', { runId: 42 }, /runId/],
    ['transform.trigger', { runId: 'a.b.>' }, /runId must be/],
    ['transform.trigger', { runId: '../../etc' }, /runId must be/],
    ['transform.trigger', { image: 'evil:latest' }, /image/],
    ['transform.trigger', 'x'.repeat(70_000), /limit/],
    ['model.trigger', { reason: 7 }, /reason/],
    ['model.trigger', '[]', /object/],
    ['data.new', { runId: 'abc' }, /v|at/],
    ['model.mismatch', { v: 1, runId: 'abc', at: new Date().toISOString(), reason: 'because' }, /reason/],
  ];
  for (const [subject, body] of cases) await p.publish(subject, typeof body === 'string' ? body : body);
  const deadline = Date.now() + 15_000;
  while (p.events.filter((e) => e.subject.startsWith('rejected.')).length < cases.length && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  const rejected = p.events.filter((e) => e.subject.startsWith('rejected.'));
  t.equal(rejected.length, cases.length, 'one report per bad event');
  for (const [subject, , pattern] of cases) {
    t.ok(
      rejected.some((r) => r.subject === `rejected.${subject}` && pattern.test(String(r.data.error))),
      `${subject} rejected matching ${pattern}`,
    );
  }
  t.ok(
    rejected.every((r) => typeof r.data.preview === 'string' && (r.data.preview as string).length <= 201),
    'previews are bounded',
  );
  t.same(p.starts('transform'), [], 'no container started');
  t.same(
    p.events.filter((e) => e.subject.endsWith('.done')),
    [],
    'no stage ran',
  );
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  t.equal((await p.waitForRunEnd(runId)).data.outcome, 'no-new-data', 'still serving');
  const metrics = await p.running?.metrics.registry.getSingleMetricAsString('brain_events_rejected_total');
  t.match(metrics, /subject="transform.trigger"[^}]*\} 6/);
});

t.test('hostile input on every consumed subject is rejected, starts nothing, and the services stay up', async (t) => {
  const p = await Pipeline.start({ envFiles: { transform: { NEW_DATA: '0' } } });
  t.teardown(() => p.close());
  const valid = (runId: string) => ({ v: 1, runId, at: new Date().toISOString() });
  const bodies: [string, (subject: string) => string | object][] = [
    ['invalid JSON', () => '{"runId":'],
    ['wrong types', () => ({ v: '1', runId: ['x'], at: 5 })],
    ['a huge payload', () => JSON.stringify({ runId: 'big', reason: 'x'.repeat(200_000) })],
    ['unknown fields', (s) => ({ ...valid('ok1'), ...(s === 'model.mismatch' ? { reason: 'mismatch' } : {}), extra: { image: 'evil', privileged: true } })],
    ['a runId with wildcards', (s) => ({ ...valid('a.*.>'), ...(s === 'model.mismatch' ? { reason: 'mismatch' } : {}) })],
    ['a runId with path characters', (s) => ({ ...valid('../../etc/passwd'), ...(s === 'model.mismatch' ? { reason: 'mismatch' } : {}) })],
    ['a runId with whitespace', (s) => ({ ...valid('a b'), ...(s === 'model.mismatch' ? { reason: 'mismatch' } : {}) })],
  ];
  const subjects = ['transform.trigger', 'data.new', 'model.trigger', 'model.mismatch'];
  for (const subject of subjects) for (const [, body] of bodies) await p.publish(subject, body(subject));
  const expected = subjects.length * bodies.length;
  const deadline = Date.now() + 20_000;
  while (p.events.filter((e) => e.subject.startsWith('rejected.')).length < expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  for (const subject of subjects) {
    t.equal(p.events.filter((e) => e.subject === `rejected.${subject}`).length, bodies.length, `every bad ${subject} reported on rejected.${subject}`);
  }
  t.same([...p.starts('transform'), ...p.starts('load'), ...p.starts('train')], [], 'no container started');
  t.same(
    p.events.filter((e) => e.subject.endsWith('.done')),
    [],
    'no stage ran',
  );
  const runId = uid();
  await p.publish('transform.trigger', { runId });
  t.equal((await p.waitForRunEnd(runId)).data.outcome, 'no-new-data', 'the services stayed up');
});
