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

/**
 * The labels (and `name`) of each container event dockerd logged between two times (seconds), matching `label`
 * (`key=value` or `key`): the engine's own record of what ran, whoever made it and whether it is gone since.
 */
export async function containerEventsBetween(engine: Docker, event: 'create' | 'start', label: string, sinceSec: number, untilSec: number): Promise<Record<string, string>[]> {
  const stream = (await engine.getEvents({ since: sinceSec, until: untilSec, filters: { type: ['container'], event: [event], label: [label] } })) as NodeJS.ReadableStream;
  let text = '';
  for await (const chunk of stream as AsyncIterable<Buffer>) text += chunk.toString();
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => (JSON.parse(l) as { Actor: { Attributes: Record<string, string> } }).Actor.Attributes);
}
