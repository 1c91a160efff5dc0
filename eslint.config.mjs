// ESLint flat config: ESLint's and typescript-eslint's recommended rules, and the type-aware rules below, over every
// TypeScript file (with the types of tsconfig.json's project).
import eslint from '@eslint/js';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig(
  { ignores: ['dist/', 'node_modules/', '.tap/', 'test/tmp/'] },
  eslint.configs.recommended,
  tseslint.configs.recommended,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // The mistakes a reviewer catches today: a promise nobody awaits or handles, a promise where a callback's
      // result is ignored, an await on a non-promise, a switch that misses a case of a union.
      '@typescript-eslint/no-floating-promises': [
        'error',
        // tap queues a subtest and waits for it itself; its failures are failed assertions, never a rejection.
        { allowForKnownSafePromises: [{ from: 'package', name: 'PromiseWithSubtest', package: '@tapjs/core' }] },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }],
      // `let p; t.teardown(() => p?.close()); p = await start()`: the clean-up is registered before the start.
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    extends: [tseslint.configs.disableTypeChecked],
    languageOptions: { globals: { require: 'readonly', process: 'readonly', module: 'writable', __dirname: 'readonly', URL: 'readonly' } },
    // bin/brain.js is CommonJS, as the package is.
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    // The dashboard's page code: plain ES modules run by the browser (no build step), with the browser's globals.
    files: ['services/web/public/**/*.js'],
    languageOptions: {
      sourceType: 'module',
      globals: {
        window: 'readonly',
        document: 'readonly',
        location: 'readonly',
        fetch: 'readonly',
        EventSource: 'readonly',
        URLSearchParams: 'readonly',
        HTMLElement: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        setInterval: 'readonly',
        clearInterval: 'readonly',
        console: 'readonly',
      },
    },
  },
);
