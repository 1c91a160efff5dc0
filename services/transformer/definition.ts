import { consumerDefinition, type StageDefinition } from '../../shared/definition';
import type { ServiceDeps } from '../../shared/service';

const mounts = [
  { hostDir: 'aws', target: '/app/.aws' },
  { hostDir: 'processed', target: '/app/processed' },
  { hostDir: 'viz', target: '/app/viz' },
] as const;

/** The transform container: reads from S3, writes the processed and visualisation folders, says when there is new data. */
export const transformStage: StageDefinition = { stage: 'transform', settings: 'transform', envFile: 'transform.env', mounts, phrase: 'newData' };

const handler = async (deps: ServiceDeps) => (await import('./service.js')).transformerHandler(deps);

const stages = [transformStage];

/** Runs the transform on each transform.trigger; its transform lock spans the whole run (see service.ts). */
export const transformer = consumerDefinition({ name: 'transformer', consumes: 'transform.trigger', ends: 'transform.done', lock: 'transform', stages, handler });
