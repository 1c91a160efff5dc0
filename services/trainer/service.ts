import { describeError } from '../../shared/errors';
import { ENV_FILES } from '../../shared/envfile';
import { Subjects, type EventMap, type ModelDoneEvent } from '../../shared/events';
import { CONSUMERS } from '../../shared/nats';
import { failureOf, finishStep, priorEnding, runContainerStage, stepEvent } from '../../shared/stage';
import { awsDir, msgIdFor, consumerService, type Service, type ServiceDeps } from '../../shared/service';
import { elapsedMs, monotonicNow, type HandlerContext, type HandlerResult } from '../../shared/bus';

/** On model.mismatch, runs the training container and ends the model run (and its transform run). */
export function createTrainer(deps: ServiceDeps): Service {
  const { config, bus, locks, runner, records, logger } = deps;
  const aws = awsDir(config, 'trainer');

  async function handle(event: EventMap['model.mismatch'], ctx: HandlerContext): Promise<HandlerResult> {
    const { runId } = event;
    const log = logger.child({ stage: 'train', runId });
    const started = monotonicNow();
    const step = await records.open({ runId, step: 'train', subject: Subjects.modelMismatch, trigger: ctx.streamSequence, reason: event.reason });
    const finishDeps = { bus, runner, logger: log };
    if (!step.sameMessage) {
      log.info({ first: step.record.trigger }, 'a second model.mismatch for a run whose training already began; ignored');
      return 'done';
    }
    const prior = await priorEnding(finishDeps, step, 'the training');
    if (prior !== undefined) return prior;

    const runLease = await locks.adopt('transform', runId, 'train');
    const modelLease = await locks.acquire('model', runId, 'train');
    const finish = (body: Pick<ModelDoneEvent, 'outcome' | 'error'> & { exitCode?: number | null }) =>
      finishStep(
        finishDeps,
        step,
        [stepEvent(Subjects.modelDone, { runId, durationMs: elapsedMs(started), ...body }, msgIdFor(runId, Subjects.modelDone))],
        () => Promise.all([runLease?.release(), modelLease?.release()]),
      ).then((r) => {
        log.info({ outcome: body.outcome, error: body.error }, 'training ended');
        return r;
      });
    if (modelLease === null) {
      const holder = await locks.read('model');
      return finish({ outcome: 'failed', exitCode: null, error: `the model lock was taken by run ${holder?.value?.runId ?? 'unknown'} before training could start` });
    }
    log.info({ reason: event.reason }, 'training started');
    let result;
    try {
      result = await runContainerStage(runner, bus, step, {
        stage: 'train',
        runId,
        image: config.images.train,
        envDir: config.envDir,
        envFile: ENV_FILES.train,
        mounts: [{ source: aws, target: '/root/.aws' }],
        ...(config.network !== undefined ? { network: config.network } : {}),
        timeoutMs: config.timeoutsMs.train,
        ...(config.memoryBytes.train !== undefined ? { memoryBytes: config.memoryBytes.train } : {}),
        signal: AbortSignal.any([ctx.signal, modelLease.lost]),
      });
    } catch (err) {
      return finish({ outcome: 'failed', exitCode: null, error: describeError(err) });
    }
    if (result.status === 'handed-back' && !modelLease.lost.aborted) {
      await Promise.all([modelLease.handOff(), runLease?.handOff()]);
      return 'handed-back';
    }
    const failure = failureOf(result, config.timeoutsMs.train);
    if (modelLease.lost.aborted || (failure === undefined && !(await modelLease.confirm()))) {
      if (await locks.heldBy('model', runId)) return 'done'; // another delivery of this run took over and carries on
      return finish({ outcome: 'failed', exitCode: result.exitCode, error: 'the model lock was lost during training (its lease expired)' });
    }
    return finish(failure === undefined ? { outcome: 'trained', exitCode: result.exitCode } : { outcome: 'failed', exitCode: result.exitCode, error: failure });
  }

  return consumerService(bus, 'trainer', CONSUMERS.trainer.durable, Subjects.modelMismatch, handle);
}
