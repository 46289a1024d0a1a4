import assert from 'node:assert/strict'
import {spawnSync, type SpawnSyncReturns} from 'node:child_process'
import {createRequire} from 'node:module'
import {mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {test} from 'node:test'
import {fileURLToPath} from 'node:url'
import {COMMANDS} from '../../commands/index.js'

// dist/test/unit → repository root
const root = join(fileURLToPath(import.meta.url), '..', '..', '..', '..')

test('given the commands/ directory, then every command file is registered in commands/index.ts', () => {
  const ids: string[] = []
  const walk = (dir: string, prefix: string[]): void => {
    for (const e of readdirSync(dir, {withFileTypes: true})) {
      if (e.isDirectory()) walk(join(dir, e.name), [...prefix, e.name])
      else if (e.name.endsWith('.ts') && e.name !== 'index.ts') ids.push([...prefix, e.name.slice(0, -3)].join(':'))
    }
  }
  walk(join(root, 'commands'), [])
  assert.deepEqual(Object.keys(COMMANDS).sort(), ids.sort())
})

test('given the bundle entry, then it lists the same commands as commands/index.ts, each loaded on demand', () => {
  const entry = createRequire(import.meta.url)(join(root, 'scripts', 'bundleEntry.cjs')) as {COMMANDS: Record<string, unknown>}
  assert.deepEqual(Object.keys(entry.COMMANDS).sort(), Object.keys(COMMANDS).sort())
  for (const id of Object.keys(COMMANDS)) assert.equal(typeof Object.getOwnPropertyDescriptor(entry.COMMANDS, id)?.get, 'function', `${id} is a getter`)
})

test('given a build, when a command starts, then it runs from the bundle with its code cache accepted', () => {
  const r = spawnSync(process.execPath, [join(root, 'bin', 'run.js'), '--version'], {env: {...process.env, CLONECTL_TRACE_STARTUP: '1'}, encoding: 'utf8'})
  assert.equal(r.status, 0, r.stderr)
  assert.match(r.stdout, /^clonectl\/\d/)
  assert.match(r.stderr, /code cache used/)
})

test('given the bundle, when an unknown command is typed, then oclif still loads its ESM plugins (not-found)', () => {
  const r = spawnSync(process.execPath, [join(root, 'bin', 'run.js'), 'stauts'], {encoding: 'utf8', env: {...process.env, NO_COLOR: '1', FORCE_COLOR: '0'}})
  assert.match(r.stderr, /stauts is not a clonectl command/)
  assert.doesNotMatch(r.stderr, /DYNAMIC_IMPORT/)
})

test('given every command id (ours and the plugins\'), then code-point order is locale order (the bundle sorts them without ICU)', () => {
  const manifests = ['.', 'node_modules/@oclif/plugin-help', 'node_modules/@oclif/plugin-autocomplete', 'node_modules/@oclif/plugin-not-found']
  const ids = manifests.flatMap((dir) => {
    try {
      return Object.keys((JSON.parse(readFileSync(join(root, dir, 'oclif.manifest.json'), 'utf8')) as {commands: Record<string, unknown>}).commands)
    } catch {
      return [] // a plugin without commands or without a manifest
    }
  })
  assert.ok(ids.includes('clone:sync') && ids.includes('help'), ids.join(' '))
  assert.deepEqual([...ids].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)), [...ids].sort((a, b) => a.localeCompare(b)))
})

test('given a group with a clone, when `clone sync` runs, then it loads neither node:crypto, node:perf_hooks nor node:assert, and the bundle carries no graceful-fs', () => {
  // Each of these cost every sync and restore start-up time for a few random bytes, one clock
  // read or one argument check (src/io/randomId.ts, src/io/clock.ts, scripts/bundle.mjs).
  const dir = mkdtempSync(join(tmpdir(), 'clonectl-startup-'))
  try {
    const state = join(dir, 'state')
    const run = (args: string[], preload?: string): SpawnSyncReturns<string> => {
      const r = spawnSync(process.execPath, [...(preload ? ['-r', preload] : []), join(root, 'bin', 'run.js'), ...args, `--state-dir=${state}`], {encoding: 'utf8', env: {...process.env, NO_COLOR: '1'}})
      assert.equal(r.status, 0, r.stderr)
      return r
    }
    writeFileSync(join(dir, 'src.img'), Buffer.alloc(1024 * 1024, 7))
    run(['group', 'create', 'g', '--source', join(dir, 'src.img')])
    run(['clone', 'add', 'g', 'c', '--path', join(dir, 'c.img'), '--create'])
    writeFileSync(join(dir, 'src.img'), Buffer.alloc(4096, 9), {flag: 'r+'})
    const preload = join(dir, 'builtins.cjs')
    writeFileSync(preload, "process.on('exit', () => require('fs').writeSync(2, '\\nBUILTINS ' + process.moduleLoadList.filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice(13)).join(',') + '\\n'))\n")
    const r = run(['clone', 'sync', 'g', 'c', '--full'], preload)
    const loaded = new Set(/BUILTINS (.*)/.exec(r.stderr)?.[1].split(',') ?? [])
    assert.ok(loaded.has('fs'), `the list was read: ${[...loaded].join(' ')}`)
    for (const m of ['crypto', 'perf_hooks', 'assert']) assert.ok(!loaded.has(m), `node:${m} was loaded`)
    assert.ok(!readFileSync(join(root, 'dist', 'clonectl.cjs'), 'latin1').includes('node_modules/graceful-fs/'), 'graceful-fs is bundled')
  } finally {
    rmSync(dir, {recursive: true, force: true})
  }
})
