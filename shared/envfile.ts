import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'dotenv';
import { ErrorCode, StageError } from './errors';

/** Reads a stage's env file. Its values are secrets: they go to the container and nowhere else. */
export async function readEnvFile(envDir: string, file: string): Promise<Record<string, string>> {
  const path = join(envDir, file);
  try {
    return parse(await readFile(path));
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : 'cannot be read';
    throw new StageError(ErrorCode.EnvFile, `env file ${path} ${reason}`, { cause: err });
  }
}
