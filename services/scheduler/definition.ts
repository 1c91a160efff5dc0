import { producerDefinition } from '../../shared/definition';

/** Publishes transform.trigger on the cron schedule; consumes nothing, runs no container. */
export const scheduler = producerDefinition({
  name: 'scheduler',
  create: async (deps) => (await import('./service.js')).createScheduler(deps),
});
