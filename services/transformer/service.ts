import { describeError } from '../../shared/errors';
import { ENV_FILES } from '../../shared/envfile';
import { Subjects, type EventBody, type TriggerEvent } from '../../shared/events';
import { CONSUMERS } from '../../shared/nats';
import { failureOf, finishStep, priorEnding, runContainerStage, stepEvent } from '../../shared/stage';
import { generatedRunId, msgIdFor, hostDirs, consumerService, type Service, type ServiceDeps } from '../../shared/service';
import { elapsedMs, monotonicNow, type HandlerContext, type HandlerResult } from '../../shared/bus';

/**
 * Runs the transform container on each transform.trigger. The transform lock it takes spans the
 * whole run: on new data it is handed to the loader, which hands it on to the model step.
 */
export function createTransformer(deps: ServiceDeps): Service {
  const { config, bus, locks, runner, records, logger } = deps;
  const { aws, processed, viz } = hostDirs(config, 'transformer');

  async function handle(event: TriggerEvent, ctx: HandlerContext): Promise<HandlerResult> {
    const runId = event.runId ?? generatedRunId('t', ctx);
    const log = logger.child({ stage: 'transform', runId });
    const started = monotonicNow();
    const step = await records.open({ runId, step: 'transform', subject: Subjects.transformTrigger, trigger: ctx.streamSequence, ...(event.reason !== undefined ? { reason: event.reason } : {}) });
    const finish = { bus, runner, logger: log };
    const prior = await priorEnding(finish, step, 'a new transform run');
    if (prior !== undefined) return prior;
    const done = (body: Omit<EventBody<'transform.done'>, 'runId' | 'durationMs'>) =>
      stepEvent(Subjects.transformDone, { runId, durationMs: elapsedMs(started), ...body }, msgIdFor(runId, Subjects.transformDone));

    // A redelivery of this trigger takes back its own run's lock; any other trigger needs it free.
    const lease = await locks.acquire('transform', runId, 'transform', { trigger: ctx.streamSequence });
    if (lease === null) {
      const holder = await locks.read('transform');
      log.info({ heldBy: holder?.value?.runId }, 'transform run in progress; trigger ends busy');
      return finishStep(finish, step, [done({ outcome: 'busy', exitCode: null, error: `run ${holder?.value?.runId ?? 'unknown'} is still in progress` })]);
    }
    log.info({ reason: event.reason }, 'transform run started');

    let result;
    try {
      result = await runContainerStage(runner, bus, step, {
        stage: 'transform',
        runId,
        image: config.images.transform,
        envDir: config.envDir,
        envFile: ENV_FILES.transform,
        mounts: [
          { source: aws, target: '/app/.aws' },
          { source: processed, target: '/app/processed' },
          { source: viz, target: '/app/viz' },
        ],
        ...(config.network !== undefined ? { network: config.network } : {}),
        timeoutMs: config.timeoutsMs.transform,
        ...(config.memoryBytes.transform !== undefined ? { memoryBytes: config.memoryBytes.transform } : {}),
        phrase: config.phrases.newData,
        signal: AbortSignal.any([ctx.signal, lease.lost]),
      });
    } catch (err) {
      log.error({ err: describeError(err) }, 'transform stage failed');
      return finishStep(finish, step, [done({ outcome: 'failed', exitCode: null, error: describeError(err) })], () => lease.release());
    }
    if (result.status === 'handed-back' && !lease.lost.aborted) {
      await lease.handOff();
      return 'handed-back';
    }
    if (lease.lost.aborted || !(await lease.confirm())) {
      if (await locks.heldBy('transform', runId)) return 'done'; // another delivery of this run took over and carries on
      return finishStep(finish, step, [done({ outcome: 'failed', exitCode: result.exitCode, error: 'the transform lock was lost during the run (its lease expired)' })]);
    }
    const failure = failureOf(result, config.timeoutsMs.transform);
    if (failure !== undefined || !result.phraseFound) {
      const body = failure !== undefined ? { outcome: 'failed' as const, exitCode: result.exitCode, error: failure } : { outcome: 'no-new-data' as const, exitCode: result.exitCode };
      return finishStep(finish, step, [done(body)], () => lease.release());
    }
    // The lease is handed off before data.new: the loader takes it over from here.
    return finishStep(
      finish,
      step,
      [done({ outcome: 'new-data', exitCode: result.exitCode }), stepEvent(Subjects.dataNew, { runId }, msgIdFor(runId, Subjects.dataNew))],
      () => lease.handOff(),
    );
  }

  return consumerService(bus, 'transformer', CONSUMERS.transformer.durable, Subjects.transformTrigger, handle);
}
