import { consumerDefinition, type StageDefinition } from '../../shared/definition';
import type { ServiceDeps } from '../../shared/service';

/** The gate container (stage `model-trigger`): its log says whether the dataset and the model differ. */
export const gateStage: StageDefinition = { stage: 'model-trigger', settings: 'modelTrigger', envFile: 'model_trigger.env', mounts: [], phrase: 'mismatch' };

const handler = async (deps: ServiceDeps) => (await import('./service.js')).gateHandler(deps);

/** The gate: on model.trigger, decides whether the model is retrained (`decide`), under the model lock. */
export const modelGate = consumerDefinition({ name: 'model-gate', consumes: 'model.trigger', ends: 'model.done', lock: 'model', stages: [gateStage], handler });
