import { describeError } from '../../shared/errors';
import { ENV_FILES } from '../../shared/envfile';
import { Subjects, type ModelDoneEvent, type TriggerEvent } from '../../shared/events';
import { CONSUMERS } from '../../shared/nats';
import { failureOf, runContainerStage } from '../../shared/stage';
import { generatedRunId, msgIdFor, consumerService, type Service, type ServiceDeps } from '../../shared/service';
import type { Lease } from '../../shared/lock';
import type { HandlerContext, HandlerResult } from '../../shared/bus';

/**
 * On model.trigger (from the loader, or by hand), decides whether the model must be retrained:
 * the dev flags first, in the seed's order, then the gate container's log.
 */
export function createModelGate(deps: ServiceDeps): Service {
  const { config, bus, locks, runner, logger } = deps;
  const { flags } = config;

  async function handle(event: TriggerEvent, ctx: HandlerContext): Promise<HandlerResult> {
    const runId = event.runId ?? generatedRunId('m', ctx);
    const log = logger.child({ stage: 'model-trigger', runId });
    const started = Date.now();
    const modelLease = await locks.acquire('model', runId, 'model-trigger', { trigger: ctx.streamSequence });
    if (modelLease === null) {
      const holder = await locks.read('model');
      if (holder?.value?.runId === runId && holder.value.trigger === ctx.streamSequence) {
        log.info({ stage: holder.value.stage }, 'redelivered trigger of a run that has moved on; nothing to do');
        return 'done';
      }
    }
    // The run's transform lock, when this model step belongs to a transform run; taken only after the
    // model lock, so a redelivered trigger never takes it from the trainer.
    const runLease = await locks.adopt('transform', runId, 'model-trigger');

    const finish = async (body: Pick<ModelDoneEvent, 'outcome' | 'error'> & { exitCode?: number | null }, msgId = msgIdFor(runId, Subjects.modelDone)) => {
      await Promise.all([runLease?.release(), body.outcome === 'busy' ? undefined : modelLease?.release()]);
      await bus.publish(Subjects.modelDone, { runId, durationMs: Date.now() - started, ...body }, { msgId });
      log.info({ outcome: body.outcome, error: body.error }, 'model step ended');
      return 'done' as const;
    };
    const train = async (lease: Lease, reason: 'mismatch' | 'forced') => {
      await Promise.all([lease.handOff(), runLease?.handOff()]);
      await bus.publish(Subjects.modelMismatch, { runId, reason }, { msgId: msgIdFor(runId, Subjects.modelMismatch) });
      log.info({ reason }, 'training requested');
      return 'done' as const;
    };

    if (modelLease === null) {
      const holder = await locks.read('model');
      return finish(
        { outcome: 'busy', exitCode: null, error: `model run ${holder?.value?.runId ?? 'unknown'} is still in progress` },
        `${msgIdFor(runId, Subjects.modelDone)}:busy:${ctx.streamSequence}`,
      );
    }
    if (flags.devSkipTrigger && !flags.devForceTraining) return train(modelLease, 'forced');
    if (flags.devSkipModel && !flags.devForceTraining) return finish({ outcome: 'skipped' });

    let result;
    try {
      result = await runContainerStage(runner, bus, {
        stage: 'model-trigger',
        runId,
        image: config.images.modelTrigger,
        envDir: config.envDir,
        envFile: ENV_FILES.modelTrigger,
        mounts: [],
        ...(config.network !== undefined ? { network: config.network } : {}),
        timeoutMs: config.timeoutsMs.modelTrigger,
        ...(config.memoryBytes.modelTrigger !== undefined ? { memoryBytes: config.memoryBytes.modelTrigger } : {}),
        resume: modelLease.resumed,
        phrase: config.phrases.mismatch,
        signal: ctx.signal,
      });
    } catch (err) {
      if (flags.devForceTraining) {
        log.warn({ err: describeError(err) }, 'gate container failed; DEV_FORCE_TRAINING trains anyway');
        return train(modelLease, 'forced');
      }
      return finish({ outcome: 'failed', exitCode: null, error: describeError(err) });
    }
    if (result.status === 'handed-back') {
      await Promise.all([modelLease.handOff(), runLease?.handOff()]);
      return 'handed-back';
    }
    if (flags.devForceTraining) return train(modelLease, 'forced');
    const failure = failureOf(result, config.timeoutsMs.modelTrigger);
    if (failure !== undefined) return finish({ outcome: 'failed', exitCode: result.exitCode, error: failure });
    if (!(await modelLease.confirm())) {
      return finish({ outcome: 'failed', exitCode: result.exitCode, error: 'the model lock was lost during the gate (its lease expired)' });
    }
    if (result.phraseFound) return train(modelLease, 'mismatch');
    return finish({ outcome: 'up-to-date', exitCode: result.exitCode });
  }

  return consumerService(bus, 'model-gate', CONSUMERS.modelGate.durable, Subjects.modelTrigger, handle);
}
