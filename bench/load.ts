/**
 * Section 6: triggers published back to back. One wins the transform lock and runs a no-op
 * transform; the rest end busy. Event throughput, and the transformer's memory and open files over batches.
 */
import type { ClusterPipeline } from '../kit/cluster-pipeline';
import { NO_OP_CHAIN, collectGarbage, newRunId, setEnvFiles } from './stack';
import { heapUsedBytes, sampleProc, sleep, type ProcSample } from './util';

export type LoadSample = ProcSample & { heapUsedBytes: number };

export interface LoadResult {
  triggers: number;
  /** transform.done events per second, for each batch. */
  throughput: number[];
  outcomes: Record<string, number>;
  /** The transformer at idle before the first batch, and after each batch once idle again, after a full GC. */
  samples: LoadSample[];
}

export async function benchLoad(p: ClusterPipeline, triggers: number, batches: number): Promise<LoadResult> {
  // No phrase: a won run ends no-new-data and frees the lock, so later triggers can run again.
  setEnvFiles(p, { ...NO_OP_CHAIN, transform: { SCRIPT: 'true' } });
  const transformer = p.process('transformer');
  const healthPort = p.healthPort('transformer');
  const sample = async (): Promise<LoadSample> => {
    await collectGarbage(p, 'transformer');
    return { ...sampleProc(transformer.pid), heapUsedBytes: await heapUsedBytes(healthPort) };
  };
  const result: LoadResult = { triggers, throughput: [], outcomes: {}, samples: [] };
  await sleep(2000);
  result.samples.push(await sample());
  try {
    for (let b = 0; b < batches; b++) {
      const ids = new Set(Array.from({ length: triggers }, () => newRunId()));
      let remaining = ids.size;
      const all = p.waitFor(
        (e) => {
          if (e.subject !== 'transform.done' || e.data.runId === undefined || !ids.has(e.data.runId)) return false;
          const outcome = e.data.outcome ?? 'unknown';
          result.outcomes[outcome] = (result.outcomes[outcome] ?? 0) + 1;
          return --remaining === 0;
        },
        300_000,
        `${triggers} transform.done events`,
      );
      const t0 = performance.now();
      for (const runId of ids) p.client.publish('transform.trigger', JSON.stringify({ runId, reason: 'bench-load' }));
      await p.client.flush();
      const last = await all;
      result.throughput.push(triggers / ((last.at - t0) / 1000));
      await sleep(3000); // idle again: timers, sockets and in-flight containers settled
      result.samples.push(await sample());
    }
  } finally {
    setEnvFiles(p, NO_OP_CHAIN);
  }
  return result;
}
