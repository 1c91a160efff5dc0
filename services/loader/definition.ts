import { consumerDefinition, type StageDefinition } from '../../shared/definition';
import type { ServiceDeps } from '../../shared/service';

const aws = { hostDir: 'aws', target: '/root/.aws' } as const;
const processed = { hostDir: 'processed', target: '/app/collect_point' } as const;
const viz = { hostDir: 'viz', target: '/app/collect_point' } as const;

/** The DVC load of the processed folder. */
export const loadProcessedStage: StageDefinition = { stage: 'load-processed', settings: 'load', envFile: 'linage_processed.env', mounts: [processed, aws] };

/** The DVC load of the visualisation folder. */
export const loadVizStage: StageDefinition = { stage: 'load-viz', settings: 'load', envFile: 'linage_viz.env', mounts: [viz, aws] };

const handler = async (deps: ServiceDeps) => (await import('./service.js')).loaderHandler(deps);
const stages = [loadProcessedStage, loadVizStage];

/** Runs both loads on data.new, under the run's transform lock, then asks for the model step. */
export const loader = consumerDefinition({ name: 'loader', consumes: 'data.new', ends: 'load.done', lock: 'transform', stages, handler });
