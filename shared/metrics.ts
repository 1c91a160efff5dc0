import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** Prometheus metrics of one service process. A fresh registry each, so tests can run several in one process. */
export interface Metrics {
  readonly registry: Registry;
  stageEnded(stage: string, outcome: string, durationMs: number): void;
  containerStarted(stage: string): void;
  lockContended(lock: string): void;
  eventRejected(subject: string): void;
}

export function createMetrics(defaultLabels: Record<string, string> = {}): Metrics {
  const registry = new Registry();
  registry.setDefaultLabels(defaultLabels);
  collectDefaultMetrics({ register: registry, prefix: 'brain_' });
  const runs = new Counter({ name: 'brain_stage_runs_total', help: 'Stage runs by stage and outcome', labelNames: ['stage', 'outcome'], registers: [registry] });
  const duration = new Histogram({
    name: 'brain_stage_duration_seconds',
    help: 'Stage duration from trigger to outcome',
    labelNames: ['stage'],
    buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600],
    registers: [registry],
  });
  const starts = new Counter({ name: 'brain_container_starts_total', help: 'Containers started, by stage', labelNames: ['stage'], registers: [registry] });
  const contention = new Counter({ name: 'brain_lock_contention_total', help: 'Triggers that found their lock held', labelNames: ['lock'], registers: [registry] });
  const rejected = new Counter({ name: 'brain_events_rejected_total', help: 'Invalid events rejected, by subject', labelNames: ['subject'], registers: [registry] });
  return {
    registry,
    stageEnded(stage, outcome, durationMs) {
      runs.inc({ stage, outcome });
      duration.observe({ stage }, durationMs / 1000);
    },
    containerStarted: (stage) => starts.inc({ stage }),
    lockContended: (lock) => contention.inc({ lock }),
    eventRejected: (subject) => rejected.inc({ subject }),
  };
}
