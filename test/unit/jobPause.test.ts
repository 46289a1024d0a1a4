/**
 * `clonectl job pause` reports a job paused only once it copies nothing: SyncEngine.pause()
 * resolves after the chunks already issued are written, and none is issued until resume().
 * The destination holds every write until the test lets it go, so the order is exact.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {SyncEngine} from '../../src/engine/SyncEngine.js'
import {Scoreboard} from '../../src/engine/Scoreboard.js'
import {ExtentBitmap} from '../../src/map/ExtentBitmap.js'
import type {Fingerprint, Volume, VolumeExtent} from '../../src/volume/Volume.js'
import {waitFor} from '../helpers/waitFor.js'

const X = 4096
const EXTENTS = 64

/** A volume in memory whose writes wait until release() (held, counted). */
class HeldVolume implements Volume {
  readonly kind = 'file' as const
  readonly readOnly = false
  knownZero = false
  held: Array<() => void> = []
  inflight = 0
  writes = 0
  constructor(
    readonly path: string,
    readonly data: Buffer,
    private hold: boolean,
  ) {}

  get size(): number {
    return this.data.length
  }

  async read(position: number, length: number, into?: Buffer): Promise<Buffer> {
    const out = into && into.length >= length ? into.subarray(0, length) : Buffer.alloc(length)
    this.data.copy(out, 0, position, position + length)
    return out
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    this.inflight++
    if (this.hold) await new Promise<void>((r) => this.held.push(r))
    Buffer.from(data.buffer, data.byteOffset, data.byteLength).copy(this.data, position)
    this.writes++
    this.inflight--
  }

  /** Let every held write go; later writes go at once when `hold` is false. */
  release(hold: boolean): void {
    this.hold = hold
    const h = this.held
    this.held = []
    for (const r of h) r()
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

describe('pausing the sync engine', () => {
  test('given copies in flight, when paused, then pause resolves only once they are written, nothing more is copied, and resume finishes the job', async () => {
    const src = new HeldVolume('/src', Buffer.alloc(EXTENTS * X, 0x11), false)
    const dst = new HeldVolume('/dst', Buffer.alloc(EXTENTS * X), true)
    const bits = new ExtentBitmap(EXTENTS)
    bits.setAll()
    const engine = new SyncEngine({map: {bits, clear: (s, e) => bits.clearRange(s, e)}, from: src, to: dst, extentSize: X, volumeSize: EXTENTS * X, scoreboard: new Scoreboard(), chunkBytes: X, parallel: 4})
    const run = engine.run()
    await waitFor(() => dst.inflight === 4, 'four copies in flight')

    let parked = false
    const paused = engine.pause().then(() => (parked = true))
    // The pause is set: the held writes are let go, and later ones would go at once.
    dst.release(false)
    await paused
    assert.equal(parked, true)
    assert.equal(dst.inflight, 0, 'no copy in flight once pause resolved')
    const done = EXTENTS - engine.progress.remainingExtents
    assert.equal(dst.writes, 4, 'only the copies issued before the pause were written')
    assert.equal(done, 4)
    assert.equal(engine.isPaused, true)

    engine.resume()
    assert.equal(await run, true)
    assert.equal(engine.progress.remainingExtents, 0)
    assert.ok(dst.data.equals(src.data))
  })
})
