import { z } from 'zod';
import { MAX_REASON_CHARS, RunId } from '../../shared/events';

const intFromQuery = (min: number, max: number, fallback: number) =>
  z.coerce
    .number({ message: `must be a whole number from ${min} to ${max}` })
    .int(`must be a whole number from ${min} to ${max}`)
    .min(min)
    .max(max)
    .default(fallback);

export const RunsQuery = z.strictObject({
  limit: intFromQuery(1, 200, 25),
  before: z.coerce.number({ message: 'must be a cursor (`next`) from a previous page' }).int().positive().optional(),
});

export const RunParams = z.strictObject({ runId: RunId });

export const LogsQuery = z.strictObject({
  limit: intFromQuery(1, 5000, 500),
  before: z
    .string()
    .regex(/^\d{1,15}(-\d{1,9})?$/, 'must be a cursor (`before`) from a previous page')
    .optional(),
});

export const EventsQuery = z.strictObject({
  since: z.coerce.number({ message: 'must be a BRAIN_EVENTS stream sequence' }).int().min(0).optional(),
});

/** Like the bus's triggers: unknown fields are refused. */
export const TriggerRequest = z.strictObject({
  pipeline: z.enum(['transform', 'model'], { message: 'must be "transform" or "model"' }),
  runId: RunId.optional(),
  reason: z.string().min(1).max(MAX_REASON_CHARS).optional(),
});

/** Airflow 2's `POST /api/v1/dags/{dag_id}/dagRuns` body, as far as it applies here. */
export const DagRunRequest = z.strictObject({
  dag_run_id: RunId.optional(),
  conf: z.record(z.string(), z.unknown()).optional(),
  note: z.string().max(MAX_REASON_CHARS).nullable().optional(),
  logical_date: z.string().nullable().optional(),
  execution_date: z.string().nullable().optional(),
});

export const AssetParams = z.strictObject({
  version: z.string().regex(/^[0-9a-f]{1,64}$/, 'must be an asset version'),
  file: z.string().regex(/^[a-z0-9-]{1,40}\.(js|css|svg)$/, 'must be an asset name'),
});

export const DagParams = z.strictObject({ dagId: z.string().max(250) });
export const DagRunParams = z.strictObject({ dagId: z.string().max(250), dagRunId: RunId });

/** The one-line message of a zod failure, naming each field. */
export function problem(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((i) => {
      const where = i.path.length > 0 ? i.path.join('.') : '(body)';
      if (i.code === 'unrecognized_keys') return `${where}: unknown field(s) ${i.keys.map((k) => JSON.stringify(k)).join(', ')}`;
      return `${where}: ${i.message}`;
    })
    .join('; ');
}
