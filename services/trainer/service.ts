import { Subjects, type EventMap, type ModelDoneEvent } from '../../shared/events';
import { handOffAll, releaseAll } from '../../shared/lock';
import { beginStep, failureOf, planStage, runStage } from '../../shared/stage';
import type { ServiceDeps } from '../../shared/service';
import type { Handler, HandlerContext, HandlerResult } from '../../shared/bus';
import { trainStage } from './definition';

type ModelDoneBody = Pick<ModelDoneEvent, 'outcome' | 'error'> & { exitCode?: number | null };

/** On model.mismatch, runs the training container and ends the model run (and its transform run). */
export function trainerHandler(deps: ServiceDeps): Handler<'model.mismatch'> {
  const { config, locks } = deps;
  const plan = planStage(trainStage, config);

  return async function handle(event: EventMap['model.mismatch'], ctx: HandlerContext): Promise<HandlerResult> {
    const { runId } = event;
    const step = await beginStep(deps, { runId, step: 'train', subject: Subjects.modelMismatch, trigger: ctx.streamSequence, reason: event.reason });
    const { log } = step;
    const prior = await step.prior('training', { secondMessage: 'ignore' });
    if (prior !== undefined) return prior;

    const runLease = await locks.takeOver('transform', runId, 'train');
    const modelLease = await locks.acquire('model', runId, 'train');
    const finish = async (body: ModelDoneBody) => {
      const result = await step.finish([step.done(Subjects.modelDone, body)], () => releaseAll(runLease, modelLease));
      log.info({ outcome: body.outcome, error: body.error }, 'training ended');
      return result;
    };
    if (modelLease === null) {
      const holder = await locks.read('model');
      return finish({ outcome: 'failed', exitCode: null, error: `the model lock was taken by run ${holder?.value?.runId ?? 'unknown'} before training could start` });
    }
    log.info({ reason: event.reason }, 'training started');
    const result = await runStage(deps.runner, deps.bus, step.handle, plan, AbortSignal.any([ctx.signal, modelLease.lost]));
    if (result.status === 'failed-to-run') return finish({ outcome: 'failed', exitCode: null, error: result.error });
    if (result.status === 'handed-back' && !modelLease.lost.aborted) {
      await handOffAll(modelLease, runLease);
      return 'handed-back';
    }
    const failure = failureOf(result, plan.timeoutMs);
    if (modelLease.lost.aborted || (failure === undefined && !(await modelLease.confirm()))) {
      if (await locks.heldBy('model', runId)) return 'done'; // another delivery of this run took over and carries on
      return finish({ outcome: 'failed', exitCode: result.exitCode, error: 'the model lock was lost during training (its lease expired)' });
    }
    return finish(failure === undefined ? { outcome: 'trained', exitCode: result.exitCode } : { outcome: 'failed', exitCode: result.exitCode, error: failure });
  };
}
