import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {existsSync, readdirSync, readFileSync} from 'node:fs'
import {join} from 'node:path'
import {test} from 'node:test'
import {fileURLToPath} from 'node:url'
import {ExitCode} from '../../src/errors/errors.js'
import {exitStatusText, ownCommands, readmeExitTable} from '../../src/ui/manPages.js'
import {needTool} from '../helpers/serve.js'

// dist/test/unit → repository root
const root = join(fileURLToPath(import.meta.url), '..', '..', '..', '..')
type Manifest = Parameters<typeof ownCommands>[0]
const manifest = JSON.parse(readFileSync(join(root, 'oclif.manifest.json'), 'utf8')) as Manifest
const commands = ownCommands(manifest)

test('given the built manifest, then every clonectl command is in it', () => {
  const ids = commands.map((c) => c.id).sort()
  for (const id of ['clone:add', 'clone:fracture', 'clone:remove', 'clone:sync', 'drill', 'group:create', 'group:destroy', 'group:list', 'restore', 'serve', 'status', 'verify'])
    assert.ok(ids.includes(id), `manifest lacks ${id}`)
})

test('every command has a man page that names each of its flags and arguments', () => {
  for (const c of commands) {
    const page = join(root, 'man', `clonectl-${c.id.replace(/:/g, '-')}.1`)
    assert.ok(existsSync(page), `no man page for ${c.id}`)
    const text = readFileSync(page, 'utf8').replace(/\\-/g, '-')
    for (const f of Object.values(c.flags)) {
      if (f.hidden) continue
      assert.ok(text.includes(`--${f.name}`) || text.includes(`--[no-]${f.name}`), `man page of ${c.id} lacks --${f.name}`)
    }
    for (const a of Object.values(c.args)) assert.ok(text.includes(a.name.toUpperCase()), `man page of ${c.id} lacks ${a.name}`)
    assert.match(text, /\.SH EXIT STATUS/)
    assert.match(text, /\.SH EXAMPLES/)
  }
})

test('clonectl(1) lists every command and every exit code', () => {
  const text = readFileSync(join(root, 'man', 'clonectl.1'), 'utf8').replace(/\\-/g, '-')
  for (const c of commands) assert.ok(text.includes(`clonectl ${c.id.split(':').join(' ')}`), `clonectl.1 lacks ${c.id}`)
  for (const code of Object.values(ExitCode)) assert.ok(text.includes(`.B ${code}\n`), `clonectl.1 lacks exit code ${code}`)
})

test('the man pages render cleanly with man -l', () => {
  needTool(existsSync('/usr/bin/man') ? false : 'man (man-db)')
  for (const c of [{id: 'clonectl'}, ...commands.map((x) => ({id: `clonectl-${x.id.replace(/:/g, '-')}`}))]) {
    const r = spawnSync('man', ['--warnings', '-l', join(root, 'man', `${c.id}.1`)], {env: {...process.env, MANWIDTH: '80', MAN_KEEP_STDERR: '1'}, encoding: 'utf8'})
    assert.equal(r.status, 0, r.stderr)
    assert.equal(r.stderr.trim(), '', `groff warnings for ${c.id}: ${r.stderr}`)
    const out = r.stdout
    assert.match(out, /NAME/)
    assert.match(out, /SYNOPSIS/)
  }
})

test('the README documents every command and every exit code', () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8')
  for (const c of commands) assert.ok(readme.includes(`clonectl ${c.id.split(':').join(' ')}`), `README lacks ${c.id}`)
  for (const code of Object.values(ExitCode)) assert.match(readme, new RegExp(`^\\| ${code} \\|`, 'm'), `README lacks exit code ${code}`)
})

test('given the generated man pages, then groff reads them without a warning (no raw non-ASCII character)', () => {
  for (const f of readdirSync(join(root, 'man')).filter((n) => n.endsWith('.1'))) {
    const text = readFileSync(join(root, 'man', f), 'utf8')
    assert.doesNotMatch(text, /[^\p{ASCII}]/u, `${f} holds a raw non-ASCII character`)
    const r = spawnSync('groff', ['-man', '-Tutf8', '-ww', '-z', join(root, 'man', f)], {encoding: 'utf8'})
    if (r.error === undefined) assert.equal(r.stderr, '', `groff warns about ${f}`)
  }
})

test('README "Exit codes" is the table generated from src/errors/errors.ts, one row per exit code', () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8')
  assert.ok(readme.includes(readmeExitTable()), 'README.md\'s exit-code table is stale: run npm run build')
  assert.deepEqual(
    exitStatusText.map(([code]) => code),
    Object.values(ExitCode),
  )
})
