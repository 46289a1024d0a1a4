/**
 * The sync engine skips holes on both sides (issue 16 item 2), on real sparse files through
 * the kernel's SEEK_DATA / SEEK_HOLE and PUNCH_HOLE:
 *
 * - a hole on the source over a fresh (known-zero) clone is neither read nor written;
 * - a hole on the source over data on the clone is punched, not written with zeros read
 *   from the source;
 * - a hole on both sides is equal without reading either, also under compare-and-copy.
 *
 * The copies are counted through a wrapper volume (bytes read, written, zeroed), so these
 * tests check work done, not time.
 */
import assert from 'node:assert/strict'
import {execFileSync, spawnSync} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {ForwardSync} from '../../src/engine/ForwardSync.js'
import {Scoreboard} from '../../src/engine/Scoreboard.js'
import {SyncEngine} from '../../src/engine/SyncEngine.js'
import {CloneGroup} from '../../src/group/CloneGroup.js'
import {groupDrill} from '../../src/group/Drill.js'
import {addClone, createGroup, fractureClones} from '../../src/group/GroupAdmin.js'
import {verifyClone} from '../../src/group/Verify.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {GroupStore} from '../../src/store/GroupStore.js'
import {ExtentBitmap} from '../../src/map/ExtentBitmap.js'
import {FileVolume} from '../../src/volume/FileVolume.js'
import {openVolume} from '../../src/volume/openVolume.js'
import {kernel} from '../../src/volume/kernel.js'
import type {Fingerprint, Volume, VolumeExtent} from '../../src/volume/Volume.js'
import {allocated, cmp, GiB, MiB, sparseImage, tempDir} from '../helpers/cli.js'

const X = 64 * 1024

/** A volume that counts the bytes read, written and zeroed through it. */
class CountingVolume implements Volume {
  readBytes = 0
  writtenBytes = 0
  zeroedBytes = 0
  constructor(readonly inner: Volume) {}
  get path(): string {
    return this.inner.path
  }

  get kind(): Volume['kind'] {
    return this.inner.kind
  }

  get size(): number {
    return this.inner.size
  }

  get readOnly(): boolean {
    return this.inner.readOnly
  }

  get knownZero(): boolean {
    return this.inner.knownZero
  }

  set knownZero(v: boolean) {
    this.inner.knownZero = v
  }

  async read(position: number, length: number, into?: Buffer): Promise<Buffer> {
    this.readBytes += length
    return this.inner.read(position, length, into)
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    this.writtenBytes += data.byteLength
    return this.inner.write(position, data)
  }

  async writeZeroes(position: number, length: number, opts?: {punch?: boolean}): Promise<void> {
    this.zeroedBytes += length
    return this.inner.writeZeroes(position, length, opts)
  }

  async trim(position: number, length: number): Promise<void> {
    this.zeroedBytes += length
    return this.inner.trim(position, length)
  }

  extents(position: number, length: number): Promise<VolumeExtent[]> {
    return this.inner.extents(position, length)
  }

  flush(): Promise<void> {
    return this.inner.flush()
  }

  fingerprint(): Promise<Fingerprint> {
    return this.inner.fingerprint()
  }

  close(): Promise<void> {
    return this.inner.close()
  }
}

/** Copy every extent from → to with a map all set, as a full sync (or a restore) does. */
async function copyAll(from: Volume, to: Volume, opts: {compare?: boolean} = {}): Promise<SyncEngine> {
  const bits = new ExtentBitmap(Math.ceil(from.size / X))
  bits.setAll()
  const engine = new SyncEngine({
    map: {bits, clear: (s, e) => bits.clearRange(s, e)},
    from,
    to,
    extentSize: X,
    volumeSize: from.size,
    scoreboard: new Scoreboard(),
    compare: opts.compare,
  })
  assert.equal(await engine.run(), true)
  await to.flush()
  assert.ok(bits.isEmpty(), 'every bit cleared')
  return engine
}

async function open(path: string, write: boolean): Promise<CountingVolume> {
  return new CountingVolume(await FileVolume.open(nodeFs, path, {write}))
}

/** `count` pieces of 1 MiB of random data at distinct MiB-aligned offsets spread over `size`. */
function scattered(size: number, count: number): Array<{offset: number; data: Buffer}> {
  const step = Math.floor(size / MiB / count)
  return Array.from({length: count}, (_, i) => ({offset: i * step * MiB, data: randomBytes(MiB)}))
}

/** Every written piece reads back the same from `v`. */
async function assertHolds(v: Volume, writes: Array<{offset: number; data: Buffer}>): Promise<void> {
  for (const w of writes) assert.ok((await v.read(w.offset, w.data.length)).equals(w.data), `data at ${w.offset}`)
}

let dir: string
before(async () => {
  dir = await tempDir('sparse-copy')
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

describe('sync skips holes on both sides (real sparse files)', () => {
  // koffi ships with clonectl: if it cannot load, that is a failure here, never a skip.
  before(() => assert.ok(kernel(), 'koffi cannot load here: SEEK_DATA/SEEK_HOLE are out of reach'))
  test('given a 64 GiB source holding 256 MiB of data, when it syncs into a fresh image, then only its 256 MiB are read and written and the clone allocates no more than the source', async () => {
    const size = 64 * GiB
    const src = join(dir, 'big.img')
    const clone = join(dir, 'big-clone.img')
    const writes = scattered(size, 256)
    await sparseImage(src, size, writes)
    // Written back before du compares it with the flushed clone (see the next test): the copy
    // reads the source from the page cache, which no longer writes it back as O_DIRECT did.
    execFileSync('sync', [src])
    await FileVolume.createSparse(nodeFs, clone, size)
    const from = await open(src, false)
    const to = await open(clone, true)
    to.knownZero = true
    try {
      const engine = await copyAll(from, to)
      assert.equal(from.readBytes, 256 * MiB, 'the source is read where it holds data only')
      assert.equal(engine.progress.readBytes, 256 * MiB)
      assert.equal(to.writtenBytes, 256 * MiB, 'the clone is written where the source holds data only')
      assert.equal(to.zeroedBytes, 0, 'a fresh image needs no zeroing')
      assert.equal(engine.progress.copiedBytes, 256 * MiB)
      assert.equal(engine.progress.skippedBytes, size - 256 * MiB)
      await assertHolds(to, writes)
      assert.deepEqual(await to.extents(0, size), await from.extents(0, size), 'the same data and holes')
    } finally {
      await from.close()
      await to.close()
    }
    assert.ok((await allocated(clone)) <= (await allocated(src)), `clone du ${await allocated(clone)} ≤ source du ${await allocated(src)}`)
  })

  test('given a sparse source and a fresh image, when it syncs, with CLONECTL_COPY_RANGE=1 the data runs are copied inside the kernel (copy_file_range), the holes stay holes, and by default the same copy is made through buffers', async () => {
    const size = 256 * MiB
    const src = join(dir, 'cfr-src.img')
    const writes = scattered(size, 16)
    await sparseImage(src, size, writes)
    // Written back, as the clone will be (fdatasync): an ext4 extent-tree block is allocated
    // only then, and du would otherwise compare a flushed clone with an unflushed source.
    execFileSync('sync', [src])
    for (const viaKernel of [true, false]) {
      const clone = join(dir, `cfr-clone-${viaKernel}.img`)
      await FileVolume.createSparse(nodeFs, clone, size)
      if (viaKernel) process.env.CLONECTL_COPY_RANGE = '1'
      const from = await FileVolume.open(nodeFs, src, {write: false})
      const to = await FileVolume.open(nodeFs, clone, {write: true})
      to.knownZero = true
      const copyFrom = to.copyFrom.bind(to)
      let inKernel = 0
      to.copyFrom = async (f, position, length) => {
        const done = await copyFrom(f, position, length)
        if (done) inKernel += length
        return done
      }
      try {
        const engine = await copyAll(from, to)
        assert.equal(inKernel, viaKernel ? 16 * MiB : 0, viaKernel ? 'every data run copied inside the kernel' : 'no kernel copy by default')
        assert.equal(engine.progress.readBytes, 16 * MiB)
        assert.equal(engine.progress.copiedBytes, 16 * MiB)
        assert.deepEqual(await to.extents(0, size), await from.extents(0, size), 'the same data and holes')
      } finally {
        delete process.env.CLONECTL_COPY_RANGE
        await from.close()
        await to.close()
      }
      assert.ok(cmp(src, clone).same, 'byte-identical')
      assert.ok((await allocated(clone)) <= (await allocated(src)), `${viaKernel ? 'kernel' : 'buffers'}: clone du ${await allocated(clone)} ≤ source du ${await allocated(src)}`)
    }
  })

  test('given a clone full of data and a sparse source, when it syncs, then the holes are punched on the clone (not read, not written as zeros) and the two are identical', async () => {
    const size = 64 * MiB
    const src = join(dir, 'src.img')
    const clone = join(dir, 'full-clone.img')
    const writes = scattered(size, 8)
    await sparseImage(src, size, writes)
    execFileSync('sync', [src]) // written back, as the clone will be (see above)
    await fsp.writeFile(clone, randomBytes(size))
    const from = await open(src, false)
    const to = await open(clone, true)
    try {
      const engine = await copyAll(from, to)
      assert.equal(from.readBytes, 8 * MiB, 'holes on the source are not read')
      assert.equal(to.writtenBytes, 8 * MiB, 'only data is written')
      assert.equal(to.zeroedBytes, size - 8 * MiB, 'the clone is punched over the source holes')
      assert.equal(engine.progress.zeroedBytes, size - 8 * MiB)
    } finally {
      await from.close()
      await to.close()
    }
    assert.ok(cmp(src, clone).same, 'byte-identical')
    assert.ok((await allocated(clone)) <= (await allocated(src)), `clone du ${await allocated(clone)} ≤ source du ${await allocated(src)}`)
  })

  test('given holes at the same places on both sides, when they sync again (compare-and-copy too), then the holes are neither read nor zeroed', async () => {
    const size = 64 * MiB
    const src = join(dir, 'same.img')
    const clone = join(dir, 'same-clone.img')
    const writes = scattered(size, 4)
    await sparseImage(src, size, writes)
    await sparseImage(clone, size, writes)
    for (const compare of [false, true]) {
      const from = await open(src, false)
      const to = await open(clone, true)
      try {
        const engine = await copyAll(from, to, {compare})
        assert.equal(from.readBytes, 4 * MiB, `compare=${compare}: the source is read where it holds data only`)
        assert.equal(to.zeroedBytes, 0, `compare=${compare}: a hole over a hole is left alone`)
        assert.equal(to.readBytes, compare ? 4 * MiB : 0, `compare=${compare}: the clone is read only to compare data`)
        assert.equal(to.writtenBytes, compare ? 0 : 4 * MiB, `compare=${compare}: equal data is not written under compare`)
        assert.equal(engine.progress.zeroedBytes, 0)
      } finally {
        await from.close()
        await to.close()
      }
    }
    assert.ok(cmp(src, clone).same, 'byte-identical')
  })

  test('given a synchronized sparse clone, when it is verified, then holes on both sides are equal without a read, and a difference under a hole on one side is still found', async () => {
    const size = 1 * GiB
    const src = join(dir, 'verify-src.img')
    const clone = join(dir, 'verify-clone.img')
    const writes = scattered(size, 4)
    await sparseImage(src, size, writes)
    const state = join(dir, 'verify-state')
    await fsp.mkdir(join(state, 'groups'), {recursive: true, mode: 0o700})
    await fsp.chmod(state, 0o700)
    const ctx = {fs: nodeFs, store: new GroupStore(nodeFs, state, {creationLock: false})}
    await createGroup(ctx, {name: 'v', sourcePath: src, extentSize: X})
    let g = await CloneGroup.open(ctx, 'v', {writable: true})
    try {
      await addClone(g, {clone: 'c', path: clone, create: true})
      const sync = await ForwardSync.start(g, {clone: 'c', command: 'test'})
      if (sync instanceof ForwardSync) await sync.run()
      await fractureClones(g, ['c'])
    } finally {
      await g.close()
    }
    // Counted at the file volumes themselves: every read verify makes, on either side.
    const read = FileVolume.prototype.read
    let readBytes = 0
    FileVolume.prototype.read = async function (this: FileVolume, position: number, length: number, into?: Buffer) {
      readBytes += length
      return read.call(this, position, length, into)
    }
    try {
      g = await CloneGroup.open(ctx, 'v', {writable: false})
      try {
        const r = await verifyClone(g, 'c')
        assert.deepEqual(r.violations, [])
        assert.equal(r.markedDifferent + r.markedEqual, 0)
        assert.equal(readBytes, 2 * 4 * MiB, 'only the data extents are read, on both sides')
      } finally {
        await g.close()
      }
      // A difference where the source has a hole and the clone data (written behind clonectl's back).
      const fh = await fsp.open(clone, 'r+')
      await fh.write(Buffer.alloc(X, 7), 0, X, 300 * MiB)
      await fh.close()
      g = await CloneGroup.open(ctx, 'v', {writable: false})
      try {
        const r = await verifyClone(g, 'c')
        assert.deepEqual(r.violations, [(300 * MiB) / X], 'the planted extent is found')
      } finally {
        await g.close()
      }
    } finally {
      FileVolume.prototype.read = read
    }
  })

  test('given a fractured sparse clone, when a group drill copies it to a scratch target and checks it, then only its data is read and the target is as sparse', async () => {
    const size = 1 * GiB
    const src = join(dir, 'drill-src.img')
    const clone = join(dir, 'drill-clone.img')
    const target = join(dir, 'drill-target.img')
    await sparseImage(src, size, scattered(size, 4))
    const state = join(dir, 'drill-state')
    await fsp.mkdir(join(state, 'groups'), {recursive: true, mode: 0o700})
    await fsp.chmod(state, 0o700)
    const ctx = {fs: nodeFs, store: new GroupStore(nodeFs, state, {creationLock: false})}
    await createGroup(ctx, {name: 'd', sourcePath: src, extentSize: X})
    const g = await CloneGroup.open(ctx, 'd', {writable: true})
    try {
      await addClone(g, {clone: 'c', path: clone, create: true})
      const sync = await ForwardSync.start(g, {clone: 'c', command: 'test'})
      if (sync instanceof ForwardSync) await sync.run()
      await fractureClones(g, ['c'])
    } finally {
      await g.close()
    }
    const read = FileVolume.prototype.read
    const copyFrom = FileVolume.prototype.copyFrom
    let readBytes = 0
    FileVolume.prototype.read = async function (this: FileVolume, position: number, length: number, into?: Buffer) {
      readBytes += length
      return read.call(this, position, length, into)
    }
    // The copy into the fresh target may run inside the kernel (copy_file_range): it reads too.
    FileVolume.prototype.copyFrom = async function (this: FileVolume, from, position: number, length: number) {
      const done = await copyFrom.call(this, from, position, length)
      if (done) readBytes += length
      return done
    }
    try {
      const r = await groupDrill(ctx, {group: 'd', clone: 'c', target, command: 'test'})
      assert.ok(r.ok, JSON.stringify(r.checks))
      assert.equal(r.bytesCopied, 4 * MiB)
      assert.equal(readBytes, 3 * 4 * MiB, 'the clone\'s data once to copy, then it and the target\'s once to compare')
    } finally {
      FileVolume.prototype.read = read
      FileVolume.prototype.copyFrom = copyFrom
    }
    assert.ok(cmp(clone, target).same, 'byte-identical')
    assert.ok((await allocated(target)) <= (await allocated(clone)), 'the target is as sparse as the clone')
  })

  const needLoop = process.getuid?.() === 0 && spawnSync('losetup', ['--version'], {stdio: 'ignore'}).status === 0 ? false : 'needs root and losetup'
  test('given a block-device clone full of data and a sparse source, when it syncs, then the holes are zeroed by the device (BLKZEROOUT), not written as zeros', {skip: needLoop}, async () => {
    const size = 64 * MiB
    const src = join(dir, 'blk-src.img')
    const backing = join(dir, 'blk-backing.img')
    const writes = scattered(size, 8)
    await sparseImage(src, size, writes)
    await fsp.writeFile(backing, randomBytes(size))
    const dev = execFileSync('losetup', ['-f', '--show', backing], {encoding: 'utf8'}).trim()
    try {
      const from = await open(src, false)
      const to = new CountingVolume(await openVolume(nodeFs, dev, {write: true}))
      assert.equal(to.kind, 'block')
      try {
        const engine = await copyAll(from, to)
        assert.equal(from.readBytes, 8 * MiB, 'holes on the source are not read')
        assert.equal(to.writtenBytes, 8 * MiB, 'only data is written')
        assert.equal(to.zeroedBytes, size - 8 * MiB, 'the rest is zeroed by the device')
        assert.equal(engine.progress.zeroedBytes, size - 8 * MiB)
      } finally {
        await from.close()
        await to.close()
      }
      assert.ok(cmp(src, dev).same, 'byte-identical')
    } finally {
      execFileSync('losetup', ['-d', dev])
    }
  })
})
