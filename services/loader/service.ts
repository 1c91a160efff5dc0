import { describeError } from '../../shared/errors';
import { ENV_FILES } from '../../shared/envfile';
import { Subjects, type EventMap, type LoadDoneEvent, type Stage } from '../../shared/events';
import { CONSUMERS } from '../../shared/nats';
import type { StepHandle } from '../../shared/record';
import { failureOf, finishStep, priorEnding, runContainerStage, stepEvent } from '../../shared/stage';
import { msgIdFor, hostDirs, consumerService, type Service, type ServiceDeps } from '../../shared/service';
import { elapsedMs, monotonicNow, type HandlerContext, type HandlerResult } from '../../shared/bus';

type LoadTarget = 'processed' | 'viz';
type LoadReport = LoadDoneEvent['loads'][number] & { error?: string; handedBack?: boolean };

/**
 * On data.new, runs the two DVC load containers in parallel, then asks for the model step.
 * It takes over the run's transform lock, so no transform writes into a folder being loaded and emptied.
 */
export function createLoader(deps: ServiceDeps): Service {
  const { config, bus, locks, runner, records, logger } = deps;
  const { aws, processed, viz } = hostDirs(config, 'loader');
  const targets: Record<LoadTarget, { stage: Stage; source: string; envFile: string }> = {
    processed: { stage: 'load-processed', source: processed, envFile: ENV_FILES.loadProcessed },
    viz: { stage: 'load-viz', source: viz, envFile: ENV_FILES.loadViz },
  };

  async function load(target: LoadTarget, step: StepHandle, signal: AbortSignal): Promise<LoadReport> {
    const { stage, source, envFile } = targets[target];
    try {
      const result = await runContainerStage(runner, bus, step, {
        stage,
        runId: step.record.runId,
        image: config.images.load,
        envDir: config.envDir,
        envFile,
        mounts: [
          { source, target: '/app/collect_point' },
          { source: aws, target: '/root/.aws' },
        ],
        ...(config.network !== undefined ? { network: config.network } : {}),
        timeoutMs: config.timeoutsMs.load,
        ...(config.memoryBytes.load !== undefined ? { memoryBytes: config.memoryBytes.load } : {}),
        signal,
      });
      if (result.status === 'handed-back') return { target, outcome: 'failed', exitCode: null, handedBack: true };
      const failure = failureOf(result, config.timeoutsMs.load);
      return failure === undefined
        ? { target, outcome: 'loaded', exitCode: result.exitCode }
        : { target, outcome: 'failed', exitCode: result.exitCode, error: failure };
    } catch (err) {
      return { target, outcome: 'failed', exitCode: null, error: describeError(err) };
    }
  }

  async function handle(event: EventMap['data.new'], ctx: HandlerContext): Promise<HandlerResult> {
    const { runId } = event;
    const log = logger.child({ stage: 'load', runId });
    const started = monotonicNow();
    const step = await records.open({ runId, step: 'load', subject: Subjects.dataNew, trigger: ctx.streamSequence });
    const finish = { bus, runner, logger: log };
    if (!step.sameMessage) {
      log.info({ first: step.record.trigger }, 'a second data.new for a run whose loads already began; ignored');
      return 'done';
    }
    const prior = await priorEnding(finish, step, 'the loads');
    if (prior !== undefined) return prior;
    const loadDone = (body: Pick<LoadDoneEvent, 'outcome' | 'loads' | 'error'>) =>
      stepEvent(Subjects.loadDone, { runId, durationMs: elapsedMs(started), ...body }, msgIdFor(runId, Subjects.loadDone));
    const modelTrigger = stepEvent(Subjects.modelTrigger, { runId, reason: 'loaded' }, msgIdFor(runId, Subjects.modelTrigger));

    const lease = await locks.acquire('transform', runId, 'load');
    if (lease === null) {
      const holder = await locks.read('transform');
      const error = `the transform lock is held by run ${holder?.value?.runId ?? 'unknown'}; loading now could lose its data`;
      log.error(error);
      return finishStep(finish, step, [loadDone({ outcome: 'failed', loads: [], error })]);
    }
    if (config.flags.isDevelopment) {
      log.info('IS_DEVELOPMENT: loads skipped');
      return finishStep(finish, step, [loadDone({ outcome: 'skipped', loads: [] }), modelTrigger], () => lease.handOff());
    }
    const signal = AbortSignal.any([ctx.signal, lease.lost]);
    const reports = await Promise.all([load('processed', step, signal), load('viz', step, signal)]);
    if (reports.some((r) => r.handedBack) && !lease.lost.aborted) {
      await lease.handOff();
      return 'handed-back';
    }
    const loads = reports.map(({ target, outcome, exitCode }) => ({ target, outcome, exitCode }));
    if (lease.lost.aborted || !(await lease.confirm())) {
      if (await locks.heldBy('transform', runId)) return 'done'; // another delivery of this run took over and carries on
      return finishStep(finish, step, [loadDone({ outcome: 'failed', loads, error: 'the transform lock was lost during the loads (its lease expired)' })]);
    }
    const failed = reports.filter((r) => r.outcome === 'failed');
    if (failed.length > 0) {
      const error = failed.map((r) => `load ${r.target}: ${r.error ?? 'failed'}`).join('; ');
      log.error({ error }, 'load failed');
      return finishStep(finish, step, [loadDone({ outcome: 'failed', loads, error })], () => lease.release());
    }
    return finishStep(finish, step, [loadDone({ outcome: 'loaded', loads }), modelTrigger], () => lease.handOff());
  }

  return consumerService(bus, 'loader', CONSUMERS.loader.durable, Subjects.dataNew, handle);
}
