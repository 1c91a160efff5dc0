import { describeError } from '../../shared/errors';
import { ENV_FILES } from '../../shared/envfile';
import { Subjects, type ModelDoneEvent, type TriggerEvent } from '../../shared/events';
import { CONSUMERS } from '../../shared/nats';
import { failureOf, finishStep, priorEnding, runContainerStage, stepEvent } from '../../shared/stage';
import { generatedRunId, msgIdFor, consumerService, type Service, type ServiceDeps } from '../../shared/service';
import { elapsedMs, monotonicNow, type HandlerContext, type HandlerResult } from '../../shared/bus';

/**
 * On model.trigger (from the loader, or by hand), decides whether the model must be retrained:
 * the dev flags first, in the seed's order, then the gate container's log.
 */
export function createModelGate(deps: ServiceDeps): Service {
  const { config, bus, locks, runner, records, logger } = deps;
  const { flags } = config;

  async function handle(event: TriggerEvent, ctx: HandlerContext): Promise<HandlerResult> {
    const runId = event.runId ?? generatedRunId('m', ctx);
    const log = logger.child({ stage: 'model-trigger', runId });
    const started = monotonicNow();
    const step = await records.open({ runId, step: 'model-trigger', subject: Subjects.modelTrigger, trigger: ctx.streamSequence, ...(event.reason !== undefined ? { reason: event.reason } : {}) });
    const finishDeps = { bus, runner, logger: log };
    const prior = await priorEnding(finishDeps, step, 'a new model run');
    if (prior !== undefined) return prior;

    const modelLease = await locks.acquire('model', runId, 'model-trigger', { trigger: ctx.streamSequence });
    // The run's transform lock, when this model step belongs to a transform run; taken only after the
    // model lock, so a redelivered trigger never takes it from the trainer.
    const runLease = await locks.adopt('transform', runId, 'model-trigger');

    const modelDone = (body: Pick<ModelDoneEvent, 'outcome' | 'error'> & { exitCode?: number | null }) =>
      stepEvent(Subjects.modelDone, { runId, durationMs: elapsedMs(started), ...body }, msgIdFor(runId, Subjects.modelDone));
    const finish = (body: Pick<ModelDoneEvent, 'outcome' | 'error'> & { exitCode?: number | null }) =>
      finishStep(finishDeps, step, [modelDone(body)], () => Promise.all([runLease?.release(), modelLease?.release()])).then((r) => {
        log.info({ outcome: body.outcome, error: body.error }, 'model step ended');
        return r;
      });
    const train = (reason: 'mismatch' | 'forced') =>
      finishStep(finishDeps, step, [stepEvent(Subjects.modelMismatch, { runId, reason }, msgIdFor(runId, Subjects.modelMismatch))], () =>
        Promise.all([modelLease?.handOff(), runLease?.handOff()]),
      ).then((r) => {
        log.info({ reason }, 'training requested');
        return r;
      });

    if (modelLease === null) {
      const holder = await locks.read('model');
      return finish({ outcome: 'busy', exitCode: null, error: `model run ${holder?.value?.runId ?? 'unknown'} is still in progress` });
    }
    if (flags.devSkipTrigger && !flags.devForceTraining) return train('forced');
    if (flags.devSkipModel && !flags.devForceTraining) return finish({ outcome: 'skipped' });

    let result;
    try {
      result = await runContainerStage(runner, bus, step, {
        stage: 'model-trigger',
        runId,
        image: config.images.modelTrigger,
        envDir: config.envDir,
        envFile: ENV_FILES.modelTrigger,
        mounts: [],
        ...(config.network !== undefined ? { network: config.network } : {}),
        timeoutMs: config.timeoutsMs.modelTrigger,
        ...(config.memoryBytes.modelTrigger !== undefined ? { memoryBytes: config.memoryBytes.modelTrigger } : {}),
        phrase: config.phrases.mismatch,
        signal: AbortSignal.any([ctx.signal, modelLease.lost]),
      });
    } catch (err) {
      if (flags.devForceTraining) {
        log.warn({ err: describeError(err) }, 'gate container failed; DEV_FORCE_TRAINING trains anyway');
        return train('forced');
      }
      return finish({ outcome: 'failed', exitCode: null, error: describeError(err) });
    }
    if (result.status === 'handed-back' && !modelLease.lost.aborted) {
      await Promise.all([modelLease.handOff(), runLease?.handOff()]);
      return 'handed-back';
    }
    if (modelLease.lost.aborted && (await locks.heldBy('model', runId))) return 'done'; // another delivery of this run carries on
    if (flags.devForceTraining && !modelLease.lost.aborted) return train('forced');
    const failure = failureOf(result, config.timeoutsMs.modelTrigger);
    if (failure !== undefined) return finish({ outcome: 'failed', exitCode: result.exitCode, error: failure });
    if (modelLease.lost.aborted || !(await modelLease.confirm())) {
      return finish({ outcome: 'failed', exitCode: result.exitCode, error: 'the model lock was lost during the gate (its lease expired)' });
    }
    if (result.phraseFound) return train('mismatch');
    return finish({ outcome: 'up-to-date', exitCode: result.exitCode });
  }

  return consumerService(bus, 'model-gate', CONSUMERS.modelGate.durable, Subjects.modelTrigger, handle);
}
