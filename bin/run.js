#!/usr/bin/env node
import {readFileSync, writeFileSync} from 'node:fs'
import {createRequire, Module} from 'node:module'
import {dirname} from 'node:path'
import {fileURLToPath} from 'node:url'
import {setFlagsFromString} from 'node:v8'
import vm from 'node:vm'

// Copies and host I/O run on libuv's thread pool; its default 4 threads cap the reads and
// writes in flight (a restore of scattered extents waits on them). Set before any I/O.
process.env.UV_THREADPOOL_SIZE ??= '16'
// `serve`: atomic, not incremental, old-space GC. It receives host data in 64 KiB socket
// chunks, each a new ArrayBuffer; their external memory started incremental marking cycles
// over and over, and sequential I/O through `serve` spent much of its time in GC (figures in
// the commit that made this change). Not for the copy commands:
// their buffers are pooled, so it gained nothing there and raised their peak RSS. Set before
// anything is allocated. (V8 then rejects the code cache below, made without the flag: serve
// compiles, once, at its start.)
if (process.argv[2] === 'serve') setFlagsFromString('--no-incremental-marking')

// The whole CLI is one bundle (scripts/bundle.mjs). Load it as Node's require would, but
// through vm.Script so V8's code cache made at build time spares compiling it.
const file = fileURLToPath(new URL('../dist/clonectl.cjs', import.meta.url))
const cli = load(file)
await cli.execute({dir: import.meta.url})

function load(path) {
  // The bundle's libraries import() their ESM plugins through this (see scripts/bundle.mjs).
  globalThis.__clonectlImport = (specifier) => import(specifier)
  let cachedData
  try {
    cachedData = readFileSync(`${path}.cache`)
  } catch {
    // No code cache (a build without one): V8 compiles the bundle.
  }
  const script = new vm.Script(Module.wrap(readFileSync(path, 'utf8')), {filename: path, cachedData})
  const m = new Module(path)
  m.filename = path
  m.paths = Module._nodeModulePaths(dirname(path))
  // Before it runs: oclif imports the same file for its commands, and must get this module.
  Module._cache[path] = m
  script.runInThisContext().call(m.exports, m.exports, createRequire(path), m, path, dirname(path))
  m.loaded = true
  const out = process.env.CLONECTL_WRITE_CODE_CACHE
  if (out) process.once('exit', () => writeFileSync(out, script.createCachedData()))
  // For the start-up test, and for anyone wondering why start-up is slow on their machine.
  if (process.env.CLONECTL_TRACE_STARTUP)
    process.stderr.write(`clonectl: code cache ${cachedData === undefined ? 'missing' : script.cachedDataRejected ? 'rejected' : 'used'}\n`)
  return m.exports
}
