/**
 * The sync engine's windows: a window spans short gaps of extents it must not copy, reads only
 * the extents it claimed (not the gaps), and writes only those. Checked against a plain
 * model with recording in-memory volumes, for random maps and skip sets (fast-check).
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import fc from 'fast-check'
import {SyncEngine} from '../../src/engine/SyncEngine.js'
import {Scoreboard} from '../../src/engine/Scoreboard.js'
import {ExtentBitmap} from '../../src/map/ExtentBitmap.js'
import type {Fingerprint, Volume, VolumeExtent} from '../../src/volume/Volume.js'

const X = 512

/** A volume in memory that records every read and write range. */
class RecordingVolume implements Volume {
  readonly kind = 'file' as const
  readonly readOnly = false
  knownZero = false
  readonly reads: Array<[number, number]> = []
  readonly writes: Array<[number, number]> = []
  constructor(
    readonly path: string,
    readonly data: Buffer,
  ) {}

  get size(): number {
    return this.data.length
  }

  async read(position: number, length: number, into?: Buffer): Promise<Buffer> {
    await new Promise((r) => setImmediate(r))
    this.reads.push([position, length])
    const out = into && into.length >= length ? into.subarray(0, length) : Buffer.alloc(length)
    this.data.copy(out, 0, position, position + length)
    return out
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    await new Promise((r) => setImmediate(r))
    this.writes.push([position, data.byteLength])
    Buffer.from(data.buffer, data.byteOffset, data.byteLength).copy(this.data, position)
  }

  async writeZeroes(position: number, length: number): Promise<void> {
    this.data.fill(0, position, position + length)
  }

  async trim(position: number, length: number): Promise<void> {
    this.data.fill(0, position, position + length)
  }

  async extents(position: number, length: number): Promise<VolumeExtent[]> {
    return [{offset: position, length, kind: 'data'}]
  }

  async flush(): Promise<void> {}

  async fingerprint(): Promise<Fingerprint> {
    return {kind: 'file', size: this.size}
  }

  async close(): Promise<void> {}
}

/** Bytes of extent e, as a byte count per extent, from recorded ranges. */
function touched(ranges: Array<[number, number]>, extents: number): number[] {
  const n = new Array<number>(extents).fill(0)
  for (const [pos, len] of ranges) for (let b = pos; b < pos + len; b += X) n[Math.floor(b / X)]++
  return n
}

async function copy(o: {extents: number; set: boolean[]; skip: boolean[]; chunkExtents: number; parallel: number}) {
  const src = new RecordingVolume('/src', Buffer.alloc(o.extents * X))
  const dst = new RecordingVolume('/dst', Buffer.alloc(o.extents * X))
  for (let e = 0; e < o.extents; e++) {
    src.data.fill(0x10 + (e % 200), e * X, (e + 1) * X)
    dst.data.fill(0xee, e * X, (e + 1) * X)
  }
  const bits = new ExtentBitmap(o.extents)
  o.set.forEach((v, e) => v && bits.set(e))
  const skip = new ExtentBitmap(o.extents)
  o.skip.forEach((v, e) => v && skip.set(e))
  const engine = new SyncEngine({
    map: {bits, clear: (s, e) => bits.clearRange(s, e)},
    from: src,
    to: dst,
    extentSize: X,
    volumeSize: o.extents * X,
    scoreboard: new Scoreboard(),
    skip: () => skip,
    chunkBytes: o.chunkExtents * X,
    parallel: o.parallel,
  })
  assert.equal(await engine.run(), true)
  return {src, dst, bits}
}

describe('SyncEngine windows', () => {
  test('a scattered window reads and writes only the extents it copies', async () => {
    // 0 1 . . 4 . 6 7 8 . . . (gaps shorter than WINDOW_GAP: one window of 16 extents)
    const extents = 16
    const set = Array.from({length: extents}, (_, e) => [0, 1, 4, 6, 7, 8, 13].includes(e))
    const skip = Array.from({length: extents}, (_, e) => e === 7)
    const {src, dst, bits} = await copy({extents, set, skip, chunkExtents: 16, parallel: 1})
    const copied = [0, 1, 4, 6, 8, 13]
    assert.deepEqual(touched(src.reads, extents).map((n, e) => (n ? e : -1)).filter((e) => e >= 0), copied, 'read only the copied extents')
    assert.deepEqual(touched(dst.writes, extents).map((n, e) => (n ? e : -1)).filter((e) => e >= 0), copied, 'wrote only the copied extents')
    // Runs are read whole: [0,2) [4,5) [6,7) [8,9) [13,14).
    assert.deepEqual(src.reads.map(([p, l]) => [p / X, l / X]).sort((a, b) => a[0] - b[0]), [[0, 2], [4, 1], [6, 1], [8, 1], [13, 1]])
    for (let e = 0; e < extents; e++) {
      const want = copied.includes(e) ? src.data.subarray(e * X, (e + 1) * X) : Buffer.alloc(X, 0xee)
      assert.deepEqual(dst.data.subarray(e * X, (e + 1) * X), want, `extent ${e}`)
    }
    assert.deepEqual([...Array(extents).keys()].filter((e) => bits.get(e)), [7], 'only the skipped extent stays set')
  })

  test('any map and skip set: the destination is the model, nothing else is read or written', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({min: 1, max: 200}).chain((extents) =>
          fc.record({
            extents: fc.constant(extents),
            set: fc.array(fc.boolean(), {minLength: extents, maxLength: extents}),
            skip: fc.array(fc.boolean(), {minLength: extents, maxLength: extents}).map((a) => a.map((v, i) => v && i % 3 === 0)),
            chunkExtents: fc.integer({min: 1, max: 70}),
            parallel: fc.integer({min: 1, max: 5}),
          }),
        ),
        async (o) => {
          const {src, dst, bits} = await copy(o)
          const copies = (e: number): boolean => o.set[e] && !o.skip[e]
          const reads = touched(src.reads, o.extents)
          const writes = touched(dst.writes, o.extents)
          for (let e = 0; e < o.extents; e++) {
            assert.equal(reads[e], copies(e) ? 1 : 0, `extent ${e} read once iff copied`)
            assert.equal(writes[e], copies(e) ? 1 : 0, `extent ${e} written once iff copied`)
            const want = copies(e) ? src.data.subarray(e * X, (e + 1) * X) : Buffer.alloc(X, 0xee)
            assert.deepEqual(dst.data.subarray(e * X, (e + 1) * X), want)
            assert.equal(bits.get(e), o.set[e] && o.skip[e])
          }
        },
      ),
      {numRuns: 200},
    )
  })
})
