import t from 'tap';
import { ConfigError } from '../shared/errors';
import { loadConfig } from '../services/composition-root';
import { Pipeline, uid } from '../kit/pipeline';

t.test('<STAGE>_GPUS: all, a count or device ids; anything else is a configuration error at start', async (t) => {
  const config = loadConfig({ TRANSFORM_GPUS: 'all', LOAD_GPUS: '2', MODEL_TRIGGER_GPUS: 'device=0', TRAIN_GPUS: '0,GPU-3f1c9a2e-aa' }, []);
  t.same(config.gpus, {
    transform: { kind: 'all' },
    load: { kind: 'count', count: 2 },
    modelTrigger: { kind: 'devices', deviceIds: ['0'] },
    train: { kind: 'devices', deviceIds: ['0', 'GPU-3f1c9a2e-aa'] },
  });
  t.same(loadConfig({ TRAIN_GPUS: '' }, []).gpus, {}, 'empty means none');
  const err = t.throws(() => loadConfig({ TRANSFORM_GPUS: '0', LOAD_GPUS: 'two', TRAIN_GPUS: '0,,1' }, [])) as ConfigError;
  t.type(err, ConfigError);
  for (const key of ['TRANSFORM_GPUS', 'LOAD_GPUS', 'TRAIN_GPUS']) {
    t.ok(
      err.problems.some((p) => p.startsWith(`${key}:`)),
      `${key} reported`,
    );
  }
});

t.test('TRAIN_GPUS=all on a host without a GPU runtime: the train step fails with GPU_UNAVAILABLE and the trainer keeps serving', async (t) => {
  const p = await Pipeline.start({ env: { TRAIN_GPUS: 'all' } });
  t.teardown(() => p.close());
  const first = uid();
  await p.publish('transform.trigger', { runId: first });
  const end = await p.waitForRunEnd(first);
  t.equal(end.subject, 'model.done');
  t.equal(end.data.outcome, 'failed');
  t.match(end.data.error, /the train stage requests all GPUs but the Docker host has no GPU runtime for the request/);
  t.match(end.data.error, /could not select device driver "" with capabilities: \[\[gpu\]\]/, "Docker's own words are kept");
  t.same(p.trail(first).slice(0, 4), ['transform.trigger', 'transform.done new-data', 'data.new', 'load.done loaded'], 'the stages without GPUs ran');
  t.same(await p.leftBehind(first), [], 'the container that could not start is removed');
  const log = p.logLines.map((l) => JSON.parse(l) as { runId?: string; level?: number; msg?: string; err?: unknown });
  t.notOk(
    log.some((l) => l.level !== undefined && l.level >= 60),
    'nothing fatal logged',
  );

  // The trainer is not wedged (no lock held, consumer still pulling): the next trigger is answered at once.
  const next = uid();
  await p.publish('model.trigger', { runId: next });
  const nextEnd = await p.waitForRunEnd(next, 30_000);
  t.equal(nextEnd.data.outcome, 'failed');
  t.match(nextEnd.data.error, /no GPU runtime/);
  t.same(await p.leftBehind(next), [], 'again nothing left behind');
});
