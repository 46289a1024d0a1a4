/**
 * An ext4 file system on a served source, restored from a clone while it is mounted and in
 * use (DESIGN §7): nbdfuse exposes the export as a file, losetup makes it a block device,
 * the kernel mounts it.
 *
 * Given an ext4 image made by `mke2fs -t ext4 -d DIR`, a clone synced and fractured, and
 * files then changed through the export; when a restore is asked for while the file system
 * is still mounted through the export, then it is refused (exit 5) naming the client: the
 * host's page cache holds the old file system (issue 13 item 4). Following the README
 * recipe — unmount, detach, start the restore, reattach — when a protected restore from
 * the clone runs (from another shell, through the control socket; an idle raw client is
 * closed by --disconnect-clients) and the file system is mounted again, read and written
 * during it; then after it: e2fsck -fn is clean, and the files are the clone's versions
 * plus the writes made during the restore. The clone is bit-identical throughout.
 *
 * Needs root, /dev/fuse, nbdfuse, fusermount3, losetup, mount, mke2fs and e2fsck (CI's
 * .ci/run installs them): without one the test fails, naming it. Every mount, loop device
 * and FUSE mount is undone.
 */
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import {existsSync} from 'node:fs'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {type MountOptions, type Mounted, mountExport} from '../helpers/nbdMount.js'
import {MiB, NbdTestClient, type Served, clonectl, clonectlOk, has, isRoot, run, runOk, sha256File, startServe, statusJson, tempDir} from '../helpers/serve.js'
import {waitFor} from '../helpers/waitFor.js'

const SIZE = 64 * MiB
const tools = ['nbdfuse', 'fusermount3', 'losetup', 'mount', 'mke2fs', 'e2fsck'].filter((t) => !has(t, '--version') && !has(t, '-V'))
const missing = !isRoot ? 'root (for losetup and mount)' : !existsSync('/dev/fuse') ? '/dev/fuse (the fuse kernel module)' : tools.length ? `${tools.join(', ')} (install nbdfuse, fuse3, e2fsprogs, util-linux)` : undefined

let dir: string
let state: string
let src: string
let cl: string
let served: Served | undefined
const cleanups: Array<() => Promise<unknown>> = []

/** The export mounted (test/helpers/nbdMount.ts); detached in after() too if a test fails first. */
async function attach(uri: string, name: string, opts: MountOptions = {}): Promise<Mounted> {
  const m = await mountExport(dir, uri, name, opts)
  cleanups.push(m.detach)
  return m
}

before(async () => {
  assert.equal(missing, undefined, `this test needs ${missing}`)
  dir = await tempDir('ext4')
  state = join(dir, 'state')
  src = join(dir, 'src.img')
  cl = join(dir, 'clone.img')
})

after(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined)
  if (served) await served.stop('SIGKILL')
  await fsp.rm(dir, {recursive: true, force: true})
})

describe('ext4 on a served source: protected restore while mounted', () => {
  const bigV1 = randomBytes(3 * MiB)
  const smallV1 = 'version 1 of a small file\n'
  const duringRestore = randomBytes(2 * MiB)

  test('given an ext4 source made by mke2fs -d, a synced and fractured clone, and files changed through the export', async () => {
    const tree = join(dir, 'tree')
    await fsp.mkdir(join(tree, 'sub'), {recursive: true})
    await fsp.writeFile(join(tree, 'small.txt'), smallV1)
    await fsp.writeFile(join(tree, 'big.bin'), bigV1)
    await fsp.writeFile(join(tree, 'sub', 'keep.txt'), 'kept\n')
    await runOk('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, src, `${SIZE / 1024}k`])
    await clonectlOk(state, ['group', 'create', 'e', '--source', src, '--extent-size', '64K'])
    await clonectlOk(state, ['clone', 'add', 'e', 'c', '--path', cl, '--create'])
    served = await startServe(state, 'e')
    await clonectlOk(state, ['clone', 'fracture', 'e', 'c'])

    const m = await attach(served.uri, 'a')
    assert.equal(await fsp.readFile(join(m.mnt, 'small.txt'), 'utf8'), smallV1)
    await fsp.writeFile(join(m.mnt, 'small.txt'), 'version 2, written after the fracture\n')
    await fsp.writeFile(join(m.mnt, 'big.bin'), randomBytes(3 * MiB))
    await fsp.writeFile(join(m.mnt, 'after-fracture.txt'), 'gone after the restore\n')
    await fsp.rm(join(m.mnt, 'sub', 'keep.txt'))
    // Enough changed extents for the restore to take a while at its rate.
    await fsp.writeFile(join(m.mnt, 'filler.bin'), randomBytes(24 * MiB))
    await runOk('sync', ['-f', join(m.mnt, 'small.txt')])
    await m.detach()
    assert.ok((await statusJson(state, 'e')).clones[0].dirtyExtents > 0)
  })

  test('when a restore is asked for while the file system is mounted through the export, then it is refused naming the clients (nbdfuse opens several)', async () => {
    const m = await attach(served!.uri, 'r')
    try {
      assert.equal(await fsp.readFile(join(m.mnt, 'small.txt'), 'utf8'), 'version 2, written after the fracture\n')
      const r = await clonectl(state, ['restore', 'e', 'c', '--yes'])
      assert.equal(r.code, 5, r.stdout + r.stderr)
      assert.match(r.stderr, /restore of group e from clone c refused: \d+ NBD clients? (is|are) connected \(unix socket \S+nbd\.sock since \d{4}-\d\d-\d\dT[\d:.]+Z[,)].*; a host that caches the source would keep reading the old data/)
      assert.match(r.stderr, /unmount .* run the restore, then reattach; or pass --disconnect-clients/)
      assert.equal((await statusJson(state, 'e')).operation, undefined, 'nothing was started')
    } finally {
      await m.detach()
    }
  })

  test('when the host has detached and a protected restore runs from another shell, the file system mounted again is read and written during it', async () => {
    const cloneSum = await sha256File(cl)
    // An idle client that never detached: --disconnect-clients closes it before the switch.
    const idle = await NbdTestClient.connect(served!.socket)
    // About 30 MiB changed, at 3 MiB/s: about 10 s, long enough to use the file system during it.
    const restore = clonectl(state, ['restore', 'e', 'c', '--yes', '--rate', '3M', '--disconnect-clients'], {timeoutMs: 180_000})
    await waitFor(async () => (await statusJson(state, 'e')).operation, 'the restore to start', 60_000, 25)
    assert.ok(idle.closed, 'the idle client was disconnected before the switch')
    // The host attaches again once the restore has started (a cache from before would be stale).
    const m = await attach(served!.uri, 'b')
    const during = (await statusJson(state, 'e')).operation as {remainingExtents?: number} | undefined
    assert.ok(during, 'the restore is still running while the file system is in use')
    // Reads see the clone's point in time, at once.
    assert.equal(await fsp.readFile(join(m.mnt, 'small.txt'), 'utf8'), smallV1)
    assert.ok((await fsp.readFile(join(m.mnt, 'big.bin'))).equals(bigV1))
    assert.equal(await fsp.readFile(join(m.mnt, 'sub', 'keep.txt'), 'utf8'), 'kept\n')
    assert.equal(existsSync(join(m.mnt, 'after-fracture.txt')), false)
    assert.equal(existsSync(join(m.mnt, 'filler.bin')), false)
    // Writes during the restore.
    await fsp.writeFile(join(m.mnt, 'during.bin'), duringRestore)
    await fsp.appendFile(join(m.mnt, 'sub', 'keep.txt'), 'appended during the restore\n')
    await fsp.mkdir(join(m.mnt, 'newdir'))
    await fsp.writeFile(join(m.mnt, 'newdir', 'n.txt'), 'new during the restore\n')
    await runOk('sync', ['-f', join(m.mnt, 'during.bin')])
    const still = (await statusJson(state, 'e')).operation
    console.log(`ext4: file system used during the restore; restore ${still ? 'still running' : 'already done'} after the writes`)
    await m.detach()
    const r = await restore
    assert.equal(r.code, 0, r.stdout + r.stderr)
    assert.match(r.stdout, /Completed protected restore/)
    assert.equal(await sha256File(cl), cloneSum, 'the clone is bit-identical')
  })

  test('then e2fsck -fn is clean and the files are the clone’s plus the writes made during the restore', async () => {
    const exit = await served!.stop('SIGTERM')
    served = undefined
    assert.equal(exit.code, 0)
    const fsck = await run('e2fsck', ['-fn', src])
    assert.equal(fsck.code, 0, fsck.stdout + fsck.stderr)
    // Check the files through the export once more (serve again, read-only).
    served = await startServe(state, 'e', ['--read-only'])
    const m = await attach(served.uri, 'c', {readOnly: true, mountOptions: ['-o', 'ro,noload']})
    try {
      assert.equal(await fsp.readFile(join(m.mnt, 'small.txt'), 'utf8'), smallV1)
      assert.ok((await fsp.readFile(join(m.mnt, 'big.bin'))).equals(bigV1))
      assert.equal(await fsp.readFile(join(m.mnt, 'sub', 'keep.txt'), 'utf8'), 'kept\nappended during the restore\n')
      assert.ok((await fsp.readFile(join(m.mnt, 'during.bin'))).equals(duringRestore))
      assert.equal(await fsp.readFile(join(m.mnt, 'newdir', 'n.txt'), 'utf8'), 'new during the restore\n')
      assert.equal(existsSync(join(m.mnt, 'after-fracture.txt')), false)
    } finally {
      await m.detach()
    }
    const exit2 = await served.stop('SIGTERM')
    served = undefined
    assert.equal(exit2.code, 0)
  })
})
