/**
 * Section 3: a transform container printing a large log with the phrase on its last line. The service's
 * stage (attach, demux, scan, forward every line to NATS) against `docker logs -f | grep -F`.
 */
import { LABELS, containerName } from '../shared/docker';
import type { ClusterPipeline } from '../kit/cluster-pipeline';
import { TEST_IMAGES } from '../kit/stand-ins';
import { NO_OP_CHAIN, PHRASES, newRunId, setEnvFiles, trigger } from './stack';
import { BASELINE_LABEL, sampleProc, sleep, timeShell, watchPeakRss } from './util';

const LINE = 'INFO 2026-01-01T00:00:00Z etl: transformed batch of rows from the source table into the processed area';

/** A shell command printing `bytes` of log lines, then the phrase on a line of its own. */
const bigLog = (bytes: number) => `yes '${LINE}' | head -c ${bytes}; echo; echo '${PHRASES.newData}'`;

/**
 * A failed run is retried (twice at most) with a warning: a container killed from outside (by the host's
 * OOM killer, say) measures nothing.
 */
async function serviceRunRetried(p: ClusterPipeline): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await serviceRun(p);
    } catch (err) {
      if (attempt === 3) throw err;
      process.stderr.write(`   warning: ${(err as Error).message}; retrying\n`);
    }
  }
}

async function serviceRun(p: ClusterPipeline): Promise<number> {
  const runId = newRunId();
  const transformed = p.waitFor((e) => e.subject === 'transform.done' && e.data.runId === runId, 600_000, `transform.done of ${runId}`);
  const chainEnd = p.waitFor((e) => e.subject === 'model.done' && e.data.runId === runId, 600_000, `model.done of ${runId}`);
  const t0 = await trigger(p, runId);
  const done = await transformed;
  if (done.data.outcome !== 'new-data') {
    chainEnd.catch(() => undefined); // no chain follows
    throw new Error(`transform ${runId} ended ${done.data.outcome}, not new-data: ${done.data.error ?? 'the phrase was missed'}`);
  }
  await chainEnd; // the rest of the no-op chain holds the transform lock until it ends
  return done.at - t0;
}

/** `docker run` options of the transform container, as the service creates it (but BASELINE_LABEL). */
function runOptions(p: ClusterPipeline, runId: string, bytes: number): string {
  const { aws, processed, viz } = p.dirs;
  return [
    `--name ${containerName('transform', runId)}`,
    `--label ${BASELINE_LABEL} --label ${LABELS.stage}=transform --label ${LABELS.runId}=${runId}`,
    `-e BRAIN_RUN_ID=${runId} -e BRAIN_STAGE=transform -e "SCRIPT=${bigLog(bytes)}"`,
    `--mount type=bind,source=${aws},target=/app/.aws --mount type=bind,source=${processed},target=/app/processed --mount type=bind,source=${viz},target=/app/viz`,
    TEST_IMAGES.transform,
  ].join(' ');
}

/** The baseline: the container started detached, its log followed and grepped, then removed. */
function logsFollowScript(p: ClusterPipeline, bytes: number): string {
  const runId = newRunId();
  const name = containerName('transform', runId);
  return [
    'set -o pipefail',
    `docker run -d ${runOptions(p, runId, bytes)} > /dev/null`,
    `docker logs -f ${name} 2>&1 | grep -F '${PHRASES.newData}' > /dev/null || { docker rm -f ${name} > /dev/null; exit 1; }`,
    `docker rm -f ${name} > /dev/null`,
  ].join('\n');
}

/** The tighter floor: `docker run --rm` attached, as the service reads its containers, piped to grep. */
function attachScript(p: ClusterPipeline, bytes: number): string {
  return `set -o pipefail\ndocker run --rm ${runOptions(p, newRunId(), bytes)} 2>&1 | grep -F '${PHRASES.newData}' > /dev/null`;
}

export interface LogScanResult {
  serviceMs: number[];
  /** `docker logs -f | grep -F`. */
  baselineMs: number[];
  /** `docker run | grep -F`. */
  attachMs: number[];
}

export async function benchLogScan(p: ClusterPipeline, bytes: number, reps: number): Promise<LogScanResult> {
  setEnvFiles(p, { ...NO_OP_CHAIN, transform: { SCRIPT: bigLog(bytes) } });
  const result: LogScanResult = { serviceMs: [], baselineMs: [], attachMs: [] };
  for (let i = 0; i < reps; i++) {
    result.serviceMs.push(await serviceRunRetried(p));
    result.baselineMs.push(await timeShell(logsFollowScript(p, bytes)));
    result.attachMs.push(await timeShell(attachScript(p, bytes)));
  }
  setEnvFiles(p, NO_OP_CHAIN);
  return result;
}

export interface LogMemoryResult {
  bytes: number;
  idleRssKb: number;
  peakRssKb: number;
  stageMs: number;
}

/** One run of a `bytes` log, sampling the transformer's RSS every 20 ms. */
export async function benchLogMemory(p: ClusterPipeline, bytes: number): Promise<LogMemoryResult> {
  const pid = p.process('transformer').pid;
  setEnvFiles(p, { ...NO_OP_CHAIN, transform: { SCRIPT: bigLog(bytes) } });
  await sleep(2000);
  const idleRssKb = sampleProc(pid).rssKb;
  const watch = watchPeakRss(pid);
  const stageMs = await serviceRunRetried(p);
  const peakRssKb = Math.max(watch.stop(), sampleProc(pid).rssKb);
  setEnvFiles(p, NO_OP_CHAIN);
  return { bytes, idleRssKb, peakRssKb, stageMs };
}
