import t from 'tap';
import { decide, type DevFlags, type GateRun, type Verdict } from '../services/model-gate/decide';

/** Every combination of the three dev flags. */
const FLAG_SETS: DevFlags[] = [false, true].flatMap((devForceTraining) =>
  [false, true].flatMap((devSkipTrigger) => [false, true].map((devSkipModel) => ({ devForceTraining, devSkipTrigger, devSkipModel }))),
);

/** Every kind of gate run: could not run, failed (with and without the phrase in its log), succeeded with and without it. */
const GATE_RUNS: GateRun[] = [
  { status: 'failed-to-run', error: 'image brain-model-trigger:latest not found' },
  { status: 'exited', exitCode: 3, failure: 'the container exited with code 3', phraseFound: false },
  { status: 'exited', exitCode: 137, failure: 'the container was killed for running out of memory (exit code 137)', phraseFound: true },
  { status: 'exited', exitCode: 0, failure: undefined, phraseFound: true },
  { status: 'exited', exitCode: 0, failure: undefined, phraseFound: false },
];

const name = (f: DevFlags) =>
  Object.entries(f)
    .filter(([, on]) => on)
    .map(([k]) => k)
    .join('+') || 'no flags';
const gateName = (g: GateRun) =>
  g.status === 'failed-to-run' ? 'could not run' : `exit ${g.exitCode}${g.failure !== undefined ? ' (failed)' : ''}${g.phraseFound ? ', phrase' : ''}`;

t.test('before the gate runs: DEV_FORCE_TRAINING runs it, else DEV_SKIP_TRIGGER trains, else DEV_SKIP_MODEL skips, else it runs', async (t) => {
  for (const flags of FLAG_SETS) {
    const expected = flags.devForceTraining
      ? { action: 'run-gate' }
      : flags.devSkipTrigger
        ? { action: 'train', reason: 'forced', check: 'none' }
        : flags.devSkipModel
          ? { action: 'end', outcome: 'skipped', check: 'none' }
          : { action: 'run-gate' };
    t.same(decide(flags, { status: 'not-run' }), expected, name(flags));
  }
});

t.test('after the gate ran: DEV_FORCE_TRAINING trains whatever it said; without it the gate decides', async (t) => {
  for (const flags of FLAG_SETS) {
    for (const gate of GATE_RUNS) {
      let expected: Verdict;
      if (flags.devForceTraining) {
        // Forced training needs only a lease not lost; after a container that could not run, not even that.
        expected = { action: 'train', reason: 'forced', check: gate.status === 'exited' ? 'not-lost' : 'none' };
      } else if (flags.devSkipTrigger) {
        expected = { action: 'train', reason: 'forced', check: 'none' };
      } else if (flags.devSkipModel) {
        expected = { action: 'end', outcome: 'skipped', check: 'none' };
      } else if (gate.status === 'failed-to-run') {
        expected = { action: 'end', outcome: 'failed', exitCode: null, error: gate.error, check: 'none' };
      } else if (gate.failure !== undefined) {
        // A failed gate ends failed even when its log held the phrase; no lease check is needed to say so.
        expected = { action: 'end', outcome: 'failed', exitCode: gate.exitCode, error: gate.failure, check: 'none' };
      } else if (gate.phraseFound) {
        expected = { action: 'train', reason: 'mismatch', check: 'confirmed' };
      } else {
        expected = { action: 'end', outcome: 'up-to-date', exitCode: gate.exitCode, check: 'confirmed' };
      }
      t.same(decide(flags, gate), expected, `${name(flags)}, ${gateName(gate)}`);
    }
  }
});

t.test('the seed’s order, one case each', async (t) => {
  const off: DevFlags = { devForceTraining: false, devSkipTrigger: false, devSkipModel: false };
  const ok = (phraseFound: boolean): GateRun => ({ status: 'exited', exitCode: 0, failure: undefined, phraseFound });
  t.match(
    decide({ ...off, devForceTraining: true, devSkipTrigger: true, devSkipModel: true }, { status: 'not-run' }),
    { action: 'run-gate' },
    'DEV_FORCE_TRAINING wins over both skips: the gate still runs',
  );
  t.match(decide({ ...off, devForceTraining: true }, ok(false)), { action: 'train', reason: 'forced' }, 'DEV_FORCE_TRAINING trains an up-to-date model');
  t.match(decide({ ...off, devSkipTrigger: true, devSkipModel: true }, { status: 'not-run' }), { action: 'train', reason: 'forced' }, 'DEV_SKIP_TRIGGER wins over DEV_SKIP_MODEL');
  t.match(decide({ ...off, devSkipModel: true }, { status: 'not-run' }), { action: 'end', outcome: 'skipped' }, 'DEV_SKIP_MODEL skips');
  t.match(decide(off, ok(true)), { action: 'train', reason: 'mismatch', check: 'confirmed' }, 'the mismatch phrase trains, once the lease is confirmed');
  t.match(decide(off, ok(false)), { action: 'end', outcome: 'up-to-date', exitCode: 0, check: 'confirmed' }, 'no phrase: up to date');
  t.notOk('exitCode' in decide({ ...off, devSkipModel: true }, { status: 'not-run' }), 'a skipped run carries no exit code');
});
