import { describeError } from '../../shared/errors';
import { ENV_FILES } from '../../shared/envfile';
import { Subjects, type EventMap, type LoadDoneEvent, type Stage } from '../../shared/events';
import { CONSUMERS } from '../../shared/nats';
import { failureOf, runContainerStage } from '../../shared/stage';
import { msgIdFor, hostDirs, consumerService, type Service, type ServiceDeps } from '../../shared/service';
import type { HandlerContext, HandlerResult } from '../../shared/bus';

type LoadTarget = 'processed' | 'viz';
type LoadReport = LoadDoneEvent['loads'][number] & { error?: string; handedBack?: boolean };

/**
 * On data.new, runs the two DVC load containers in parallel, then asks for the model step.
 * It takes over the run's transform lock, so no transform writes into a folder being loaded and emptied.
 */
export function createLoader(deps: ServiceDeps): Service {
  const { config, bus, locks, runner, logger } = deps;
  const { aws, processed, viz } = hostDirs(config, 'loader');
  const targets: Record<LoadTarget, { stage: Stage; source: string; envFile: string }> = {
    processed: { stage: 'load-processed', source: processed, envFile: ENV_FILES.loadProcessed },
    viz: { stage: 'load-viz', source: viz, envFile: ENV_FILES.loadViz },
  };

  async function load(target: LoadTarget, runId: string, resume: boolean, signal: AbortSignal): Promise<LoadReport> {
    const { stage, source, envFile } = targets[target];
    try {
      const result = await runContainerStage(runner, bus, {
        stage,
        runId,
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
        resume,
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
    const started = Date.now();
    const loadDone = (body: Pick<LoadDoneEvent, 'outcome' | 'loads' | 'error'>) =>
      bus.publish(Subjects.loadDone, { runId, durationMs: Date.now() - started, ...body }, { msgId: msgIdFor(runId, Subjects.loadDone) });

    const lease = await locks.acquire('transform', runId, 'load');
    if (lease === null) {
      const holder = await locks.read('transform');
      const error = `the transform lock is held by run ${holder?.value?.runId ?? 'unknown'}; loading now could lose its data`;
      log.error(error);
      await loadDone({ outcome: 'failed', loads: [], error });
      return 'done';
    }
    if (config.flags.isDevelopment) {
      log.info('IS_DEVELOPMENT: loads skipped');
      await loadDone({ outcome: 'skipped', loads: [] });
    } else {
      const reports = await Promise.all([load('processed', runId, lease.resumed, ctx.signal), load('viz', runId, lease.resumed, ctx.signal)]);
      if (reports.some((r) => r.handedBack)) {
        await lease.handOff();
        return 'handed-back';
      }
      const loads = reports.map(({ target, outcome, exitCode }) => ({ target, outcome, exitCode }));
      const failed = reports.filter((r) => r.outcome === 'failed');
      if (failed.length > 0) {
        const error = failed.map((r) => `load ${r.target}: ${r.error ?? 'failed'}`).join('; ');
        log.error({ error }, 'load failed');
        await lease.release();
        await loadDone({ outcome: 'failed', loads, error });
        return 'done';
      }
      if (!(await lease.confirm())) {
        await loadDone({ outcome: 'failed', loads, error: 'the transform lock was lost during the loads (its lease expired)' });
        return 'done';
      }
      await loadDone({ outcome: 'loaded', loads });
    }
    await lease.handOff();
    await bus.publish(Subjects.modelTrigger, { runId, reason: 'loaded' }, { msgId: msgIdFor(runId, Subjects.modelTrigger) });
    return 'done';
  }

  return consumerService(bus, 'loader', CONSUMERS.loader.durable, Subjects.dataNew, handle);
}
