import { withClient } from '../client';
import { recentRuns, type RunSummary, type StepOutcome } from '../history';
import { formatDuration, paintOutcome, painter, useColour, type Paint } from '../view';

const STAGE_COLUMNS = ['transform', 'load', 'gate', 'train'] as const;

const cell = (s: StepOutcome | undefined) => (s === undefined ? '-' : s.durationMs !== undefined ? `${s.outcome} ${formatDuration(s.durationMs)}` : s.outcome);
const result = (run: RunSummary) => run.verdict?.result ?? 'running';
const total = (run: RunSummary) => formatDuration(Date.parse(run.lastEventAt) - Date.parse(run.startedAt));

/** A table with padded columns; colour is applied after padding so escapes do not skew the widths. */
export function runsTable(runs: readonly RunSummary[], paint: Paint): string {
  const header = ['RUN', 'STARTED (UTC)', 'TRIGGER', 'TRANSFORM', 'LOAD', 'GATE', 'TRAIN', 'RESULT', 'TOTAL'];
  const rows = runs.map((run) => [
    run.runId,
    run.startedAt.slice(0, 19).replace('T', ' '),
    run.trigger,
    ...STAGE_COLUMNS.map((stage) => cell(run.stages[stage])),
    result(run),
    total(run),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[], colourOf: (text: string, i: number) => string) =>
    cells
      .map((c, i) => colourOf(c, i) + ' '.repeat((widths[i] ?? 0) - c.length))
      .join('  ')
      .trimEnd();
  const errors = runs.flatMap((run) => (run.verdict?.error !== undefined ? [`  ${run.runId}: ${run.verdict.error}`] : []));
  return [
    line(header, (t) => paint('bold', t)),
    ...rows.map((r) => line(r, (t, i) => (i === 7 ? paintOutcome(paint, t) : t))),
    ...(errors.length > 0 ? ['', 'errors:', ...errors] : []),
  ].join('\n');
}

/** `brain runs`: the last `limit` runs as a table, or as JSON. */
export function run(opts: { limit: number; json?: boolean }): Promise<void> {
  return withClient(async (nc) => {
    const { runs, invalid } = await recentRuns(nc, opts.limit);
    if (opts.json === true) {
      process.stdout.write(`${JSON.stringify(runs.map((run) => ({ ...run, result: result(run) })))}\n`);
    } else if (runs.length === 0) {
      process.stdout.write('no runs yet\n');
    } else {
      process.stdout.write(`${runsTable(runs, painter(useColour(process.stdout)))}\n`);
    }
    for (const bad of invalid) process.stderr.write(`brain: invalid ${bad.subject} event in the history (seq ${bad.seq}): ${bad.error}\n`);
  });
}
