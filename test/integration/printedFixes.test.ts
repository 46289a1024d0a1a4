/**
 * Every fix an error prints works when typed as printed: each case provokes the error through
 * bin/ with --json, takes the commands in backticks from its `fix`, checks that no GROUP or
 * CLONE placeholder stands where the names are known, runs them, and checks they worked.
 * Fixes that are advice rather than a command are checked for filled-in names only.
 * (A destructive command asks for confirmation on a terminal; typed here without one, it
 * gets --yes, which is what the prompt's "y" gives.)
 */
import assert from 'node:assert/strict'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {Cli, MiB, randomImage, tempDir} from '../helpers/cli.js'

let dir: string
let cli: Cli

before(async () => {
  dir = await tempDir('fixes')
  cli = new Cli(join(dir, 'state'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

async function group(name: string, clones: string[], size = 4 * MiB): Promise<{src: string; path: (c: string) => string}> {
  const src = join(dir, `${name}-src.img`)
  const path = (c: string): string => join(dir, `${name}-${c}.img`)
  await randomImage(src, size, name.length)
  await cli.ok(['group', 'create', name, '--source', src, '--extent-size', '64K'])
  for (const c of clones) await cli.ok(['clone', 'add', name, c, '--path', path(c), '--create'])
  return {src, path}
}

/** The commands in backticks of a fix, as argv (without "clonectl"). */
function commandsOf(fix: string): string[][] {
  return [...fix.matchAll(/`clonectl ([^`]+)`/g)].map((m) => m[1]!.trim().split(/\s+/))
}

const NEEDS_YES = new Set(['clone remove', 'group destroy', 'restore'])

/** Provoke: the --json error; its fix names no placeholder; each command in it runs with exit 0. */
async function fixWorks(args: string[], code: number, want: RegExp): Promise<string[][]> {
  const j = await cli.json(args, code)
  const fix: string = j.error.fix ?? ''
  assert.match(fix, want, `the fix of \`clonectl ${args.join(' ')}\`: ${fix}`)
  const cmds = commandsOf(fix)
  assert.ok(cmds.length > 0, `a command to type in: ${fix}`)
  for (const argv of cmds) {
    assert.ok(!argv.includes('GROUP') && !argv.includes('CLONE'), `placeholder in \`clonectl ${argv.join(' ')}\``)
    const extra = NEEDS_YES.has(argv.slice(0, 2).join(' ')) || NEEDS_YES.has(argv[0]!) ? ['--yes'] : []
    await cli.ok([...argv, ...extra])
  }
  return cmds
}

describe('printed fixes work as typed', () => {
  test('a clone whose image is gone: `clone remove G C` removes it', async () => {
    const {path} = await group('fa', ['c1', 'c2'])
    await fsp.rm(path('c1'))
    await fixWorks(['clone', 'sync', 'fa', 'c1'], 3, /`clonectl clone remove fa c1`/)
    const s = await cli.status('fa')
    assert.deepEqual(s.clones.map((c: {name: string}) => c.name), ['c2'])
  })

  test('a restore with nothing to resume: `restore G C` with the group\'s only clone starts it', async () => {
    await group('fb', ['c1'])
    await cli.ok(['clone', 'fracture', 'fb', 'c1'])
    await fixWorks(['restore', 'fb'], 2, /`clonectl restore fb c1`/)
  })

  test('a restore with nothing to resume, several clones: the fix names them', async () => {
    await group('fc', ['c1', 'c2'])
    const j = await cli.json(['restore', 'fc'], 2)
    assert.match(j.error.fix, /CLONE one of c1, c2/)
  })

  test('a fracture of an out-of-sync clone: `clone sync G C` makes it fracturable', async () => {
    await group('fd', ['c1'])
    // A full sync stopped part-way (SIGINT): the clone is out-of-sync.
    await cli.ok(['clone', 'fracture', 'fd', 'c1'])
    const bg = cli.spawnBackground(['clone', 'sync', 'fd', 'c1', '--full', '--rate', '256K'])
    await bg.until(async () => (await cli.status('fd')).operation !== undefined, 'the sync is recorded')
    bg.kill('SIGINT')
    const r = await bg.done
    assert.equal(r.code, 130, r.stderr)
    await fixWorks(['clone', 'fracture', 'fd', 'c1'], 6, /`clonectl clone sync fd c1`/)
    await cli.ok(['clone', 'fracture', 'fd', 'c1'])
  })

  test('a clone whose map is damaged: status says `clone sync G C`, which rebuilds it', async () => {
    await group('fe', ['c1'])
    await fsp.writeFile(join(cli.stateDir, 'groups', 'fe', 'clone-c1.map'), 'not a map')
    const s = await cli.status('fe')
    const cmds = commandsOf(s.clones[0].stateReason)
    assert.deepEqual(cmds, [['clone', 'sync', 'fe', 'c1']])
    await cli.ok(cmds[0]!)
    assert.equal((await cli.status('fe')).clones[0].state, 'synchronized')
  })

  test('a protected restore whose P is damaged: `restore G --force` finishes it', async () => {
    const {src} = await group('ff', ['c1'], 8 * MiB)
    await cli.ok(['clone', 'fracture', 'ff', 'c1'])
    // The source damaged behind clonectl's back: the restore compares and copies every extent.
    await fsp.writeFile(src, Buffer.alloc(8 * MiB, 0xee))
    const bg = cli.spawnBackground(['restore', 'ff', 'c1', '--yes', '--rate', '256K'])
    await bg.until(async () => (await cli.status('ff')).operation?.kind === 'restore', 'the restore is recorded')
    bg.kill('SIGKILL')
    await bg.done
    await fsp.truncate(join(cli.stateDir, 'groups', 'ff', 'restore.pmap'), 10)
    await fixWorks(['restore', 'ff'], 7, /`clonectl restore ff --force`/)
    const s = await cli.status('ff')
    assert.equal(s.operation, undefined)
  })

  test('a group name taken: `status G` shows it; a lock held: the advice names --wait', async () => {
    const {src} = await group('fg', [])
    const j = await cli.json(['group', 'create', 'fg', '--source', src], 5)
    assert.match(j.error.fix, /`clonectl status fg`/)
    await cli.ok(commandsOf(j.error.fix)[0]!)
  })
})
