/**
 * The install the README documents (issue 18 item 6): `npm pack`, then `npm install -g` of
 * the tarball into a prefix, puts `clonectl` on PATH with its man pages and a working bash
 * completion, running from the bundle with its code cache. Dependencies come from npm's cache
 * when it has them, else from the registry (the one network access this test makes).
 */
import assert from 'node:assert/strict'
import {spawnSync, type SpawnSyncReturns} from 'node:child_process'
import {readdirSync, readFileSync} from 'node:fs'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, test} from 'node:test'
import {repoRoot, tempDir} from '../helpers/cli.js'

let dir: string
let prefix: string
let tarball: string
const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as {version: string; man: string[]}

function sh(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}, cwd = dir): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, {cwd, encoding: 'utf8', env: {...process.env, NO_COLOR: '1', ...env}, timeout: 600_000})
}

before(async () => {
  dir = await tempDir('install')
  prefix = join(dir, 'prefix')
  // --ignore-scripts: the tree under test is built already (prepack would build it again).
  const pack = sh('npm', ['pack', '--ignore-scripts', '--pack-destination', dir], {}, repoRoot)
  assert.equal(pack.status, 0, pack.stderr)
  tarball = join(dir, `clonectl-${pkg.version}.tgz`)
  const args = ['install', '-g', '--prefix', prefix, '--no-audit', '--no-fund', tarball]
  let r = sh('npm', [...args, '--offline'])
  if (r.status !== 0) r = sh('npm', [...args, '--prefer-offline'])
  assert.equal(r.status, 0, `npm install -g: ${r.stderr}`)
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

test('the tarball holds the bundle, its code cache, the man pages and the manifest', () => {
  const files = sh('tar', ['tzf', tarball]).stdout.split('\n')
  for (const f of ['bin/run.js', 'dist/clonectl.cjs', 'dist/clonectl.cjs.cache', 'oclif.manifest.json', 'man/clonectl.1']) assert.ok(files.includes(`package/${f}`), `${f} in the tarball`)
})

test('DIR/bin/clonectl runs: --version, and status from the bundle with its code cache', async () => {
  const bin = join(prefix, 'bin', 'clonectl')
  const v = sh(bin, ['--version'])
  assert.equal(v.status, 0, v.stderr)
  assert.match(v.stdout, new RegExp(`^clonectl/${pkg.version.replace(/\./g, '\\.')} `))
  const state = join(dir, 'state')
  const s = sh(bin, ['status', '--state-dir', state], {CLONECTL_TRACE_STARTUP: '1'})
  assert.equal(s.status, 0, s.stderr)
  assert.match(s.stdout, /No clone groups/)
  assert.match(s.stderr, /code cache used/)
})

test('every man page is installed: package.json "man" lists each page of man/, and man -M finds them', () => {
  const built = readdirSync(join(repoRoot, 'man')).filter((f) => f.endsWith('.1'))
  assert.deepEqual([...pkg.man].map((m) => m.replace('./man/', '')).sort(), built.sort())
  for (const page of built) {
    const r = sh('man', ['-M', join(prefix, 'share', 'man'), '-w', page.replace(/\.1$/, '')])
    assert.equal(r.status, 0, `man -M … ${page}: ${r.stderr}`)
  }
})

test('bash completion works after the install, set up as `clonectl autocomplete bash` says', () => {
  const env = {PATH: `${join(prefix, 'bin')}:${process.env.PATH}`, XDG_CACHE_HOME: join(dir, 'cache')}
  const setup = sh('clonectl', ['autocomplete', 'bash'], env)
  assert.equal(setup.status, 0, setup.stderr)
  // The setup line `printf "$(clonectl autocomplete script bash)" >> ~/.bashrc` appends, sourced here.
  const script = sh('clonectl', ['autocomplete', 'script', 'bash'], env)
  assert.equal(script.status, 0, script.stderr)
  const r = sh('bash', ['-c', `${script.stdout}\nCOMP_WORDS=(clonectl clone ''); COMP_CWORD=2; _clonectl_autocomplete; printf '%s\\n' "\${COMPREPLY[@]}"`], env)
  assert.equal(r.status, 0, r.stderr)
  assert.deepEqual(r.stdout.split('\n').filter(Boolean).sort(), ['add', 'fracture', 'remove', 'sync'])
})
