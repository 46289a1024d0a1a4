/**
 * The rough edges a new user hits (issue 18 item 7, issue 17 item 8), through the real CLI:
 * a status row that fits the terminal, a missing clone volume shown as such, a drill that
 * names its target, a --wait that says what it waits for, bash completion.
 */
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {Cli, MiB, randomImage, tempDir} from '../helpers/cli.js'
import {assertContract} from '../helpers/jsonContract.js'

let dir: string
let cli: Cli

before(async () => {
  dir = await tempDir('rough')
  cli = new Cli(join(dir, 'state'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

async function group(name: string, clones: string[]): Promise<{src: string; path: (c: string) => string}> {
  const src = join(dir, `${name}-src.img`)
  // Long names, as real paths are: they made a status row some 200 columns wide.
  const path = (c: string): string => join(dir, `${name}-a-rather-long-directory-name-for-the-clone-${c}.img`)
  await randomImage(src, 2 * MiB, name.length)
  await cli.ok(['group', 'create', name, '--source', src, '--extent-size', '64K'])
  for (const c of clones) await cli.ok(['clone', 'add', name, c, '--path', path(c), '--create'])
  return {src, path}
}

describe('status', () => {
  test('a clone whose volume is gone is shown unavailable with the reason, not as synchronized', async () => {
    const {path} = await group('gone', ['c1', 'c2'])
    await fsp.rm(path('c1'))
    const all = await cli.json(['status', 'gone'])
    assertContract('status', all)
    const s = all[0]
    const c1 = s.clones.find((c: {name: string}) => c.name === 'c1')
    assert.equal(c1.unavailable, `volume ${path('c1')} does not exist`)
    assert.equal(s.clones.find((c: {name: string}) => c.name === 'c2').unavailable, undefined)
    const r = await cli.ok(['status', 'gone'], 0, {env: {COLUMNS: '300'}})
    const row = r.stdout.split('\n').find((l) => l.includes('│ c1'))!
    assert.match(row, /unavailable \(volume .* does not exist; recorded as synchronized\)/)
    assert.doesNotMatch(row, /│ synchronized/)
  })

  test('with COLUMNS=80 every line fits in 80 columns, and the reason is printed whole below the table', async () => {
    const {path} = await group('narrow', ['c1', 'c2'])
    await fsp.rm(path('c2'))
    const r = await cli.ok(['status', 'narrow'], 0, {env: {COLUMNS: '80'}})
    const table = r.stdout.split('\n').filter((l) => /^[│┌├└]/.test(l))
    assert.ok(table.length > 0, r.stdout)
    for (const l of table) assert.ok([...l].length <= 80, `${[...l].length} columns: ${l}`)
    assert.ok(r.stdout.includes(`  c2: volume ${path('c2')} does not exist; recorded as synchronized`), r.stdout)
    // The path is all there, cut across lines rather than truncated.
    assert.doesNotMatch(r.stdout, /…/)
  })
})

describe('drill', () => {
  test('its errors call the target "drill target", not "clone"', async () => {
    const {src} = await group('dt', ['c'])
    await cli.ok(['clone', 'fracture', 'dt', 'c'])
    const r = await cli.run(['drill', 'dt', 'c', '--target', src])
    assert.equal(r.code, 5, r.stderr)
    assert.match(r.stderr, new RegExp(`drill target ${src} is the source`))
    assert.match(r.stderr, /name a different volume for the drill target/)
    assert.doesNotMatch(r.stderr, /clone \//)
  })
})

describe('bash completion', () => {
  /** What bash completes after `words` (the last one being typed), with the function `clonectl autocomplete` installed. */
  function complete(fn: string, words: string[]): string[] {
    const script = 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _clonectl_autocomplete; printf "%s\\n" "${COMPREPLY[@]}"'
    const r = spawnSync('bash', ['-c', script, 'complete', fn, 'clonectl', ...words], {encoding: 'utf8', env: {...process.env, CLONECTL_STATE_DIR: cli.stateDir}})
    assert.equal(r.status, 0, r.stderr)
    return r.stdout.split('\n').filter(Boolean).sort()
  }

  test('`clonectl autocomplete bash` installs a completion that lists each word once and completes group and clone names', async () => {
    await group('compl', ['nightly', 'weekly'])
    const cache = join(dir, 'cache')
    const r = await cli.run(['autocomplete', 'bash'], {env: {XDG_CACHE_HOME: cache}})
    assert.equal(r.code, 0, r.stderr)
    const fn = join(cache, 'clonectl', 'autocomplete', 'functions', 'bash', 'clonectl.bash')
    const top = complete(fn, [''])
    assert.deepEqual(top, [...new Set(top)], `duplicates in ${top.join(' ')}`)
    for (const w of ['clone', 'group', 'status', 'restore']) assert.ok(top.includes(w), `${w} in ${top.join(' ')}`)
    assert.deepEqual(complete(fn, ['clone', '']), ['add', 'fracture', 'remove', 'sync'])
    assert.ok(complete(fn, ['clone', 'sync', 'co']).includes('compl'))
    assert.deepEqual(complete(fn, ['clone', 'sync', 'compl', '']), ['nightly', 'weekly'])
    assert.deepEqual(complete(fn, ['restore', '--yes', 'compl', 'w']), ['weekly'])
    assert.deepEqual(complete(fn, ['clone', 'sync', 'compl', 'nightly', '--ra']), ['--rate'])
    // A new name is not completed with existing ones.
    assert.deepEqual(complete(fn, ['group', 'create', '']), [])
  })
})

describe('--wait', () => {
  test('a command waiting for a held lock says so on stderr (one line in a log), then fails naming the holder when time is up', async () => {
    await group('waits', ['c'])
    const holderFile = join(cli.stateDir, 'groups', 'waits', 'lock.holder.json')
    const bg = cli.spawnBackground(['clone', 'sync', 'waits', 'c', '--full', '--rate', '256K'])
    try {
      await bg.until(async () => {
        try {
          return JSON.parse(await fsp.readFile(holderFile, 'utf8')).pid === bg.pid
        } catch {
          return false
        }
      }, 'the background sync to take the lock')
      const r = await cli.run(['clone', 'fracture', 'waits', 'c', '--wait', '1'])
      assert.equal(r.code, 4, r.stderr)
      const lines = r.stderr.split('\n')
      const notice = lines.findIndex((l) => l.startsWith(`clonectl: waiting for the lock of group waits, held by pid ${bg.pid}`))
      assert.ok(notice >= 0, r.stderr)
      assert.ok(notice < lines.findIndex((l) => l.startsWith('Error:')), 'the notice comes while waiting, before the error')
      assert.equal(lines.filter((l) => l.includes('waiting for the lock')).length, 1, 'one line, not one per poll')
      // eslint-disable-next-line no-control-regex -- the escape character itself
      assert.doesNotMatch(r.stderr, /\u001B/, 'no spinner escape codes in a log')
    } finally {
      bg.kill('SIGKILL')
      await bg.done
    }
  })
})

describe('arguments come from the command line only', () => {
  // oclif reads a left-out argument from stdin when stdin is not a terminal: a cron job's or a
  // pipeline's stdin became a group or clone name.
  test('status with a group name on stdin still shows every group', async () => {
    await group('stdin-a', ['c1'])
    await group('stdin-b', [])
    const all = await cli.json(['status'], 0, {input: 'stdin-b\n'})
    const names = (all as Array<{name: string}>).map((g) => g.name)
    assert.ok(names.includes('stdin-a') && names.includes('stdin-b'), names.join(' '))
  })

  test('restore without a clone does not take one from stdin, and serve without a group does not take one either', async () => {
    const r = await cli.run(['restore', 'stdin-a', '--yes'], {input: 'c1\n'})
    assert.notEqual(r.code, 0, `restore from a clone named on stdin: ${r.stdout}${r.stderr}`)
    assert.equal((await cli.status('stdin-a')).clones[0].state, 'synchronized')
    const s = await cli.run(['serve'], {input: 'stdin-a\n', timeoutMs: 60_000})
    assert.equal(s.code, 2, s.stderr)
    assert.match(s.stderr, /Missing 1 required arg/)
  })

  test('every argument of every command ignores stdin', async () => {
    const {COMMANDS} = await import('../../commands/index.js')
    for (const [id, cmd] of Object.entries(COMMANDS))
      for (const [name, a] of Object.entries((cmd as {args?: Record<string, {ignoreStdin?: boolean}>}).args ?? {})) assert.equal(a.ignoreStdin, true, `${id} ${name}`)
  })
})
