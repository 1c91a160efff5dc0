/** The Docker side of a harness: the engine, fresh run ids, and waiting for a run's containers to appear or go. */
import { randomBytes } from 'node:crypto';
import Docker from 'dockerode';
import { LABELS } from '../shared/docker';

export const docker = new Docker();

/** A fresh run id: `prefix` and ten hex digits. */
export const uid = (prefix = 'r') => `${prefix}${randomBytes(5).toString('hex')}`;

/** Containers the pipeline labels as its own, of one run or of every run. */
export async function managedContainers(runId?: string): Promise<Docker.ContainerInfo[]> {
  const label = [`${LABELS.managed}=true`];
  if (runId !== undefined) label.push(`${LABELS.runId}=${runId}`);
  return docker.listContainers({ all: true, filters: { label } });
}

/**
 * Lists again until the list is empty or `timeoutMs` has passed; resolves with the last list. A service removes a
 * container only after its step's outcome is stored, a moment after the event a test waits for.
 */
export async function untilNone<T>(list: () => Promise<T[]>, timeoutMs = 10_000): Promise<T[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = await list();
    if (left.length === 0 || Date.now() > deadline) return left;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits for a container of the run and stage to be running. */
export async function waitForContainer(runId: string, stage: string, timeoutMs = 20_000): Promise<Docker.ContainerInfo> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const found = await docker.listContainers({ filters: { label: [`${LABELS.runId}=${runId}`, `${LABELS.stage}=${stage}`], status: ['running'] } });
    if (found[0] !== undefined) return found[0];
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no running ${stage} container for ${runId} after ${timeoutMs} ms`);
}
