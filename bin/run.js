#!/usr/bin/env node
// CommonJS (bin/package.json says so): an ES module entry would start Node's ESM loader and
// build facades of every builtin it imports, a cost every command paid at start.
'use strict'
const {closeSync, fstatSync, openSync, readFileSync, readSync, writeFileSync} = require('node:fs')
const Module = require('node:module')
const {dirname, join} = require('node:path')
const vm = require('node:vm')

// Copies and host I/O run on libuv's thread pool; its default 4 threads cap the reads and
// writes in flight (a restore of scattered extents waits on them). Set before any I/O.
process.env.UV_THREADPOOL_SIZE ??= '16'
// oclif checks the Node version with semver on every start; npm checks package.json's
// engines when the package is installed, and the bundle targets Node 20.
process.env.OCLIF_DISABLE_ENGINE_WARNING ??= '1'
// `serve`: atomic, not incremental, old-space GC. It receives host data in 64 KiB socket
// chunks, each a new ArrayBuffer; their external memory started incremental marking cycles
// over and over, and sequential I/O through `serve` spent much of its time in GC (figures in
// the commit that made this change). Not for the copy commands:
// their buffers are pooled, so it gained nothing there and raised their peak RSS. Set before
// anything is allocated. (V8 then rejects the code cache below, made without the flag: serve
// compiles, once, at its start.)
// (node:v8 is required here only: loading it costs other commands time at start.)
if (process.argv[2] === 'serve') require('node:v8').setFlagsFromString('--no-incremental-marking')

// The whole CLI is one bundle (scripts/bundle.mjs). Load it as Node's require would, but
// through vm.Script so V8's code cache made at build time spares compiling it.
const root = join(__dirname, '..')
// Build time only (scripts/bundle.mjs): {out, runs, everyCommand}, see the end of load().
const making = process.env.CLONECTL_WRITE_CODE_CACHE ? JSON.parse(process.env.CLONECTL_WRITE_CODE_CACHE) : undefined
// Two caches of the same bundle: `status` and `--version` load the small one, made by those two
// alone; every other command the broad one, whose copy engine code they would only deserialize
// (about 1.5 ms more for status, where a no-op clone sync gains 4-7 ms from it).
const quick = process.argv[2] === 'status' || process.argv[2] === '--version'
const cli = load(join(root, 'dist', 'clonectl.cjs'), quick ? 'status.cache' : 'cache')
let done = cli.execute({dir: root})
for (const args of making?.runs ?? []) done = done.then(() => cli.execute({dir: root, args}))
done.catch((error) => {
  // execute() handles a command's errors itself; this is only for a failure of oclif's own.
  process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`)
  process.exitCode = 1
})

/**
 * Module.wrap(the file's text), made as one string: the file is read between the wrapper's two
 * halves in one buffer, decoded once. Module.wrap's concatenation made a rope that V8 then
 * copied whole before compiling (~1.3 ms for 937 KB). latin1: the bundle is ASCII
 * (scripts/bundle.mjs makes it so), and a latin1 decode is a copy where UTF-8 checks every byte.
 */
function wrapped(path) {
  const [head, tail] = Module.wrap('\0').split('\0')
  const fd = openSync(path, 'r')
  try {
    const size = fstatSync(fd).size
    const buf = Buffer.allocUnsafe(head.length + size + tail.length)
    buf.write(head, 0, 'latin1')
    for (let done = 0; done < size; ) {
      const n = readSync(fd, buf, head.length + done, size - done, done)
      if (n === 0) throw new Error(`${path} changed while it was read`)
      done += n
    }
    buf.write(tail, head.length + size, 'latin1')
    return buf.toString('latin1')
  } finally {
    closeSync(fd)
  }
}

function load(path, cacheSuffix) {
  // The bundle's libraries import() their ESM plugins through this (see scripts/bundle.mjs).
  globalThis.__clonectlImport = (specifier) => import(specifier)
  // The bundle runs as the CLI (scripts/bundleEntry.cjs: stdio), not required by a test.
  globalThis.__clonectlCli = true
  let cachedData
  try {
    cachedData = making ? undefined : readFileSync(`${path}.${cacheSuffix}`)
  } catch {
    // No code cache (a build without one): V8 compiles the bundle.
  }
  const script = new vm.Script(wrapped(path), {filename: path, cachedData})
  const m = new Module(path)
  m.filename = path
  m.paths = Module._nodeModulePaths(dirname(path))
  // Before it runs: oclif imports the same file for its commands, and must get this module.
  Module._cache[path] = m
  script.runInThisContext().call(m.exports, m.exports, Module.createRequire(path), m, path, dirname(path))
  m.loaded = true
  // The cache holds what this process compiled: the commands it ran (the first from argv,
  // then making.runs, one after another) and, with everyCommand, every command's module setup
  // (they are set up on demand), not only that of the commands it ran.
  if (making)
    process.once('exit', () => {
      if (making.everyCommand) for (const id of Object.keys(m.exports.COMMANDS)) void m.exports.COMMANDS[id]
      writeFileSync(making.out, script.createCachedData())
    })
  // For the start-up test, and for anyone wondering why start-up is slow on their machine.
  if (process.env.CLONECTL_TRACE_STARTUP)
    process.stderr.write(`clonectl: code cache ${cachedData === undefined ? 'missing' : script.cachedDataRejected ? 'rejected' : 'used'}\n`)
  return m.exports
}
