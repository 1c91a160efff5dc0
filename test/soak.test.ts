import t from 'tap';
import { FAULTS, printReport, runSoak } from '../kit/soak';

t.test('soak: five chains, each under a different fault: every run ends once, as its fault calls for; nothing lost, doubled, orphaned or anomalous', async (t) => {
  const seed = 7;
  const report = await runSoak({ chains: 5, seed, log: (line) => t.comment(line) });
  printReport(report, (line) => t.comment(line));
  t.equal(report.started, 6, 'six runs (the concurrent-trigger chain starts two)');
  t.same(new Set(report.chains.map((c) => c.fault)), new Set(FAULTS), 'every fault injected');
  t.ok(
    report.chains.every((c) => c.runIds.every((id) => c.expected[id] !== undefined)),
    'each run has the end its fault calls for: trained after a restart, a NATS crash or a duplicate; failed only for the failing stage; busy only for the concurrent trigger',
  );
  t.same(report.wrong, [], `no run ended otherwise (seed ${seed}): no false failed after an injected restart`);
  t.same(report.lost, [], 'no run lost');
  t.same(report.doubled, [], 'no run doubled');
  t.equal(report.completed, report.started, 'every run completed correctly, once');
  t.same(report.orphaned, [], 'no container orphaned');
  t.same(report.lockAnomalies, [], 'no lock anomaly');
});
