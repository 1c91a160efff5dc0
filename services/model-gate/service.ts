import { Subjects, type ModelDoneEvent, type TriggerEvent } from '../../shared/events';
import { handOffAll, releaseAll, type Lease } from '../../shared/lock';
import { beginStep, failureOf, planStage, runStage, type Step } from '../../shared/stage';
import { generatedRunId, type ServiceDeps } from '../../shared/service';
import type { Handler, HandlerContext, HandlerResult } from '../../shared/bus';
import { decide, type GateRun, type LeaseCheck, type Verdict } from './decide';
import { gateStage } from './definition';

type ModelDoneBody = Pick<ModelDoneEvent, 'outcome' | 'error'> & { exitCode?: number | null };

/** Whether the model lease still passes the verdict's check (see `LeaseCheck`). */
async function leaseHolds(lease: Lease, check: LeaseCheck): Promise<boolean> {
  if (check === 'none') return true;
  if (lease.lost.aborted) return false;
  return check === 'not-lost' || (await lease.confirm());
}

/**
 * On model.trigger (from the loader, or by hand), decides whether the model must be retrained (`decide`: the dev
 * flags first, then the gate container's log) and acts on it: model.mismatch hands both leases on to the trainer,
 * model.done releases them.
 */
export function gateHandler(deps: ServiceDeps): Handler<'model.trigger'> {
  const { config, locks } = deps;
  const plan = planStage(gateStage, config);

  /** Runs the gate container: what it did, or the handler's answer when the step stops here. */
  async function runGate(step: Step, modelLease: Lease, runLease: Lease | null, signal: AbortSignal): Promise<GateRun | 'handed-back' | 'done'> {
    const result = await runStage(deps.runner, deps.bus, step.handle, plan, AbortSignal.any([signal, modelLease.lost]));
    if (result.status === 'failed-to-run') return result;
    if (result.status === 'handed-back' && !modelLease.lost.aborted) {
      await handOffAll(modelLease, runLease);
      return 'handed-back';
    }
    if (modelLease.lost.aborted && (await locks.heldBy('model', step.runId))) return 'done'; // another delivery of this run carries on
    return { status: 'exited', exitCode: result.exitCode, failure: failureOf(result, plan.timeoutMs), phraseFound: result.phraseFound };
  }

  return async function handle(event: TriggerEvent, ctx: HandlerContext): Promise<HandlerResult> {
    const runId = event.runId ?? generatedRunId('m', ctx);
    const step = await beginStep(deps, { runId, step: 'model-trigger', subject: Subjects.modelTrigger, trigger: ctx.streamSequence, reason: event.reason });
    const { log } = step;
    const prior = await step.prior('a new model run');
    if (prior !== undefined) return prior;

    const modelLease = await locks.acquire('model', runId, 'model-trigger', { trigger: ctx.streamSequence });
    // The run's transform lock, when this model step belongs to a transform run; taken over only after the
    // model lock is ours, so a redelivered trigger never takes it from the trainer.
    const runLease = await locks.takeOver('transform', runId, 'model-trigger');

    const finish = async (body: ModelDoneBody) => {
      const result = await step.finish([step.done(Subjects.modelDone, body)], () => releaseAll(runLease, modelLease));
      log.info({ outcome: body.outcome, error: body.error }, 'model step ended');
      return result;
    };
    const act = async (verdict: Verdict) => {
      if (verdict.action === 'end') {
        const { outcome, exitCode, error } = verdict;
        return finish({ outcome, ...(exitCode !== undefined ? { exitCode } : {}), ...(error !== undefined ? { error } : {}) });
      }
      const result = await step.finish([step.event(Subjects.modelMismatch, { reason: verdict.reason })], () => handOffAll(modelLease, runLease));
      log.info({ reason: verdict.reason }, 'training requested');
      return result;
    };

    if (modelLease === null) {
      const holder = await locks.read('model');
      return finish({ outcome: 'busy', exitCode: null, error: `model run ${holder?.value?.runId ?? 'unknown'} is still in progress` });
    }
    const before = decide(config.flags, { status: 'not-run' });
    if (before.action !== 'run-gate') return act(before);

    const gate = await runGate(step, modelLease, runLease, ctx.signal);
    if (gate === 'handed-back' || gate === 'done') return gate;
    const verdict = decide(config.flags, gate);
    if (gate.status === 'failed-to-run' && verdict.action === 'train') log.warn({ err: gate.error }, 'gate container failed; DEV_FORCE_TRAINING trains anyway');
    if (gate.status === 'exited' && !(await leaseHolds(modelLease, verdict.check))) {
      return finish({ outcome: 'failed', exitCode: gate.exitCode, error: gate.failure ?? 'the model lock was lost during the gate (its lease expired)' });
    }
    return act(verdict);
  };
}
