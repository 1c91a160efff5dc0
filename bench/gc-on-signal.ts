/**
 * Preloaded into the bench's service children (`node --expose-gc -r dist/bench/gc-on-signal.js`):
 * SIGUSR2 runs a full garbage collection, so a memory sample after it measures live memory, not garbage.
 */
process.on('SIGUSR2', () => (globalThis as { gc?: () => void }).gc?.());
