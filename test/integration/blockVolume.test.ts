/**
 * Block devices for real: loop devices (losetup) over image files in a temp directory. Needs
 * root and losetup; the mount test also needs mkfs.ext4 and mount. Without them each test is
 * skipped by name with the reason. Every loop device is detached and every mount undone in
 * a finally block.
 */
import assert from 'node:assert/strict'
import {execFileSync, spawnSync} from 'node:child_process'
import {readFileSync} from 'node:fs'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {setTimeout as sleep} from 'node:timers/promises'
import {gunzipSync} from 'node:zlib'
import {RefusedError, VolumeIoError} from '../../src/errors/errors.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {BlockVolume} from '../../src/volume/BlockVolume.js'
import {isMounted, loopBackingFile, majorMinor} from '../../src/volume/blockDevice.js'
import {checkCloneCandidate, resolveIdentity, sameVolume} from '../../src/volume/identity.js'
import {openVolume} from '../../src/volume/openVolume.js'

const MiB = 1024 * 1024
const has = (cmd: string, ...args: string[]): boolean => spawnSync(cmd, args, {stdio: 'ignore'}).status === 0
const isRoot = process.getuid?.() === 0
const canLoop = isRoot && has('losetup', '--version')
const canMount = canLoop && has('mkfs.ext4', '-V') && has('mount', '--version')
const needLoop = canLoop ? false : 'needs root and losetup'
const needMount = canMount ? false : 'needs root, losetup, mkfs.ext4 and mount'

/** Whether the kernel reads MBR partition tables: true, false, or undefined when it does not say. */
function kernelHasMsdosPartitions(): boolean | undefined {
  try {
    const config = gunzipSync(readFileSync('/proc/config.gz')).toString('utf8')
    return /^CONFIG_MSDOS_PARTITION=y/m.test(config)
  } catch {
    return undefined
  }
}
const msdos = kernelHasMsdosPartitions()
const needPartitions = needLoop || (msdos === false ? 'the kernel reads no MBR partition tables (CONFIG_MSDOS_PARTITION is not set)' : false)

let dir: string
before(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'clonectl-block-'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

let n = 0
async function imageWith(data: Uint8Array): Promise<string> {
  const p = join(dir, `img${n++}.img`)
  await fsp.writeFile(p, data)
  return p
}

/** Attach a loop device over `file` (extra losetup flags: -r, -P), run `fn`, always detach. */
async function withLoop<T>(file: string, flags: string[], fn: (dev: string) => Promise<T>): Promise<T> {
  const dev = execFileSync('losetup', ['-f', '--show', ...flags, file], {encoding: 'utf8'}).trim()
  try {
    return await fn(dev)
  } finally {
    execFileSync('losetup', ['-d', dev])
  }
}

async function rejectsRefused(p: Promise<unknown>, ...names: string[]): Promise<RefusedError> {
  let caught: unknown
  await p.then(
    () => assert.fail('expected RefusedError, but it resolved'),
    (error: unknown) => {
      caught = error
    },
  )
  assert.ok(caught instanceof RefusedError, `expected RefusedError, got ${String(caught)}`)
  for (const s of names) assert.ok(caught.message.includes(s), `message ${JSON.stringify(caught.message)} should name ${s}`)
  assert.ok(caught.fix, 'with a fix')
  return caught
}

/** An MBR with one Linux partition of `sectors` sectors from sector `start`. */
function mbr(start: number, sectors: number): Buffer {
  const b = Buffer.alloc(512)
  const e = 446
  b[e + 4] = 0x83
  b.writeUInt32LE(start, e + 8)
  b.writeUInt32LE(sectors, e + 12)
  b[510] = 0x55
  b[511] = 0xaa
  return b
}

/** Wait up to 2 s for a device node to appear; false if it does not. */
async function appears(path: string): Promise<boolean> {
  for (let i = 0; i < 100; i++) {
    if (await nodeFs.exists(path)) return true
    await sleep(20)
  }
  return false
}

describe('BlockVolume over a loop device', () => {
  test('given a loop device over an 8 MiB image; then its size is the file\'s and reads through it are the file\'s bytes; writes through it land in the file', {skip: needLoop}, async () => {
    const data = randomBytes(8 * MiB)
    const file = await imageWith(data)
    await withLoop(file, [], async (dev) => {
      const v = await openVolume(nodeFs, dev, {write: true})
      try {
        assert.ok(v instanceof BlockVolume)
        assert.equal(v.kind, 'block')
        assert.equal(v.size, data.length)
        assert.deepEqual(await v.read(0, v.size), data)
        const fp = await v.fingerprint()
        assert.deepEqual(fp, {kind: 'block', size: data.length, majorMinor: majorMinor((await fsp.stat(dev)).rdev)})
        const patch = randomBytes(10_000)
        await v.write(3 * MiB + 17, patch)
        await v.writeZeroes(5 * MiB, MiB + 512)
        await v.flush()
        patch.copy(data, 3 * MiB + 17)
        data.fill(0, 5 * MiB, 6 * MiB + 512)
        await assert.rejects(v.write(v.size - 1, Buffer.alloc(2)), (e: unknown) => e instanceof VolumeIoError && e.message.includes('past the end'), 'a write past the end is refused before it reaches the device')
      } finally {
        await v.close()
      }
      assert.deepEqual(await fsp.readFile(file), data, 'the file holds what was written through the device')
    })
  })

  test('given a loop device over the source file; then sameVolume, and it is refused as a clone naming both paths', {skip: needLoop}, async () => {
    const src = await imageWith(Buffer.alloc(MiB, 1))
    const other = await imageWith(Buffer.alloc(MiB, 2))
    await withLoop(src, [], async (dev) => {
      assert.equal(await loopBackingFile(majorMinor((await fsp.stat(dev)).rdev)), src)
      const id = await resolveIdentity(nodeFs, dev)
      const s = await fsp.stat(src)
      assert.deepEqual(id.backingFile, {dev: s.dev, ino: s.ino, path: src})
      assert.ok(sameVolume(await resolveIdentity(nodeFs, src), id))
      assert.equal(sameVolume(await resolveIdentity(nodeFs, other), id), false)
      await rejectsRefused(checkCloneCandidate(nodeFs, src, dev, []), src, dev, 'loop device over')
      await rejectsRefused(checkCloneCandidate(nodeFs, dev, src, []), src, dev)
      await checkCloneCandidate(nodeFs, other, dev, [])
      // Two loop devices over one file are one volume too.
      await withLoop(src, [], async (dev2) => {
        await rejectsRefused(checkCloneCandidate(nodeFs, dev, dev2, []), dev, dev2)
      })
    })
  })

  test('given a partition of a loop device over the source file; then it is refused as a clone of the file and of the loop device', {skip: needPartitions}, async (t) => {
    const img = Buffer.alloc(8 * MiB)
    mbr(2048, 8192).copy(img)
    const src = await imageWith(img)
    await withLoop(src, ['-P'], async (dev) => {
      const p1 = `${dev}p1`
      if (!(await appears(p1))) {
        // A kernel whose config is not readable may lack MBR support: only then is this a skip.
        if (msdos === undefined) return t.skip(`${p1} did not appear (no MBR partition support in this kernel?)`)
        assert.fail(`${p1} did not appear`)
      }
      const v = await openVolume(nodeFs, p1, {write: false})
      try {
        assert.equal(v.size, 4 * MiB)
      } finally {
        await v.close()
      }
      await rejectsRefused(checkCloneCandidate(nodeFs, src, p1, []), src, p1, `partition of ${dev}`, 'loop device over')
      await rejectsRefused(checkCloneCandidate(nodeFs, dev, p1, []), dev, p1)
      // The whole disk is busy while a partition of it is held exclusively.
      const held = await BlockVolume.open(nodeFs, p1, {write: true})
      try {
        await rejectsRefused(BlockVolume.open(nodeFs, dev, {write: true}), dev, 'busy')
      } finally {
        await held.close()
      }
    })
  })

  test('given a device already opened exclusively; when it is opened for writing again, then RefusedError "busy"; reading still works, and after close it opens again', {skip: needLoop}, async () => {
    const file = await imageWith(Buffer.alloc(MiB, 3))
    await withLoop(file, [], async (dev) => {
      const first = await BlockVolume.open(nodeFs, dev, {write: true})
      try {
        const e = await rejectsRefused(BlockVolume.open(nodeFs, dev, {write: true}), `block device ${dev} is busy (mounted or in use by another program)`)
        assert.equal(e.exitCode, 5)
        const reader = await openVolume(nodeFs, dev, {write: false})
        assert.equal((await reader.read(0, 1))[0], 3)
        await reader.close()
      } finally {
        await first.close()
      }
      const again = await BlockVolume.open(nodeFs, dev, {write: true})
      await again.close()
    })
  })

  test('given a read-only loop device; when it is opened for writing, then RefusedError "read-only"', {skip: needLoop}, async () => {
    const file = await imageWith(Buffer.alloc(MiB))
    await withLoop(file, ['-r'], async (dev) => {
      await rejectsRefused(openVolume(nodeFs, dev, {write: true}), dev, 'read-only')
    })
  })

  test('given an ext4 file system on the device, mounted; when it is opened for writing, then RefusedError "busy" naming the mount point', {skip: needMount}, async () => {
    const file = await imageWith(Buffer.alloc(16 * MiB))
    const mnt = await fsp.mkdtemp(join(dir, 'mnt-'))
    await withLoop(file, [], async (dev) => {
      execFileSync('mkfs.ext4', ['-q', '-F', dev], {stdio: 'ignore'})
      execFileSync('mount', [dev, mnt])
      try {
        assert.equal(await isMounted(dev), true)
        await rejectsRefused(openVolume(nodeFs, dev, {write: true}), dev, 'busy', mnt)
        // An image file inside that file system lives on the device, and so on the image under it.
        const inner = join(mnt, 'clone.img')
        await fsp.writeFile(inner, Buffer.alloc(MiB))
        await rejectsRefused(checkCloneCandidate(nodeFs, file, inner, []), file, inner, `is on a file system on ${dev}, which is a loop device over ${file}`)
        await rejectsRefused(checkCloneCandidate(nodeFs, dev, inner, []), dev, inner)
        await rejectsRefused(checkCloneCandidate(nodeFs, inner, dev, []), dev, inner)
        await checkCloneCandidate(nodeFs, await imageWith(Buffer.alloc(MiB)), inner, [])
      } finally {
        execFileSync('umount', [mnt])
      }
      assert.equal(await isMounted(dev), false)
      const v = await openVolume(nodeFs, dev, {write: true})
      await v.close()
    })
  })
})

