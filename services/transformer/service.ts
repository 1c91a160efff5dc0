import { describeError } from '../../shared/errors';
import { ENV_FILES } from '../../shared/envfile';
import { Subjects, type EventBody, type TriggerEvent } from '../../shared/events';
import { CONSUMERS } from '../../shared/nats';
import { failureOf, runContainerStage } from '../../shared/stage';
import { generatedRunId, msgIdFor, hostDirs, consumerService, type Service, type ServiceDeps } from '../../shared/service';
import type { HandlerContext, HandlerResult } from '../../shared/bus';

/**
 * Runs the transform container on each transform.trigger. The transform lock it takes spans the
 * whole run: on new data it is handed to the loader, which hands it on to the model step.
 */
export function createTransformer(deps: ServiceDeps): Service {
  const { config, bus, locks, runner, logger } = deps;
  const { aws, processed, viz } = hostDirs(config, 'transformer');

  async function handle(event: TriggerEvent, ctx: HandlerContext): Promise<HandlerResult> {
    const runId = event.runId ?? generatedRunId('t', ctx);
    const log = logger.child({ stage: 'transform', runId });
    const started = Date.now();
    const done = (body: Omit<EventBody<'transform.done'>, 'runId' | 'durationMs'>, msgId = msgIdFor(runId, Subjects.transformDone)) =>
      bus.publish(Subjects.transformDone, { runId, durationMs: Date.now() - started, ...body }, { msgId });

    // A redelivery of this trigger takes back its own run's lock; any other trigger needs it free.
    const lease = await locks.acquire('transform', runId, 'transform', { trigger: ctx.streamSequence });
    if (lease === null) {
      const holder = await locks.read('transform');
      if (holder?.value?.runId === runId && holder.value.trigger === ctx.streamSequence) {
        log.info({ stage: holder.value.stage }, 'redelivered trigger of a run that has moved on; nothing to do');
        return 'done';
      }
      log.info({ heldBy: holder?.value?.runId }, 'transform run in progress; trigger ends busy');
      await done({ outcome: 'busy', exitCode: null, error: `run ${holder?.value?.runId ?? 'unknown'} is still in progress` }, `${msgIdFor(runId, Subjects.transformDone)}:busy:${ctx.streamSequence}`);
      return 'done';
    }
    log.info({ reason: event.reason }, 'transform run started');

    let result;
    try {
      result = await runContainerStage(runner, bus, {
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
        resume: lease.resumed,
        phrase: config.phrases.newData,
        signal: ctx.signal,
      });
    } catch (err) {
      log.error({ err: describeError(err) }, 'transform stage failed');
      await lease.release();
      await done({ outcome: 'failed', exitCode: null, error: describeError(err) });
      return 'done';
    }
    if (result.status === 'handed-back') {
      await lease.handOff();
      return 'handed-back';
    }
    const failure = failureOf(result, config.timeoutsMs.transform);
    if (!(await lease.confirm())) {
      await done({ outcome: 'failed', exitCode: result.exitCode, error: 'the transform lock was lost during the run (its lease expired)' });
      return 'done';
    }
    if (failure !== undefined || !result.phraseFound) {
      await lease.release();
      await done(failure !== undefined ? { outcome: 'failed', exitCode: result.exitCode, error: failure } : { outcome: 'no-new-data', exitCode: result.exitCode });
      return 'done';
    }
    await done({ outcome: 'new-data', exitCode: result.exitCode });
    await lease.handOff(); // before data.new: the loader takes the lease over from here
    await bus.publish(Subjects.dataNew, { runId }, { msgId: msgIdFor(runId, Subjects.dataNew) });
    return 'done';
  }

  return consumerService(bus, 'transformer', CONSUMERS.transformer.durable, Subjects.transformTrigger, handle);
}
