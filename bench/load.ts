/**
 * Section 6: triggers published back to back. One wins the transform lock and runs a no-op
 * transform; the rest end busy. Event throughput, and the transformer's memory and open files over batches.
 */
import { NO_OP_CHAIN, newRunId, type Stack } from './stack';
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

export async function benchLoad(stack: Stack, triggers: number, batches: number): Promise<LoadResult> {
  // No phrase: a won run ends no-new-data and frees the lock, so later triggers can run again.
  stack.writeEnvFiles({ ...NO_OP_CHAIN, transform: { SCRIPT: 'true' } });
  const transformer = stack.child('transformer');
  const sample = async (): Promise<LoadSample> => {
    await transformer.collectGarbage();
    return { ...sampleProc(transformer.pid), heapUsedBytes: await heapUsedBytes(transformer.healthPort) };
  };
  const result: LoadResult = { triggers, throughput: [], outcomes: {}, samples: [] };
  await sleep(2000);
  result.samples.push(await sample());
  try {
    for (let b = 0; b < batches; b++) {
      const ids = new Set(Array.from({ length: triggers }, () => newRunId()));
      let remaining = ids.size;
      const all = stack.waitFor(
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
      for (const runId of ids) stack.client.publish('transform.trigger', JSON.stringify({ runId, reason: 'bench-load' }));
      await stack.client.flush();
      const last = await all;
      result.throughput.push(triggers / ((last.at - t0) / 1000));
      await sleep(3000); // idle again: timers, sockets and in-flight containers settled
      result.samples.push(await sample());
    }
  } finally {
    stack.writeEnvFiles(NO_OP_CHAIN);
  }
  return result;
}
