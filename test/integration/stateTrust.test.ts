/**
 * The state directory as a trust boundary, and volumes that never cross groups, through the
 * real CLI (bin/run.js): group.json edited to make one volume two volumes of some group is
 * refused at the next open before any byte is written; two racing `clone add`s of one file
 * never both win; a file under a mounted loop device is refused as that device; `group
 * destroy` never silently discards an unfinished restore; a damaged group.json is listed as
 * damaged and blocks no other group; state owned by someone else, writable by others or
 * reached through a symlink is refused (exit 7); a full state file system is exit 8 with
 * nothing left behind.
 *
 * Tests run as root here: ownership is made with chown 65534, loop devices with losetup,
 * the full file system with a tiny tmpfs. Each is skipped by name where that is not possible.
 */
import assert from 'node:assert/strict'
import {execFileSync, spawnSync} from 'node:child_process'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {after, before, describe, test} from 'node:test'
import {RestoreSession} from '../../src/engine/Restore.js'
import {withGroup} from '../../src/group/GroupSession.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import type {GroupRecord} from '../../src/store/GroupRecord.js'
import {GroupStore} from '../../src/store/GroupStore.js'
import {Cli, type CliResult, isRoot, KiB, MiB, randomImage, sha256, tempDir} from '../helpers/cli.js'
import {startServe} from '../helpers/serve.js'

const ok = (cmd: string, ...args: string[]): boolean => spawnSync(cmd, args, {stdio: 'ignore'}).status === 0
const canMount = isRoot && ok('losetup', '--version') && ok('mkfs.ext4', '-V') && ok('mount', '--version')
const needMount = canMount ? false : 'needs root, losetup, mkfs.ext4 and mount'
const needRoot = isRoot ? false : 'needs root (chown to another uid, mount a tmpfs)'

let dir: string
let n = 0
const mounts: string[] = []
before(async () => {
  dir = await tempDir('trust')
})
after(async () => {
  for (const m of mounts.reverse()) spawnSync('umount', [m], {stdio: 'ignore'})
  await fsp.rm(dir, {recursive: true, force: true})
})

/** A clonectl with a fresh state directory of its own. */
function freshCli(): Cli {
  return new Cli(join(dir, `state${n++}`))
}

function assertError(r: CliResult, code: number, ...patterns: Array<string | RegExp>): void {
  assert.equal(r.code, code, `exit ${r.code}, expected ${code}; stderr: ${r.stderr} stdout: ${r.stdout}`)
  for (const p of patterns) {
    if (typeof p === 'string') assert.ok(r.stderr.includes(p), `stderr ${JSON.stringify(r.stderr)} should name ${p}`)
    else assert.match(r.stderr, p)
  }
}

/** A group NAME with a 1 MiB random source and a synchronized, then fractured, clone c. */
async function groupWithClone(cli: Cli, name: string, clones = ['c']): Promise<{src: string; clones: string[]}> {
  const src = join(dir, `${name}-${n}-src.img`)
  await randomImage(src, 1 * MiB, n + name.length)
  await cli.ok(['group', 'create', name, '--source', src])
  const paths: string[] = []
  for (const c of clones) {
    const p = join(dir, `${name}-${n}-${c}.img`)
    await cli.ok(['clone', 'add', name, c, '--path', p, '--create'])
    await cli.ok(['clone', 'fracture', name, c])
    paths.push(p)
  }
  return {src, clones: paths}
}

/** Edit a group's group.json in place (as an administrator's editor would). */
async function editRecord(cli: Cli, group: string, edit: (r: GroupRecord) => void): Promise<void> {
  const file = join(cli.stateDir, 'groups', group, 'group.json')
  const r = JSON.parse(await fsp.readFile(file, 'utf8'))
  edit(r)
  await fsp.writeFile(file, `${JSON.stringify(r, null, 2)}\n`)
}

describe('a volume is never two volumes of any group, at every open', () => {
  test("a clone's path edited to another group's source: `clone sync --full` is refused (exit 5) naming both, and that source is untouched", async () => {
    const cli = freshCli()
    const a = await groupWithClone(cli, 'xa')
    await groupWithClone(cli, 'xb')
    const before = await sha256(a.src)
    await editRecord(cli, 'xb', (r) => (r.clones[0].volume.path = a.src))
    const r = await cli.run(['clone', 'sync', 'xb', 'c', '--full'])
    assertError(r, 5, 'clone c of group xb', 'the source of group xa', a.src, 'clone remove xb c')
    assert.equal(await sha256(a.src), before, "group xa's source was not written")
    // The rest of group xb still works: status names the clone's reason.
    assert.equal((await cli.status('xb')).name, 'xb')
  })

  test("a clone's path edited to its own group's source: `restore` is refused (exit 5) and the source is untouched", async () => {
    const cli = freshCli()
    const g = await groupWithClone(cli, 'self')
    const before = await sha256(g.src)
    await editRecord(cli, 'self', (r) => (r.clones[0].volume.path = g.src))
    const r = await cli.run(['restore', 'self', 'c', '--yes'])
    assertError(r, 5, 'the source of group self', 'clone c of group self', g.src, 'group.json')
    assert.equal(await sha256(g.src), before, 'the source was not written')
  })

  test("the source path edited to one of its clones: `restore` from another clone is refused (exit 5) and that clone is untouched", async () => {
    const cli = freshCli()
    const g = await groupWithClone(cli, 'swap', ['c1', 'c2'])
    const before = await sha256(g.clones[1])
    await editRecord(cli, 'swap', (r) => (r.source.path = g.clones[1]))
    const r = await cli.run(['restore', 'swap', 'c1', '--yes'])
    assertError(r, 5, 'clone c2 of group swap', 'the source of group swap', g.clones[1])
    assert.equal(await sha256(g.clones[1]), before, 'clone c2 was not written')
  })

  test('two `clone add` of one file into two groups at once: exactly one wins, 10 times out of 10', async () => {
    const cli = freshCli()
    for (const g of ['ra', 'rb']) {
      const src = join(dir, `${g}-${n}-src.img`)
      await randomImage(src, 256 * KiB, g.length)
      await cli.ok(['group', 'create', g, '--source', src])
    }
    const target = join(dir, `race-${n}.img`)
    await randomImage(target, 256 * KiB, 99)
    for (let i = 0; i < 10; i++) {
      const [x, y] = await Promise.all([cli.run(['clone', 'add', 'ra', 'c', '--path', target, '--no-sync']), cli.run(['clone', 'add', 'rb', 'c', '--path', target, '--no-sync'])])
      const codes = [x.code, y.code].sort()
      assert.deepEqual(codes, [0, 5], `try ${i}: exits ${x.code} and ${y.code}\n${x.stderr}\n${y.stderr}`)
      const loser = x.code === 5 ? x : y
      assert.match(loser.stderr, /already used by group r[ab]/)
      const winner = x.code === 0 ? 'ra' : 'rb'
      await cli.ok(['clone', 'remove', winner, 'c', '--yes'])
    }
  })

  test('two `group create` of one source at once: exactly one wins, 5 times out of 5', async () => {
    const cli = freshCli()
    const src = join(dir, `gc-${n}-src.img`)
    await randomImage(src, 256 * KiB, 7)
    for (let i = 0; i < 5; i++) {
      const [x, y] = await Promise.all([cli.run(['group', 'create', `ga${i}`, '--source', src]), cli.run(['group', 'create', `gb${i}`, '--source', src])])
      assert.deepEqual([x.code, y.code].sort(), [0, 5], `try ${i}: exits ${x.code} and ${y.code}\n${x.stderr}\n${y.stderr}`)
      await cli.ok(['group', 'destroy', x.code === 0 ? `ga${i}` : `gb${i}`, '--yes'])
    }
  })

  test('an image file under a mounted loop device is refused as that device (exit 5) and not written', {skip: needMount}, async () => {
    const cli = freshCli()
    const src = join(dir, `lo-${n}-src.img`)
    const img = join(dir, `lo-${n}-fs.img`)
    const mnt = join(dir, `lo-${n}-mnt`)
    await randomImage(src, 8 * MiB, 5)
    await fsp.writeFile(img, Buffer.alloc(0))
    await fsp.truncate(img, 8 * MiB)
    await fsp.mkdir(mnt)
    await cli.ok(['group', 'create', 'lo', '--source', src])
    const dev = execFileSync('losetup', ['-f', '--show', img], {encoding: 'utf8'}).trim()
    try {
      execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', dev], {stdio: 'ignore'})
      execFileSync('mount', [dev, mnt])
      try {
        const before = await sha256(img)
        const r = await cli.run(['clone', 'add', 'lo', 'c', '--path', img])
        assertError(r, 5, img, dev, /busy|mounted/)
        assert.equal(await sha256(img), before, 'the image under the mounted device was not written')
        assert.deepEqual((await cli.status('lo')).clones, [])
      } finally {
        spawnSync('umount', [mnt], {stdio: 'ignore'})
      }
    } finally {
      for (let i = 0; i < 20 && spawnSync('losetup', ['-d', dev], {stdio: 'ignore'}).status !== 0; i++) await sleep(100)
    }
  })
})

describe('group destroy and an unfinished restore', () => {
  test('--force alone is refused (exit 6) naming the partly restored source; --discard-restore destroys the state, volumes untouched', async () => {
    const cli = freshCli()
    const g = await groupWithClone(cli, 'half')
    // Start a protected restore and leave it interrupted, as a crash would.
    const ctx = {fs: nodeFs, store: new GroupStore(nodeFs, cli.stateDir)}
    await withGroup(ctx, 'half', {command: 'test restore', open: {writable: true, readOnlyClones: ['c']}}, async (grp) => {
      const s = await RestoreSession.start(grp, {clone: 'c', protected: true, command: 'test restore'})
      await s.suspend()
    })
    assert.equal((await cli.status('half')).operation.state, 'interrupted')
    const srcSha = await sha256(g.src)
    let r = await cli.run(['group', 'destroy', 'half', '--force', '--yes'])
    assertError(r, 6, 'partly restored', g.src, 'pre-restore data', '--discard-restore', 'clonectl restore half')
    assert.equal((await cli.status('half')).operation.state, 'interrupted', 'the restore is still recorded')
    r = await cli.run(['group', 'destroy', 'half', '--discard-restore', '--yes'])
    assertError(r, 5, 'clone(s)', '--force')
    await cli.ok(['group', 'destroy', 'half', '--force', '--discard-restore', '--yes'])
    assertError(await cli.run(['status', 'half']), 3, 'half')
    assert.equal(await sha256(g.src), srcSha, 'the source is untouched')
    await fsp.access(g.clones[0])
  })
})

describe('a damaged group.json blocks no other group', () => {
  for (const [what, text] of [
    ['empty', ''],
    ['garbage', '{"formatVersion": 1, "name": '],
  ] as const) {
    test(`an ${what} group.json: status and group list show it as damaged (also --json), the others work, group create works, destroy --force removes its state`, async () => {
      const cli = freshCli()
      await groupWithClone(cli, 'good')
      const bad = await groupWithClone(cli, 'bad')
      const badFile = join(cli.stateDir, 'groups', 'bad', 'group.json')
      await fsp.writeFile(badFile, text)
      const shas = [await sha256(bad.src), await sha256(bad.clones[0])]

      const st = await cli.json(['status'])
      assert.equal(st.length, 2)
      const d = st.find((s: {name: string}) => s.name === 'bad')
      assert.equal(d.damaged.file, badFile)
      assert.ok(d.damaged.reason.length > 0)
      assert.equal(st.find((s: {name: string}) => s.name === 'good').clones[0].name, 'c')
      const text1 = await cli.ok(['status'])
      assert.match(text1.stdout, /Group bad: DAMAGED/)
      assert.match(text1.stdout, /Group good: source/)

      const list = await cli.json(['group', 'list'])
      assert.equal(list.find((g: {name: string}) => g.name === 'bad').damaged.file, badFile)
      assert.equal(list.find((g: {name: string}) => g.name === 'good').clones, 1)

      const src3 = join(dir, `new-${n}-src.img`)
      await randomImage(src3, 256 * KiB, 3)
      const created = await cli.ok(['group', 'create', 'new', '--source', src3])
      assert.match(created.stderr, /group bad is damaged/)
      await cli.ok(['clone', 'sync', 'good', 'c'])

      assertError(await cli.run(['group', 'destroy', 'bad', '--yes']), 7, badFile)
      await cli.ok(['group', 'destroy', 'bad', '--force', '--yes'])
      await assert.rejects(fsp.access(join(cli.stateDir, 'groups', 'bad')))
      assert.deepEqual([await sha256(bad.src), await sha256(bad.clones[0])], shas, 'its volumes are untouched')
      assert.deepEqual((await cli.json(['group', 'list'])).map((g: {name: string}) => g.name), ['good', 'new'])
    })
  }
})

describe('the state directory is a trust boundary', () => {
  test('a state directory owned by another user is refused (exit 7) naming it, the owner and the fix', {skip: needRoot}, async () => {
    const cli = freshCli()
    await groupWithClone(cli, 'own')
    await fsp.chown(cli.stateDir, 65534, 65534)
    try {
      assertError(await cli.run(['status']), 7, cli.stateDir, 'uid 65534', 'chown')
      assertError(await cli.run(['clone', 'sync', 'own', 'c']), 7, cli.stateDir)
    } finally {
      await fsp.chown(cli.stateDir, 0, 0)
    }
    await cli.ok(['status'])
  })

  test('a group directory or group.json writable by group or others is refused (exit 7) with the chmod to run', async () => {
    const cli = freshCli()
    await groupWithClone(cli, 'loose')
    const gdir = join(cli.stateDir, 'groups', 'loose')
    await fsp.chmod(gdir, 0o770)
    assertError(await cli.run(['clone', 'sync', 'loose', 'c']), 7, gdir, 'writable by group', `chmod 700 ${gdir}`)
    await fsp.chmod(gdir, 0o700)
    await fsp.chmod(join(gdir, 'group.json'), 0o602)
    assertError(await cli.run(['status', 'loose']), 7, join(gdir, 'group.json'), 'others', 'chmod 600')
    await fsp.chmod(join(gdir, 'group.json'), 0o600)
    await fsp.chmod(cli.stateDir, 0o777)
    assertError(await cli.run(['group', 'list']), 7, cli.stateDir, 'chmod 700')
    await fsp.chmod(cli.stateDir, 0o700)
    await cli.ok(['clone', 'sync', 'loose', 'c'])
  })

  test('a map file owned by another user is refused (exit 7)', {skip: needRoot}, async () => {
    const cli = freshCli()
    await groupWithClone(cli, 'mapown')
    const map = join(cli.stateDir, 'groups', 'mapown', 'clone-c.map')
    await fsp.chown(map, 65534, 65534)
    assertError(await cli.run(['clone', 'sync', 'mapown', 'c']), 7, map, 'uid 65534')
  })

  test('symlinks are never followed: a symlinked group.json, map or group directory is refused (exit 7) and its target untouched', async () => {
    const cli = freshCli()
    const g = await groupWithClone(cli, 'ln')
    const gdir = join(cli.stateDir, 'groups', 'ln')
    const elsewhere = join(dir, `elsewhere-${n}`)
    await fsp.mkdir(elsewhere, {mode: 0o700})

    // group.json → a copy elsewhere
    await fsp.rename(join(gdir, 'group.json'), join(elsewhere, 'group.json'))
    await fsp.symlink(join(elsewhere, 'group.json'), join(gdir, 'group.json'))
    const recordSha = await sha256(join(elsewhere, 'group.json'))
    assertError(await cli.run(['clone', 'sync', 'ln', 'c', '--full']), 7, join(gdir, 'group.json'), 'symlink')
    const st = await cli.json(['status'])
    assert.equal(st[0].damaged.file, join(gdir, 'group.json'))
    assert.equal(await sha256(join(elsewhere, 'group.json')), recordSha)
    await fsp.rm(join(gdir, 'group.json'))
    await fsp.rename(join(elsewhere, 'group.json'), join(gdir, 'group.json'))

    // the map → a file elsewhere
    await fsp.rename(join(gdir, 'clone-c.map'), join(elsewhere, 'clone-c.map'))
    await fsp.symlink(join(elsewhere, 'clone-c.map'), join(gdir, 'clone-c.map'))
    const mapSha = await sha256(join(elsewhere, 'clone-c.map'))
    assertError(await cli.run(['clone', 'sync', 'ln', 'c', '--full']), 7, join(gdir, 'clone-c.map'), 'symlink')
    assert.equal(await sha256(join(elsewhere, 'clone-c.map')), mapSha)
    await fsp.rm(join(gdir, 'clone-c.map'))
    await fsp.rename(join(elsewhere, 'clone-c.map'), join(gdir, 'clone-c.map'))
    await cli.ok(['clone', 'sync', 'ln', 'c'])

    // the whole group directory → elsewhere
    const moved = join(elsewhere, 'ln')
    await fsp.rename(gdir, moved)
    await fsp.symlink(moved, gdir)
    const cloneSha = await sha256(g.clones[0])
    assertError(await cli.run(['clone', 'sync', 'ln', 'c', '--full']), 7, gdir, 'symlink')
    assertError(await cli.run(['group', 'destroy', 'ln', '--force', '--yes']), 7, gdir, 'symlink')
    await fsp.access(join(moved, 'group.json'))
    assert.equal(await sha256(g.clones[0]), cloneSha)
  })
})

describe('a full state file system', () => {
  /** A state directory on a tiny tmpfs, filled up once `fill` is called. */
  async function tinyState(): Promise<{cli: Cli; fill: () => Promise<void>}> {
    const mnt = join(dir, `tmpfs-${n++}`)
    await fsp.mkdir(mnt)
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'tmpfs', mnt])
    mounts.push(mnt)
    const cli = new Cli(join(mnt, 'state'))
    const fill = async (): Promise<void> => {
      const fh = await fsp.open(join(mnt, 'filler'), 'w')
      try {
        for (;;) await fh.write(Buffer.alloc(4096, 1))
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error
      } finally {
        await fh.close()
      }
    }
    return {cli, fill}
  }

  async function leftovers(stateDir: string): Promise<string[]> {
    const out: string[] = []
    for (const e of await fsp.readdir(stateDir, {recursive: true})) if (/\.tmp-/.test(e)) out.push(e)
    return out
  }

  test('group create and clone add on a full state file system: exit 8 naming the state directory, no temp files, the record unchanged', {skip: needRoot}, async () => {
    const {cli, fill} = await tinyState()
    const src = join(dir, `full-${n}-src.img`)
    await randomImage(src, 4 * MiB, 8)
    await cli.ok(['group', 'create', 'g', '--source', src])
    const file = join(cli.stateDir, 'groups', 'g', 'group.json')
    const record = await fsp.readFile(file, 'utf8')
    await fill()

    const src2 = join(dir, `full-${n}-src2.img`)
    await randomImage(src2, 4 * MiB, 9)
    let r = await cli.run(['group', 'create', 'g2', '--source', src2])
    assertError(r, 8, cli.stateDir, /no space left|full/)
    assert.doesNotMatch(r.stderr, /a bug in clonectl/)
    const image = join(dir, `full-${n}-c.img`)
    r = await cli.run(['clone', 'add', 'g', 'c', '--path', image, '--create', '--no-sync'])
    assertError(r, 8, cli.stateDir)
    assert.doesNotMatch(r.stderr, /a bug in clonectl/)
    await assert.rejects(fsp.access(image), 'the image --create made for the clone that was not added is gone')
    assert.deepEqual(await leftovers(cli.stateDir), [])
    assert.equal(await fsp.readFile(file, 'utf8'), record, 'group.json unchanged')
    assert.deepEqual(await cli.json(['group', 'list']).then((l: Array<{name: string}>) => l.map((g) => g.name)), ['g'])
  })

  test('under serve, a restore or sync whose operation cannot be recorded: exit 8, and the server agrees with group.json (status, the next request)', {skip: needRoot}, async () => {
    const {cli, fill} = await tinyState()
    await groupWithClone(cli, 'sv')
    const file = join(cli.stateDir, 'groups', 'sv', 'group.json')
    const served = await startServe(cli.stateDir, 'sv')
    try {
      const record = await fsp.readFile(file, 'utf8')
      await fill()
      for (const args of [['restore', 'sv', 'c', '--unprotected', '--yes'], ['restore', 'sv', 'c', '--yes'], ['clone', 'sync', 'sv', 'c']]) {
        const r = await cli.run(args)
        assertError(r, 8, cli.stateDir)
        assert.doesNotMatch(r.stderr, /a bug in clonectl/)
      }
      const s = await cli.status('sv')
      assert.ok(s.server, 'status came from the server')
      assert.equal(s.operation, undefined, `no operation in status: ${JSON.stringify(s.operation)}`)
      assert.equal(s.clones[0].state, 'fractured')
      assert.equal(await fsp.readFile(file, 'utf8'), record, 'group.json unchanged')
      assert.deepEqual(await leftovers(cli.stateDir), [])
      await assert.rejects(fsp.access(join(cli.stateDir, 'groups', 'sv', 'restore.pmap')), 'no P without a recorded restore')
      // Space back: the same request works through the same server.
      await fsp.rm(join(cli.stateDir, '..', 'filler'))
      await cli.ok(['clone', 'sync', 'sv', 'c'])
      assert.equal((await cli.status('sv')).clones[0].state, 'synchronized')
    } finally {
      await served.stop()
    }
  })
})
