import { consumerDefinition, type StageDefinition } from '../../shared/definition';
import type { ServiceDeps } from '../../shared/service';

/** The training container. */
export const trainStage: StageDefinition = { stage: 'train', settings: 'train', envFile: 'model.env', mounts: [{ hostDir: 'aws', target: '/root/.aws' }] };

const handler = async (deps: ServiceDeps) => (await import('./service.js')).trainerHandler(deps);

/** Trains on model.mismatch and ends the model run (and the transform run it belongs to). */
export const trainer = consumerDefinition({ name: 'trainer', consumes: 'model.mismatch', ends: 'model.done', lock: 'model', stages: [trainStage], handler });
