import { Subjects, type EventBody, type TriggerEvent } from '../../shared/events';
import { beginStep, failureOf, planStage, runStage } from '../../shared/stage';
import { generatedRunId, type ServiceDeps } from '../../shared/service';
import type { Handler, HandlerContext, HandlerResult } from '../../shared/bus';
import { transformStage } from './definition';

type TransformDone = Omit<EventBody<'transform.done'>, 'runId' | 'durationMs'>;

/**
 * Runs the transform container on each transform.trigger. The transform lock it takes spans the
 * whole run: on new data it is handed to the loader, which hands it on to the model step.
 */
export function transformerHandler(deps: ServiceDeps): Handler<'transform.trigger'> {
  const { config, locks } = deps;
  const plan = planStage(transformStage, config);

  return async function handle(event: TriggerEvent, ctx: HandlerContext): Promise<HandlerResult> {
    const runId = event.runId ?? generatedRunId('t', ctx);
    const step = await beginStep(deps, { runId, step: 'transform', subject: Subjects.transformTrigger, trigger: ctx.streamSequence, reason: event.reason });
    const prior = await step.prior('a new transform run');
    if (prior !== undefined) return prior;
    const { log } = step;
    const done = (body: TransformDone) => step.done(Subjects.transformDone, body);

    // A redelivery of this trigger takes back its own run's lock; any other trigger needs it free.
    const lease = await locks.acquire('transform', runId, 'transform', { trigger: ctx.streamSequence });
    if (lease === null) {
      const holder = await locks.read('transform');
      log.info({ heldBy: holder?.value?.runId }, 'transform run in progress; trigger ends busy');
      return step.finish([done({ outcome: 'busy', exitCode: null, error: `run ${holder?.value?.runId ?? 'unknown'} is still in progress` })]);
    }
    log.info({ reason: event.reason }, 'transform run started');

    const result = await runStage(deps.runner, deps.bus, step.handle, plan, AbortSignal.any([ctx.signal, lease.lost]));
    if (result.status === 'failed-to-run') {
      log.error({ err: result.error }, 'transform stage failed');
      return step.finish([done({ outcome: 'failed', exitCode: null, error: result.error })], () => lease.release());
    }
    if (result.status === 'handed-back' && !lease.lost.aborted) {
      await lease.handOff();
      return 'handed-back';
    }
    if (lease.lost.aborted || !(await lease.confirm())) {
      if (await locks.heldBy('transform', runId)) return 'done'; // another delivery of this run took over and carries on
      return step.finish([done({ outcome: 'failed', exitCode: result.exitCode, error: 'the transform lock was lost during the run (its lease expired)' })]);
    }
    const failure = failureOf(result, plan.timeoutMs);
    if (failure !== undefined || !result.phraseFound) {
      const body =
        failure !== undefined ? { outcome: 'failed' as const, exitCode: result.exitCode, error: failure } : { outcome: 'no-new-data' as const, exitCode: result.exitCode };
      return step.finish([done(body)], () => lease.release());
    }
    // The lease is handed off before data.new: the loader takes it over from here.
    return step.finish([done({ outcome: 'new-data', exitCode: result.exitCode }), step.event(Subjects.dataNew, {})], () => lease.handOff());
  };
}
