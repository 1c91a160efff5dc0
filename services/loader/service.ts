import { Subjects, type EventMap, type LoadDoneEvent } from '../../shared/events';
import type { StepHandle } from '../../shared/record';
import { beginStep, failureOf, planStage, runStage, type StagePlan } from '../../shared/stage';
import type { ServiceDeps } from '../../shared/service';
import type { Handler, HandlerContext, HandlerResult } from '../../shared/bus';
import { loadProcessedStage, loadVizStage } from './definition';

type LoadTarget = 'processed' | 'viz';
type LoadReport = LoadDoneEvent['loads'][number] & { error?: string; handedBack?: boolean };

/**
 * On data.new, runs the two DVC load containers in parallel, then asks for the model step.
 * It takes over the run's transform lock, so no transform writes into a folder being loaded and emptied.
 */
export function loaderHandler(deps: ServiceDeps): Handler<'data.new'> {
  const { config, bus, locks, runner } = deps;
  const plans: Record<LoadTarget, StagePlan> = {
    processed: planStage(loadProcessedStage, config),
    viz: planStage(loadVizStage, config),
  };

  async function load(target: LoadTarget, step: StepHandle, signal: AbortSignal): Promise<LoadReport> {
    const plan = plans[target];
    const result = await runStage(runner, bus, step, plan, signal);
    if (result.status === 'failed-to-run') return { target, outcome: 'failed', exitCode: null, error: result.error };
    if (result.status === 'handed-back') return { target, outcome: 'failed', exitCode: null, handedBack: true };
    const failure = failureOf(result, plan.timeoutMs);
    return failure === undefined ? { target, outcome: 'loaded', exitCode: result.exitCode } : { target, outcome: 'failed', exitCode: result.exitCode, error: failure };
  }

  async function handle(event: EventMap['data.new'], ctx: HandlerContext): Promise<HandlerResult> {
    const { runId } = event;
    const step = await beginStep(deps, { runId, step: 'load', subject: Subjects.dataNew, trigger: ctx.streamSequence });
    const { log } = step;
    const prior = await step.prior('loads', { secondMessage: 'ignore' });
    if (prior !== undefined) return prior;
    const loadDone = (body: Pick<LoadDoneEvent, 'outcome' | 'loads' | 'error'>) => step.done(Subjects.loadDone, body);
    const modelTrigger = step.event(Subjects.modelTrigger, { reason: 'loaded' });

    const lease = await locks.acquire('transform', runId, 'load');
    if (lease === null) {
      const holder = await locks.read('transform');
      const error = `the transform lock is held by run ${holder?.value?.runId ?? 'unknown'}; loading now could lose its data`;
      log.error(error);
      return step.finish([loadDone({ outcome: 'failed', loads: [], error })]);
    }
    if (config.flags.isDevelopment) {
      log.info('IS_DEVELOPMENT: loads skipped');
      return step.finish([loadDone({ outcome: 'skipped', loads: [] }), modelTrigger], () => lease.handOff());
    }
    const signal = AbortSignal.any([ctx.signal, lease.lost]);
    // Both loads are followed to their end before anything else happens, even when one of them throws.
    const settled = await Promise.allSettled([load('processed', step.handle, signal), load('viz', step.handle, signal)]);
    const thrown = settled.find((r) => r.status === 'rejected');
    if (thrown !== undefined) throw thrown.reason;
    const reports = settled.map((r) => (r as PromiseFulfilledResult<LoadReport>).value);
    if (reports.some((r) => r.handedBack) && !lease.lost.aborted) {
      await lease.handOff();
      return 'handed-back';
    }
    const loads = reports.map(({ target, outcome, exitCode }) => ({ target, outcome, exitCode }));
    if (lease.lost.aborted || !(await lease.confirm())) {
      if (await locks.heldBy('transform', runId)) return 'done'; // another delivery of this run took over and carries on
      return step.finish([loadDone({ outcome: 'failed', loads, error: 'the transform lock was lost during the loads (its lease expired)' })]);
    }
    const failed = reports.filter((r) => r.outcome === 'failed');
    if (failed.length > 0) {
      const error = failed.map((r) => `load ${r.target}: ${r.error ?? 'failed'}`).join('; ');
      log.error({ error }, 'load failed');
      return step.finish([loadDone({ outcome: 'failed', loads, error })], () => lease.release());
    }
    return step.finish([loadDone({ outcome: 'loaded', loads }), modelTrigger], () => lease.handOff());
  }

  return handle;
}
