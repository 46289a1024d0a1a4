/**
 * One test per row of the exit-code table (src/errors/errors.ts, README "Exit codes"): each
 * status is provoked for real by a command run through bin/, and the test checks the status
 * and that the message names the thing (a path, a group, a pid) and the fix says what to do.
 * A last test checks that every row of the table has a case here.
 */
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {ExitCode, type ExitCodeName} from '../../src/errors/errors.js'
import {Cli, type CliResult, MiB, isRoot, randomImage, tempDir, pwrite} from '../helpers/cli.js'
import {startServe} from '../helpers/serve.js'

let dir: string
let cli: Cli
const covered = new Set<ExitCodeName>()

before(async () => {
  dir = await tempDir('exitcodes')
  cli = new Cli(join(dir, 'state'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

/** The status is `name`'s; stderr is "Error: MESSAGE" then "  FIX", and they match. */
function expectRow(name: ExitCodeName, r: CliResult, message: RegExp, fix: RegExp): void {
  covered.add(name)
  assert.equal(r.code, ExitCode[name], `exit ${r.code} (signal ${r.signal}), expected ${ExitCode[name]} (${name})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`)
  const lines = r.stderr.split('\n')
  const at = lines.findIndex((l) => l.startsWith('Error'))
  assert.ok(at >= 0, `an Error line: ${r.stderr}`)
  assert.match(lines[at]!, message)
  assert.match(lines.slice(at + 1).join('\n'), fix)
}

async function group(name: string, clones: string[] = [], size = 2 * MiB): Promise<{src: string; path: (c: string) => string}> {
  const src = join(dir, `${name}-src.img`)
  const path = (c: string): string => join(dir, `${name}-${c}.img`)
  await randomImage(src, size, name.length)
  await cli.ok(['group', 'create', name, '--source', src, '--extent-size', '64K'])
  for (const c of clones) await cli.ok(['clone', 'add', name, c, '--path', path(c), '--create'])
  return {src, path}
}

describe('every exit status, provoked for real', () => {
  test('0 ok: a command that did its work', async () => {
    const {src} = await group('ok')
    const r = await cli.run(['status', 'ok'])
    covered.add('ok')
    assert.equal(r.code, 0, r.stderr)
    assert.ok(r.stdout.includes(src))
  })

  test('1 bug: an error clonectl does not expect is reported with its stack and a request to report it', async () => {
    await group('bug')
    // No input should reach a bug, so one is injected: readdir of the groups directory throws a
    // plain TypeError (NodeDurableFs reads directories with readdirSync; fs/promises is patched too).
    const inject = join(dir, 'inject.mjs')
    await fsp.writeFile(
      inject,
      [
        "import fs from 'node:fs'",
        "import fsp from 'node:fs/promises'",
        "const hit = (a) => String(a[0]).endsWith('groups')",
        'const orig = fsp.readdir',
        "fsp.readdir = async (...a) => { if (hit(a)) throw new TypeError('injected fault'); return orig(...a) }",
        'const origSync = fs.readdirSync',
        "fs.readdirSync = (...a) => { if (hit(a)) throw new TypeError('injected fault'); return origSync(...a) }",
        '',
      ].join('\n'),
    )
    const r = await cli.run(['status'], {env: {NODE_OPTIONS: `--import ${inject}`}})
    expectRow('bug', r, /a bug in clonectl.*injected fault/, /please report it with the command you ran/)
    assert.match(r.stderr, /at /, 'the stack')
  })

  test('2 usage: a mistyped command, piped, names the nearest command', async () => {
    const r = await cli.run(['stauts'])
    expectRow('usage', r, /stauts is not a clonectl command/, /did you mean `clonectl status`\?/)
    const sub = await cli.run(['clone', 'ad', 'x'])
    expectRow('usage', sub, /clone ad is not a clonectl command/, /`clonectl clone add`/)
  })

  test('2 usage: a directory is a bad path alike as source and as clone', async () => {
    const d = join(dir, 'a-directory')
    await fsp.mkdir(d)
    expectRow('usage', await cli.run(['group', 'create', 'dirsrc', '--source', d]), new RegExp(`${d} is a directory, not a volume`), /name an image file or a block device/)
    await group('dirclone')
    expectRow('usage', await cli.run(['clone', 'add', 'dirclone', 'c', '--path', d, '--no-sync']), new RegExp(`clone ${d} is a directory, not a volume`), /name an image file or a block device for the clone/)
  })

  test('3 notFound: no such group; a missing source is named as the source, with a fix for group create', async () => {
    expectRow('notFound', await cli.run(['status', 'nosuch']), /nosuch/, /clonectl group list|clonectl group create|check/)
    const missing = join(dir, 'MISSING.img')
    const r = await cli.run(['group', 'create', 'nosrc', '--source', missing])
    expectRow('notFound', r, new RegExp(`source ${missing} does not exist`), /--source/)
    assert.doesNotMatch(r.stderr, /clone add|--create/, 'no advice meant for clone add')
  })

  test('4 lockHeld: a command on a group another clonectl holds names its pid and --wait', async () => {
    await group('lock', ['c'])
    const holderFile = join(cli.stateDir, 'groups', 'lock', 'lock.holder.json')
    const bg = cli.spawnBackground(['clone', 'sync', 'lock', 'c', '--full', '--rate', '256K'])
    try {
      await bg.until(async () => {
        try {
          return JSON.parse(await fsp.readFile(holderFile, 'utf8')).pid === bg.pid
        } catch {
          return false
        }
      }, 'the background sync to take the lock')
      expectRow('lockHeld', await cli.run(['clone', 'fracture', 'lock', 'c']), new RegExp(`pid ${bg.pid}`), /--wait/)
    } finally {
      bg.kill('SIGKILL')
      await bg.done
    }
  })

  test('5 refused: the source as its own clone names both and what to do', async () => {
    const {src} = await group('refuse')
    expectRow('refused', await cli.run(['clone', 'add', 'refuse', 'c', '--path', src, '--no-sync']), new RegExp(`clone ${src} is the source`), /name a different volume for the clone/)
  })

  test('6 badState: fracturing a clone that is not synchronized', async () => {
    const {path} = await group('bad', [])
    await cli.ok(['clone', 'add', 'bad', 'c', '--path', path('c'), '--create', '--no-sync'])
    expectRow('badState', await cli.run(['clone', 'fracture', 'bad', 'c']), /clone c/, /`clonectl clone sync bad c`/)
  })

  test('7 corrupt: a group.json that is not JSON names the file and the fix', async () => {
    await group('corrupt')
    const file = join(cli.stateDir, 'groups', 'corrupt', 'group.json')
    await fsp.writeFile(file, '{not json')
    expectRow('corrupt', await cli.run(['status', 'corrupt']), new RegExp(file.replace(/[.]/g, '\\.')), /\S/)
  })

  test('8 io: a clone file that cannot be opened for writing names the file and what to check', async () => {
    await group('io')
    const img = join(dir, 'io-locked.img')
    await randomImage(img, 2 * MiB, 3)
    // Root passes permission checks, so as root the file is made immutable (the case that
    // once told root to "run as a user that may open it"); otherwise it is made unreadable.
    const immutable = isRoot && spawnSync('chattr', ['+i', img]).status === 0
    if (!immutable) await fsp.chmod(img, 0o000)
    try {
      const r = await cli.run(['clone', 'add', 'io', 'c', '--path', img, '--no-sync'])
      if (immutable) expectRow('io', r, new RegExp(`operation not permitted opening ${img}`), new RegExp(`lsattr ${img}.*chattr -i`))
      else expectRow('io', r, new RegExp(`permission denied opening ${img}`), /run as a user that may open it/)
      assert.doesNotMatch(r.stderr, immutable ? /run as a user/ : /chattr/)
    } finally {
      if (immutable) spawnSync('chattr', ['-i', img])
    }
  })

  test('9 verifyMismatch: a difference planted in a fractured clone', async () => {
    const {path} = await group('ver', ['c'])
    await cli.ok(['clone', 'fracture', 'ver', 'c'])
    await pwrite(path('c'), 3 * 64 * 1024 + 5, Buffer.from('planted'))
    expectRow('verifyMismatch', await cli.run(['verify', 'ver', 'c']), /1 extent/, /`clonectl verify ver c --repair`/)
  })

  test('10 drillFailed: a drill whose --exec check fails', async () => {
    await group('drl', ['c'])
    await cli.ok(['clone', 'fracture', 'drl', 'c'])
    const r = await cli.run(['drill', 'drl', 'c', '--target', join(dir, 'drl-target.img'), '--exec', 'false {}'])
    expectRow('drillFailed', r, /drill/i, /\S/)
  })

  test('11 remote: an NBD clone that cannot be reached names its URI', async () => {
    await group('rem')
    const uri = `nbd+unix:///?socket=${join(dir, 'no-such.sock')}`
    expectRow('remote', await cli.run(['clone', 'add', 'rem', 'c', '--path', uri, '--no-sync']), /no-such\.sock/, /\S/)
  })

  test('12 serverStopped: a restore run by serve, when serve dies under it, is not reported as a signal (130)', async () => {
    const {src} = await group('srv', ['c'], 8 * MiB)
    await cli.ok(['clone', 'fracture', 'srv', 'c'])
    // Changed behind clonectl's back: the restore compares and copies every extent, slowly.
    await pwrite(src, 0, Buffer.alloc(MiB, 0xa5))
    const served = await startServe(cli.stateDir, 'srv')
    try {
      const bg = cli.spawnBackground(['restore', 'srv', 'c', '--yes', '--rate', '256K'])
      await bg.until(async () => (await cli.status('srv')).operation !== undefined, 'the restore is recorded')
      await served.stop('SIGKILL')
      expectRow('serverStopped', await bg.done, /clonectl serve process owning this group stopped/, /`clonectl status srv`/)
    } finally {
      await served.stop('SIGKILL')
    }
  })

  test('130 interrupted: SIGINT stops a sync at a safe point and says how to go on', async () => {
    await group('intr', ['c'])
    await cli.ok(['clone', 'fracture', 'intr', 'c'])
    const bg = cli.spawnBackground(['clone', 'sync', 'intr', 'c', '--full', '--rate', '256K'])
    await bg.until(async () => (await cli.status('intr')).operation !== undefined, 'the sync is recorded')
    bg.kill('SIGINT')
    expectRow('interrupted', await bg.done, /interrupted/, /`clonectl clone sync intr c`/)
  })

  test('every row of the table has a case above', () => {
    const missing = (Object.keys(ExitCode) as ExitCodeName[]).filter((k) => !covered.has(k))
    assert.deepEqual(missing, [])
  })
})
