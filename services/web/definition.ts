import { producerDefinition } from '../../shared/definition';

/**
 * The HTTP API and dashboard on WEB_HOST:WEB_PORT: reads the runs records, events and logs, and does a person's
 * actions (triggers, pause) on a NATS connection as that person. Consumes nothing, runs no container.
 */
export const web = producerDefinition({
  name: 'web',
  create: async (deps) => (await import('./run.js')).webService(deps),
});
