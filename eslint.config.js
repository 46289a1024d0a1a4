// @ts-check
/**
 * ESLint (flat config): typescript-eslint's recommended rules, and the layering of DESIGN
 * and STYLE.md as import rules. `npm run lint`; `npm test` runs it first.
 */
import js from '@eslint/js'
import {defineConfig, globalIgnores} from 'eslint/config'
import tseslint from 'typescript-eslint'

/** UI libraries: only src/ui/ and commands/ draw (STYLE.md 1). */
const ui = [
  {group: ['@oclif/*'], message: 'src/ never imports oclif: UI lives in src/ui/ and commands/.'},
  {group: ['chalk', 'ora', 'cli-table3'], message: 'src/ never draws: UI lives in src/ui/ and commands/ (report through a callback).'},
]
/** Test support (the in-memory and crash-recording file systems) lives beside the tests, not in what ships. */
const testSupport = {group: ['**/test/**'], message: 'src/ never imports test code: it does not ship.'}
/** The layers under orchestration: engines, maps, I/O, volumes, NBD and the state store. */
const below = {
  group: ['**/commands/**', '**/group/GroupOperations.js', '**/group/GroupServer.js', '**/group/Drill.js'],
  message: 'The engines and what they stand on never import commands/ or orchestration (GroupOperations, GroupServer, Drill).',
}
/** Nor the group model above them, but for one known exception (see src/engine below). */
const groupModel = {group: ['**/group/**'], message: 'The layers under the group model never import src/group/.'}

export default defineConfig(
  globalIgnores(['dist/**', 'node_modules/**', 'man/**']),
  js.configs.recommended,
  tseslint.configs.recommended,
  {
    linterOptions: {reportUnusedDisableDirectives: 'error'},
    rules: {
      // `_`-prefixed names are unused on purpose (a required parameter, a skipped element).
      '@typescript-eslint/no-unused-vars': ['error', {argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none'}],
    },
  },
  {
    files: ['src/**/*.ts'],
    ignores: ['src/ui/**'],
    rules: {'no-restricted-imports': ['error', {patterns: [...ui, testSupport]}]},
  },
  {
    files: ['src/{engine,map,io,volume,nbd,store}/**/*.ts'],
    rules: {'no-restricted-imports': ['error', {patterns: [...ui, testSupport, below, groupModel]}]},
  },
  {
    files: ['**/*.{js,mjs}'],
    languageOptions: {
      globals: {process: 'readonly', console: 'readonly', URL: 'readonly', globalThis: 'readonly', Buffer: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly'},
    },
  },
  {
    // CommonJS: the command entry (bin/package.json makes bin/run.js one) and the bundle's entry.
    files: ['bin/**/*.js', '**/*.cjs'],
    languageOptions: {sourceType: 'commonjs', globals: {require: 'readonly', module: 'writable', __dirname: 'readonly', __filename: 'readonly', process: 'readonly', globalThis: 'readonly'}},
    rules: {'@typescript-eslint/no-require-imports': 'off'},
  },
)
