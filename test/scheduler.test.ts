import t from 'tap';
import { jetstream } from '@nats-io/jetstream';
import { loadConfig } from '../shared/config';
import { EVENTS_STREAM } from '../shared/nats';
import { runServices } from '../cli/run';
import { Pipeline } from './helpers/pipeline';
import { Writable } from 'node:stream';

t.test('the scheduler triggers on its cron (UTC); two replicas make one run per tick', async (t) => {
  const env = { TRANSFORM_SCHEDULE: '* * * * * *' }; // every second (croner's six-field form)
  const p = await Pipeline.start({ env, services: ['scheduler'] });
  t.teardown(() => p.close());
  const replica = await runServices(['scheduler'], loadConfig({ ...p.env }, ['scheduler']), { logDestination: new Writable({ write: (_c, _e, cb) => cb() }) });
  t.teardown(() => replica.stop());
  await new Promise((r) => setTimeout(r, 3500));
  await replica.stop();
  await p.stopServices();
  const js = jetstream(p.client);
  const consumer = await js.consumers.get(EVENTS_STREAM);
  const stored: { runId: string; reason: string }[] = [];
  for await (const m of await consumer.fetch({ max_messages: 100, expires: 1500 })) if (m.subject === 'transform.trigger') stored.push(m.json());
  t.ok(stored.length >= 2 && stored.length <= 5, `${stored.length} ticks in 3.5 s`);
  t.same(new Set(stored.map((s) => s.runId)).size, stored.length, 'each tick stored once although two replicas published it');
  t.ok(stored.every((s) => /^s\d{8}T\d{6}Z$/.test(s.runId) && s.reason === 'schedule'), 'run ids name the tick');
});
