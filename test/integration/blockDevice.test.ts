/**
 * The CLI on block devices: loop devices (losetup) over image files. create / clone add /
 * sync / cmp / protected restore on loop devices; a loop device over the source file is
 * refused as the source under another name; a mounted loop device is refused as busy.
 * Needs root and losetup (the mount test also mkfs.ext4 and mount): otherwise each test is
 * skipped by name with the reason. Every loop device is detached and every mount undone in
 * a finally block.
 */
import assert from 'node:assert/strict'
import {execFileSync, spawnSync} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, beforeEach, describe, test} from 'node:test'
import {setTimeout as sleep} from 'node:timers/promises'
import {HostIO} from '../../src/engine/HostIO.js'
import {withGroup} from '../../src/group/GroupSession.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {GroupStore} from '../../src/store/GroupStore.js'
import {Cli, cmp, isRoot, MiB, randomImage, sha256, tempDir} from '../helpers/cli.js'

const ok = (cmd: string, ...args: string[]): boolean => spawnSync(cmd, args, {stdio: 'ignore'}).status === 0
const canLoop = isRoot && ok('losetup', '--version')
const canMount = canLoop && ok('mkfs.ext4', '-V') && ok('mount', '--version')
const needLoop = canLoop ? false : 'needs root and losetup'
const needMount = canMount ? false : 'needs root, losetup, mkfs.ext4 and mount'

let dir: string
let cli: Cli
let n = 0
before(async () => {
  dir = await tempDir('blockdev')
})
// A state directory per test: a loop device's path is reused by the next losetup.
beforeEach(() => {
  cli = new Cli(join(dir, `state${n++}`))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

/** Detach, retrying briefly (udev may hold the device for a moment). */
async function detach(dev: string): Promise<void> {
  for (let i = 0; i < 20; i++) {
    if (spawnSync('losetup', ['-d', dev], {stdio: 'ignore'}).status === 0) return
    await sleep(100)
  }
}

/** Attach loop devices over `files`, run fn, always detach them. */
async function withLoops<T>(files: string[], fn: (devs: string[]) => Promise<T>): Promise<T> {
  const devs: string[] = []
  try {
    for (const f of files) devs.push(execFileSync('losetup', ['-f', '--show', f], {encoding: 'utf8'}).trim())
    return await fn(devs)
  } finally {
    for (const d of devs.reverse()) {
      await detach(d)
    }
  }
}

/** Compare two block devices (or files) byte for byte. */
function same(a: string, b: string): boolean {
  return cmp(a, b).same
}

describe('block devices through the CLI', () => {
  test('create / clone add / sync / cmp / host writes / protected restore on loop devices', {skip: needLoop}, async () => {
    const srcFile = join(dir, 'src.img')
    const cloneFile = join(dir, 'clone.img')
    await randomImage(srcFile, 16 * MiB, 41)
    await fsp.writeFile(cloneFile, Buffer.alloc(0))
    await fsp.truncate(cloneFile, 16 * MiB)
    await withLoops([srcFile, cloneFile], async ([srcDev, cloneDev]) => {
      await cli.ok(['group', 'create', 'bd', '--source', srcDev])
      const added = await cli.json(['clone', 'add', 'bd', 'c', '--path', cloneDev])
      assert.equal(added.sync.completed, true)
      assert.ok(same(srcDev, cloneDev), 'clone device identical after add')
      let s = await cli.status('bd')
      assert.equal(s.source.size, 16 * MiB)
      assert.equal(s.clones[0].state, 'synchronized')
      await cli.ok(['clone', 'fracture', 'bd', 'c'])
      const cloneSha = await sha256(cloneDev)
      // Damage the source through the host path (maps stay exact).
      const ctx = {fs: nodeFs, store: new GroupStore(nodeFs, cli.stateDir)}
      await withGroup(ctx, 'bd', {command: 'test host writes'}, async (g) => {
        const io = new HostIO(g)
        await io.write(0, randomBytes(4096), false)
        await io.write(7 * MiB + 3, randomBytes(100_000), false)
        await io.flush()
      })
      assert.equal(same(srcDev, cloneDev), false)
      s = await cli.status('bd')
      assert.equal(s.clones[0].dirtyExtents, 3)
      const out = await cli.json(['restore', 'bd', 'c', '--yes'])
      assert.equal(out.protected, true)
      assert.equal(out.copiedBytes, 3 * 64 * 1024)
      assert.ok(same(srcDev, cloneDev), 'source device == clone device after the restore')
      assert.equal(await sha256(cloneDev), cloneSha, 'the clone device is unchanged')
      // And a sync after new writes.
      await withGroup(ctx, 'bd', {command: 'test host writes'}, async (g) => {
        const io = new HostIO(g)
        await io.write(MiB, randomBytes(10_000), false)
        await io.flush()
      })
      const synced = await cli.json(['clone', 'sync', 'bd', 'c'])
      assert.equal(synced.copiedBytes, 64 * 1024)
      assert.ok(same(srcDev, cloneDev))
      await cli.ok(['clone', 'remove', 'bd', 'c', '--yes'])
      await cli.ok(['group', 'destroy', 'bd', '--yes'])
    })
    assert.ok(same(srcFile, cloneFile), 'the backing files hold the same data')
  })

  test('a clone device changed behind clonectl goes unseen by its fingerprint (README: run verify after such maintenance): verify finds it (exit 9) and clone sync --full copies it back', {skip: needLoop}, async () => {
    const srcFile = join(dir, 'full-src.img')
    const cloneFile = join(dir, 'full-clone.img')
    await randomImage(srcFile, 8 * MiB, 43)
    await fsp.writeFile(cloneFile, Buffer.alloc(0))
    await fsp.truncate(cloneFile, 8 * MiB)
    await withLoops([cloneFile], async ([cloneDev]) => {
      await cli.ok(['group', 'create', 'bf', '--source', srcFile, '--extent-size', '64K'])
      await cli.ok(['clone', 'add', 'bf', 'c', '--path', cloneDev])
      await cli.ok(['clone', 'fracture', 'bf', 'c'])
      // Maintenance behind clonectl's back: 4 KiB rewritten on the device.
      const fh = await fsp.open(cloneDev, 'r+')
      try {
        await fh.write(Buffer.alloc(4096, 0xc3), 0, 4096, 5 * MiB)
        await fh.sync()
      } finally {
        await fh.close()
      }
      assert.equal(same(srcFile, cloneDev), false)
      const plain = await cli.json(['clone', 'sync', 'bf', 'c'])
      assert.equal(plain.copiedBytes, 0, 'a block device carries only major:minor and size: the change is not seen')
      const v = await cli.run(['verify', 'bf', 'c'])
      assert.equal(v.code, 9, v.stderr)
      const full = await cli.json(['clone', 'sync', 'bf', 'c', '--full'])
      assert.equal(full.compared, true)
      assert.ok(full.copiedBytes > 0, '--full copied what changed')
      assert.ok(same(srcFile, cloneDev), 'the clone equals the source again')
      await cli.ok(['verify', 'bf', 'c'])
    })
  })

  test('a loop device over the source file is refused as the source under another name (exit 5)', {skip: needLoop}, async () => {
    const srcFile = join(dir, 'self.img')
    await randomImage(srcFile, 4 * MiB, 42)
    await cli.ok(['group', 'create', 'self', '--source', srcFile])
    await withLoops([srcFile], async ([dev]) => {
      const before = await sha256(srcFile)
      const r = await cli.run(['clone', 'add', 'self', 'c', '--path', dev])
      assert.equal(r.code, 5, `exit ${r.code}: ${r.stderr}`)
      assert.ok(r.stderr.includes(dev), `names the device: ${r.stderr}`)
      assert.ok(r.stderr.includes(srcFile), `names the source: ${r.stderr}`)
      assert.equal(await sha256(srcFile), before)
    })
    // And the other way round: the loop device as the source of a second group is the
    // first group's source under another name.
    await withLoops([srcFile], async ([dev]) => {
      const r = await cli.run(['group', 'create', 'self2', '--source', dev])
      assert.equal(r.code, 5, `exit ${r.code}: ${r.stderr}`)
      assert.match(r.stderr, /already used by group self\b/)
      assert.ok(r.stderr.includes(dev), `names the device: ${r.stderr}`)
    })
  })

  test('a mounted loop device is refused as busy or mounted (exit 5), and nothing is written to it', {skip: needMount}, async () => {
    const srcFile = join(dir, 'm-src.img')
    const fsFile = join(dir, 'm-fs.img')
    const mnt = join(dir, 'mnt')
    await randomImage(srcFile, 8 * MiB, 43)
    await fsp.writeFile(fsFile, Buffer.alloc(0))
    await fsp.truncate(fsFile, 16 * MiB)
    await fsp.mkdir(mnt)
    await cli.ok(['group', 'create', 'mnt', '--source', srcFile])
    await withLoops([fsFile], async ([dev]) => {
      // No lazy init: a mounted ext4 would otherwise write its inode tables in the background.
      execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', dev], {stdio: 'ignore'})
      execFileSync('mount', [dev, mnt])
      try {
        const before = await sha256(dev)
        const r = await cli.run(['clone', 'add', 'mnt', 'c', '--path', dev])
        assert.equal(r.code, 5, `exit ${r.code}: ${r.stderr}`)
        assert.match(r.stderr, /mounted|busy/)
        assert.ok(r.stderr.includes(dev), `names the device: ${r.stderr}`)
        assert.equal(await sha256(dev), before, 'the mounted device was not written')
        assert.deepEqual((await cli.status('mnt')).clones, [])
      } finally {
        spawnSync('umount', [mnt], {stdio: 'ignore'})
      }
    })
  })
})
