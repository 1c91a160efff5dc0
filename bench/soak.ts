/**
 * `npm run soak`: the kit's soak (N chains, each under one random fault) at length, with its report.
 *
 *   node dist/bench/soak.js [--chains N] [--seed S]
 *
 * Exits 1 when anything was lost, doubled, wrong, orphaned or anomalous, 2 when the soak itself failed.
 */
import { failed, printReport, runSoak } from '../kit/soak';

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`);
  const value = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isInteger(value) || value < 0) throw new Error(`--${name} must be a whole number`);
  return value;
};
const chains = arg('chains', 20);
const seed = arg('seed', Date.now() % 1_000_000);
const out = (line: string) => process.stdout.write(`${line}\n`);
out(`soak: ${chains} chains, seed ${seed}`);
runSoak({ chains, seed, log: out }).then(
  (report) => {
    printReport(report, out);
    process.exitCode = failed(report) ? 1 : 0;
  },
  (err: unknown) => {
    process.stderr.write(`soak failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exitCode = 2;
  },
);
