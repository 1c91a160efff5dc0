import t from 'tap';
import { printReport, runSoak } from '../bench/soak';

t.test('soak: five chains, each under a different fault: nothing lost, doubled, orphaned or anomalous', async (t) => {
  const report = await runSoak({ chains: 5, seed: 7, log: (line) => t.comment(line) });
  printReport(report, (line) => t.comment(line));
  t.equal(report.started, 6, 'six runs (the concurrent-trigger chain starts two)');
  t.same(new Set(report.chains.map((c) => c.fault)).size, 5, 'every fault injected');
  t.same(report.lost, [], 'no run lost');
  t.same(report.doubled, [], 'no run doubled');
  t.same(report.orphaned, [], 'no container orphaned');
  t.same(report.lockAnomalies, [], 'no lock anomaly');
});
