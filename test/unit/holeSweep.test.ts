/**
 * The sync engine's hole sweep (SyncEngine.sweepHoles): a long hole on both sides is cleared
 * as a range, with nothing claimed. These scenarios check what may come between its lookup
 * of the holes and its clear, on in-memory volumes that report their all-zero sectors as
 * holes:
 *
 * - a host write to the range while the lookup runs (forward sync under `serve`): the sweep
 *   backs off and the extent is copied with the host's data (INV-1);
 * - protected extents (P set: skip) keep their bits;
 * - an extent another copy holds in the scoreboard is left to it.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {CodEngine} from '../../src/engine/CodEngine.js'
import {CodQueue} from '../../src/engine/CodQueue.js'
import {CollisionDetector} from '../../src/engine/CollisionDetector.js'
import {Scoreboard} from '../../src/engine/Scoreboard.js'
import {SyncEngine} from '../../src/engine/SyncEngine.js'
import {ExtentBitmap} from '../../src/map/ExtentBitmap.js'
import type {Fingerprint, Volume, VolumeExtent} from '../../src/volume/Volume.js'
import {gate} from '../helpers/memGroup.js'
import {waitFor} from '../helpers/waitFor.js'

const X = 4096
const SECTOR = 512

/** An in-memory volume whose all-zero sectors are holes; extents() may be held at a gate. */
class HoleyVolume implements Volume {
  readonly kind = 'file' as const
  readonly readOnly = false
  knownZero = false
  readBytes = 0
  writtenBytes = 0
  zeroedBytes = 0
  /** When set, extents() computes its answer, then waits for this before it returns it. */
  hold?: {reached: () => void; promise: Promise<void>}
  constructor(
    readonly path: string,
    readonly data: Buffer,
  ) {}

  get size(): number {
    return this.data.length
  }

  async read(position: number, length: number, into?: Buffer): Promise<Buffer> {
    this.readBytes += length
    const out = into && into.length >= length ? into.subarray(0, length) : Buffer.alloc(length)
    this.data.copy(out, 0, position, position + length)
    return out
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    this.writtenBytes += data.byteLength
    Buffer.from(data.buffer, data.byteOffset, data.byteLength).copy(this.data, position)
  }

  async writeZeroes(position: number, length: number): Promise<void> {
    this.zeroedBytes += length
    this.data.fill(0, position, position + length)
  }

  async trim(position: number, length: number): Promise<void> {
    this.data.fill(0, position, position + length)
  }

  async extents(position: number, length: number): Promise<VolumeExtent[]> {
    const out: VolumeExtent[] = []
    for (let off = position; off < position + length; off += SECTOR) {
      const n = Math.min(SECTOR, position + length - off)
      const kind = this.data.subarray(off, off + n).every((b) => b === 0) ? 'hole' : 'data'
      const last = out.at(-1)
      if (last?.kind === kind) last.length += n
      else out.push({offset: off, length: n, kind})
    }
    const h = this.hold
    if (h) {
      this.hold = undefined
      h.reached()
      await h.promise
    }
    return out
  }

  async flush(): Promise<void> {}

  async fingerprint(): Promise<Fingerprint> {
    return {kind: 'file', size: this.size}
  }

  async close(): Promise<void> {}
}

function allSet(count: number): ExtentBitmap {
  const b = new ExtentBitmap(count)
  b.setAll()
  return b
}

describe('hole sweep', () => {
  test('given a sync sweeping a hole, when a host write lands in the hole while the lookup runs, then that extent is copied with the host data, not cleared as a hole', async () => {
    const count = 256
    const from = new HoleyVolume('src', Buffer.alloc(count * X))
    const to = new HoleyVolume('clone', Buffer.alloc(count * X))
    to.knownZero = true
    const bits = allSet(count)
    const collisions = new CollisionDetector()
    const reached = gate()
    const release = gate()
    from.hold = {reached: reached.release, promise: release.promise}
    const engine = new SyncEngine({map: {bits, clear: (s, e) => bits.clearRange(s, e)}, from, to, extentSize: X, volumeSize: count * X, scoreboard: new Scoreboard(), collisions, chunkBytes: 16 * X})
    const run = engine.run()
    // When: the sweep has looked at the source (all holes) and waits; a host write to extent 200 comes.
    await reached.promise
    collisions.writeStart(200, 201)
    from.data.fill(0xab, 200 * X, 201 * X)
    collisions.writeEnd(200, 201)
    release.release()
    assert.equal(await run, true)
    // Then: the clone holds the host's data at 200, and nothing else was read.
    assert.ok(to.data.equals(from.data), 'the clone equals the source')
    assert.ok(bits.isEmpty())
    assert.ok(from.readBytes <= 16 * X, `only the window around the written extent is read (${from.readBytes} bytes)`)
  })

  test('given pieces of data between long holes (a large sparse source into a fresh image), then each piece is copied by a window that stops where the hole behind it begins: only data extents are claimed, the holes are swept as ranges', async () => {
    const count = 1024
    const pieces = [0, 100, 300, 700, 1020]
    const from = new HoleyVolume('src', Buffer.alloc(count * X))
    for (const [i, e] of pieces.entries()) from.data.fill(0x31 + i, e * X, (e + 4) * X)
    const to = new HoleyVolume('clone', Buffer.alloc(count * X))
    to.knownZero = true
    const bits = allSet(count)
    const claimed: number[] = []
    const scoreboard = new (class extends Scoreboard {
      override tryClaim(e: number): boolean {
        claimed.push(e)
        return super.tryClaim(e)
      }
    })()
    // Windows of up to 16 extents: without the cut, a piece's window would run 12 extents into its hole.
    const engine = new SyncEngine({map: {bits, clear: (s, e) => bits.clearRange(s, e)}, from, to, extentSize: X, volumeSize: count * X, scoreboard, chunkBytes: 16 * X})
    assert.equal(await engine.run(), true)
    assert.ok(to.data.equals(from.data), 'the clone equals the source')
    assert.ok(bits.isEmpty())
    assert.deepEqual(
      claimed,
      pieces.flatMap((e) => [e, e + 1, e + 2, e + 3]),
      'only the data extents were claimed',
    )
    assert.equal(from.readBytes, pieces.length * 4 * X, 'only the data was read')
  })

  test('given a protected restore sweeping holes on both sides, then protected extents keep their bits and the rest are cleared without a read', async () => {
    const count = 256
    const clone = new HoleyVolume('clone', Buffer.alloc(count * X))
    const source = new HoleyVolume('src', Buffer.alloc(count * X))
    const bits = allSet(count)
    const P = new ExtentBitmap(count)
    for (const e of [3, 100, 101, 255]) P.set(e)
    const engine = new SyncEngine({map: {bits, clear: (s, e) => bits.clearRange(s, e)}, from: clone, to: source, extentSize: X, volumeSize: count * X, scoreboard: new Scoreboard(), skip: () => P, chunkBytes: 16 * X})
    assert.equal(await engine.run(), true)
    assert.deepEqual(
      Array.from({length: count}, (_, e) => e).filter((e) => bits.get(e)),
      [3, 100, 101, 255],
      'P extents keep their D bits',
    )
    assert.equal(clone.readBytes + source.readBytes + source.writtenBytes, 0, 'nothing read or written')
    assert.equal(engine.progress.remainingExtents, 0)
  })

  test('given an extent another copy holds in the scoreboard, when the sweep reaches it, then the sweep leaves its bit to that copy', async () => {
    const count = 256
    const from = new HoleyVolume('src', Buffer.alloc(count * X))
    const to = new HoleyVolume('clone', Buffer.alloc(count * X))
    to.knownZero = true
    const bits = allSet(count)
    const scoreboard = new Scoreboard()
    // Someone (COD) holds 150 and does not copy it: the engine must not clear its bit meanwhile.
    assert.ok(scoreboard.tryClaim(150))
    const engine = new SyncEngine({map: {bits, clear: (s, e) => bits.clearRange(s, e)}, from, to, extentSize: X, volumeSize: count * X, scoreboard, chunkBytes: 16 * X})
    const run = engine.run()
    // When: everything else is done (the engine goes round waiting for 150).
    await waitFor(() => bits.countSet() === 1 && engine.progress.remainingExtents === 1, 'every extent but the held one cleared')
    assert.ok(bits.get(150), 'the held extent keeps its bit while held')
    scoreboard.release(150)
    assert.equal(await run, true)
    assert.ok(bits.isEmpty())
    assert.ok(to.data.equals(from.data), 'the clone equals the source')
  })

  test('given a protected restore, when a host read needs an extent that is a hole of the clone, then COD makes the source read as zeros there without reading the clone, and copies a data extent as data', async () => {
    const count = 8
    const clone = new HoleyVolume('clone', Buffer.alloc(count * X))
    clone.data.fill(0x5a, 5 * X, 6 * X)
    const source = new HoleyVolume('src', Buffer.alloc(count * X, 0xee))
    const bits = allSet(count)
    const scoreboard = new Scoreboard()
    const needsCopy = (e: number): boolean => bits.get(e)
    const queue = new CodQueue((e) => !needsCopy(e) && !scoreboard.has(e))
    let failed: unknown
    const cod = new CodEngine({queue, scoreboard, map: {bits, clear: (s, e) => bits.clearRange(s, e)}, from: clone, to: source, extentSize: X, volumeSize: count * X, needsCopy, onError: (e) => (failed = e)})
    // When: host reads wait for extent 2 (a hole of the clone) and 5 (data).
    const waiting = queue.waitFor([2, 5])
    cod.kick()
    await waiting
    assert.equal(failed, undefined)
    // Then: 2 reads as zeros on the source, 5 holds the clone's data; only 5 was read.
    assert.ok(source.data.subarray(2 * X, 3 * X).every((b) => b === 0), 'the hole reads as zeros on the source')
    assert.ok(source.data.subarray(5 * X, 6 * X).equals(clone.data.subarray(5 * X, 6 * X)), 'the data extent was copied')
    assert.equal(clone.readBytes, X, 'the clone was read only at its data extent')
    assert.equal(source.zeroedBytes, X, 'the hole was zeroed (punched) on the source, not written with data')
    assert.equal(source.writtenBytes, X)
    assert.deepEqual(
      Array.from({length: count}, (_, e) => e).filter((e) => !bits.get(e)),
      [2, 5],
    )
  })
})
