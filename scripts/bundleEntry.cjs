/**
 * The entry of the one-file bundle (scripts/bundle.mjs), in place of commands/index.ts.
 *
 * Every command is reached through a getter that require()s it, so esbuild wraps each
 * command's module graph in a lazy initializer: `clonectl --version` or `status` evaluates
 * oclif and the modules that command needs, not the NBD server, TLS, the engines and the
 * tables of every other command. oclif reads COMMANDS[id] only for the command it runs (the
 * ids come from oclif.manifest.json). commands/index.ts stays the typed registry; a unit test
 * checks that both list the same ids.
 */
'use strict'

// Before oclif loads, which touches process.stdout and process.stderr at once
// (src/ui/directStdio.ts). Only as the CLI (bin/run.js says so), not in a process that
// requires this file (a test), and not with CLONECTL_STDIO=node. Not for `serve`: its event
// loop carries host I/O, and a blocking write to a stalled log reader (journald's socket)
// must never hold it; Node's streams queue instead.
if (globalThis.__clonectlCli === true && process.env.CLONECTL_STDIO !== 'node' && process.argv[2] !== 'serve') require('../dist/src/ui/directStdio.js').installDirectStdio()

const commands = {
  'clone:add': () => require('../dist/commands/clone/add.js').default,
  'clone:fracture': () => require('../dist/commands/clone/fracture.js').default,
  'clone:remove': () => require('../dist/commands/clone/remove.js').default,
  'clone:sync': () => require('../dist/commands/clone/sync.js').default,
  drill: () => require('../dist/commands/drill.js').default,
  'group:create': () => require('../dist/commands/group/create.js').default,
  'group:destroy': () => require('../dist/commands/group/destroy.js').default,
  'group:list': () => require('../dist/commands/group/list.js').default,
  'job:cancel': () => require('../dist/commands/job/cancel.js').default,
  'job:list': () => require('../dist/commands/job/list.js').default,
  'job:pause': () => require('../dist/commands/job/pause.js').default,
  'job:rate': () => require('../dist/commands/job/rate.js').default,
  'job:resume': () => require('../dist/commands/job/resume.js').default,
  restore: () => require('../dist/commands/restore.js').default,
  serve: () => require('../dist/commands/serve.js').default,
  status: () => require('../dist/commands/status.js').default,
  verify: () => require('../dist/commands/verify.js').default,
}

const COMMANDS = {}
for (const [id, load] of Object.entries(commands)) Object.defineProperty(COMMANDS, id, {enumerable: true, get: load})

module.exports = {
  execute: require('@oclif/core').execute,
  COMMANDS,
  // package.json oclif.hooks.command_not_found: a mistyped command exits 2 naming the nearest one.
  get NOT_FOUND_HOOK() {
    return require('../dist/src/ui/notFound.js').notFoundHook
  },
  // package.json oclif.hooks.postrun: `clonectl autocomplete` installs a bash completion that completes names.
  get COMPLETION_HOOK() {
    return require('../dist/src/ui/completion.js').completionHook
  },
}
