/** Section 5: idle memory of each service process, and of the whole compose stack. */
import { rmSync } from 'node:fs';
import type { ClusterPipeline } from '../kit/cluster-pipeline';
import { buildComposeImages, localComposeProject } from '../kit/compose';
import { makeRunDirs } from '../kit/run-dirs';
import { SERVICE_NAMES } from '../services/index';
import { exec, pssKb, sampleProc } from './util';

/** Idle VmRSS and PSS (kB) of each service child process. */
export function serviceMemory(p: ClusterPipeline): Record<string, { rssKb: number; pssKb: number }> {
  const out: Record<string, { rssKb: number; pssKb: number }> = {};
  for (const [key, child] of p.processes) out[key.split('#')[0] ?? key] = { rssKb: sampleProc(child.pid).rssKb, pssKb: pssKb(child.pid) };
  return out;
}

const UNITS: Record<string, number> = { B: 1 / 1024, KiB: 1, MiB: 1024, GiB: 1024 * 1024, kB: 1000 / 1024, MB: (1000 * 1000) / 1024, GB: 1e9 / 1024 };

/** `12.5MiB` → kB. */
function parseMem(text: string): number {
  const m = /^([\d.]+)\s*([A-Za-z]+)$/.exec(text.trim());
  if (m === null) throw new Error(`cannot read memory usage ${text}`);
  return Number(m[1]) * (UNITS[m[2] as string] ?? Number.NaN);
}

/**
 * Brings up the repository's docker-compose.yml (nats and every service, images built on this
 * machine as the compose smoke test does), waits until healthy and idle, and reads `docker stats --no-stream`.
 */
export async function composeFootprint(): Promise<Record<string, number>> {
  await buildComposeImages();
  const dirs = makeRunDirs('brain-bench-compose-');
  const { project } = localComposeProject('brainbench', dirs);
  try {
    await project.compose('up', '-d', '--no-build');
    const containers = await project.waitHealthy(1 + SERVICE_NAMES.length, 120_000);
    await new Promise((r) => setTimeout(r, 5000));
    const stats = await exec('docker', ['stats', '--no-stream', '--format', '{{.ID}} {{.MemUsage}}', ...containers.map((c) => c.Id)]);
    const out: Record<string, number> = {};
    for (const line of stats.split('\n').filter((l) => l !== '')) {
      const [id, usage] = [line.slice(0, line.indexOf(' ')), line.slice(line.indexOf(' ') + 1)];
      const c = containers.find((x) => x.Id.startsWith(id));
      out[c?.Config.Labels['com.docker.compose.service'] ?? id] = parseMem(usage.split('/')[0] ?? '');
    }
    return out;
  } finally {
    await project.destroy([]);
    rmSync(dirs.root, { recursive: true, force: true });
  }
}
