import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ENV_FILES } from '../services/index';

export type EnvFileKey = keyof typeof ENV_FILES;
export type EnvFiles = Partial<Record<EnvFileKey, Record<string, string>>>;

/** A run's temp directories: the env dir and the three host data dirs the stages mount. */
export interface RunDirs {
  root: string;
  env: string;
  aws: string;
  processed: string;
  viz: string;
}

export function makeRunDirs(prefix: string): RunDirs {
  const root = mkdtempSync(join(tmpdir(), prefix));
  const dirs = { root, env: join(root, 'env'), aws: join(root, 'aws'), processed: join(root, 'processed'), viz: join(root, 'viz') };
  for (const dir of [dirs.env, dirs.aws, dirs.processed, dirs.viz]) mkdirSync(dir);
  return dirs;
}

/** What the stand-in images do by default: new data, both loads, a mismatch, training. */
const DEFAULT_ENV_FILES: Record<EnvFileKey, Record<string, string>> = {
  transform: { NEW_DATA: '1' },
  loadProcessed: { TARGET: 'processed' },
  loadViz: { TARGET: 'viz' },
  modelTrigger: { MISMATCH: '1' },
  train: {},
};

/** Writes every stage's env file: the defaults, with `overrides` replacing whole files. */
export function writeEnvFiles(envDir: string, overrides: EnvFiles = {}): void {
  for (const [key, values] of Object.entries({ ...DEFAULT_ENV_FILES, ...overrides })) {
    // Single quotes keep a value literal in dotenv (double quotes would keep backslash escapes as typed).
    const text = Object.entries(values)
      .map(([k, v]) => `${k}=${v.includes("'") ? JSON.stringify(v) : `'${v}'`}`)
      .join('\n');
    writeFileSync(join(envDir, ENV_FILES[key as EnvFileKey]), `${text}\n`);
  }
}
