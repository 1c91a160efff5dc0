import type { Config } from '../../shared/config';

/** The development flags, in the order they are read: DEV_FORCE_TRAINING, DEV_SKIP_TRIGGER, DEV_SKIP_MODEL. */
export type DevFlags = Pick<Config['flags'], 'devForceTraining' | 'devSkipTrigger' | 'devSkipModel'>;

/** The gate container before it ran. */
export interface GateNotRun {
  status: 'not-run';
}

/** What the gate container did: it could not run (a stage failure: image, env file, Docker), or it exited. */
export type GateRun =
  | { status: 'failed-to-run'; error: string }
  | {
      status: 'exited';
      exitCode: number | null;
      /** Why the container counts as failed (`failureOf`: timeout, out of memory, non-zero exit); undefined when it succeeded. */
      failure: string | undefined;
      /** The mismatch phrase was in its log: the model must be retrained. */
      phraseFound: boolean;
    };

/**
 * What must still hold of the model lease before the verdict is acted on: nothing; the lease was not lost
 * (its signal only); or a refresh the server confirmed. When it does not hold, the step ends failed.
 */
export type LeaseCheck = 'none' | 'not-lost' | 'confirmed';

/** The gate's verdict: request training (model.mismatch) or end the model run (model.done). */
export type Verdict =
  | { action: 'train'; reason: 'forced' | 'mismatch'; check: LeaseCheck }
  | { action: 'end'; outcome: 'skipped' | 'up-to-date' | 'failed'; exitCode?: number | null; error?: string; check: LeaseCheck };

export type Decision = { action: 'run-gate' } | Verdict;

/**
 * The gate's decision, without side effects: the dev flags first, in the seed's order (DEV_FORCE_TRAINING, then
 * DEV_SKIP_TRIGGER, then DEV_SKIP_MODEL), then the gate container's verdict.
 *
 * - DEV_FORCE_TRAINING: the gate runs (its log is kept), then training is forced whatever it said.
 * - DEV_SKIP_TRIGGER: training is forced without running the gate.
 * - DEV_SKIP_MODEL: the model run ends `skipped` without running the gate.
 * - Otherwise: a gate that could not run or failed ends `failed`; the mismatch phrase requests training; else `up-to-date`.
 *
 * Before the gate ran the answer may be `run-gate`; after, it is always a verdict.
 */
export function decide(flags: DevFlags, gate: GateNotRun): Decision;
export function decide(flags: DevFlags, gate: GateRun): Verdict;
export function decide(flags: DevFlags, gate: GateNotRun | GateRun): Decision {
  if (flags.devForceTraining) {
    if (gate.status === 'not-run') return { action: 'run-gate' };
    return { action: 'train', reason: 'forced', check: gate.status === 'exited' ? 'not-lost' : 'none' };
  }
  if (flags.devSkipTrigger) return { action: 'train', reason: 'forced', check: 'none' };
  if (flags.devSkipModel) return { action: 'end', outcome: 'skipped', check: 'none' };
  switch (gate.status) {
    case 'not-run':
      return { action: 'run-gate' };
    case 'failed-to-run':
      return { action: 'end', outcome: 'failed', exitCode: null, error: gate.error, check: 'none' };
    case 'exited':
      if (gate.failure !== undefined) return { action: 'end', outcome: 'failed', exitCode: gate.exitCode, error: gate.failure, check: 'none' };
      if (gate.phraseFound) return { action: 'train', reason: 'mismatch', check: 'confirmed' };
      return { action: 'end', outcome: 'up-to-date', exitCode: gate.exitCode, check: 'confirmed' };
  }
}
