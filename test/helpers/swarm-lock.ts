/** The swarm lock lives in the kit (the bench takes it too); the tests import it from here as before. */
export { takeSwarmLock } from '../../kit/swarm-lock';
