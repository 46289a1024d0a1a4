/**
 * The sync engine's early writeback (SyncJobOptions.writebackBytes) flushes the destination
 * so dirty page-cache pages do not pile up; it counts the bytes that went through the page
 * cache (Volume.pageCacheBytesWritten). A fresh image written through O_DIRECT leaves none, so
 * a copy into one makes no early flush; the same copy into an existing image (buffered
 * writes) flushes every writebackBytes. FileVolumes over MemoryFs, whose direct handles take
 * only aligned I/O, as Linux's do.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {Scoreboard} from '../../src/engine/Scoreboard.js'
import {SyncEngine} from '../../src/engine/SyncEngine.js'
import {ExtentBitmap} from '../../src/map/ExtentBitmap.js'
import {FileVolume} from '../../src/volume/FileVolume.js'
import {MemoryFs} from '../support/MemoryFs.js'

const X = 64 * 1024
const EXTENTS = 32
const SIZE = X * EXTENTS

async function copyInto(fresh: boolean): Promise<{flushes: number; to: FileVolume; fs: MemoryFs; source: Buffer}> {
  const fs = new MemoryFs()
  fs.seedDir('/vol')
  const source = Buffer.alloc(SIZE)
  for (let e = 0; e < EXTENTS; e++) source.fill(0x20 + e, e * X, (e + 1) * X)
  fs.seedFile('/vol/src.img', source)
  if (fresh) await FileVolume.createSparse(fs, '/vol/clone.img', SIZE)
  else fs.seedFile('/vol/clone.img', Buffer.alloc(SIZE, 0xee))
  const from = await FileVolume.open(fs, '/vol/src.img', {write: false})
  const to = await FileVolume.open(fs, '/vol/clone.img', {write: true})
  to.knownZero = fresh
  let flushes = 0
  const flush = to.flush.bind(to)
  to.flush = async () => {
    flushes++
    await flush()
  }
  const bits = new ExtentBitmap(EXTENTS)
  bits.setRange(0, EXTENTS)
  const engine = new SyncEngine({
    map: {bits, clear: (s, e) => bits.clearRange(s, e)},
    from,
    to,
    extentSize: X,
    volumeSize: SIZE,
    scoreboard: new Scoreboard(),
    chunkBytes: 2 * X,
    // One chunk at a time: each crossing of the mark is then one flush, a count the test can state.
    parallel: 1,
    writebackBytes: 4 * X,
  })
  assert.equal(await engine.run(), true)
  assert.equal(bits.countSet(), 0, 'every extent copied')
  await from.close()
  return {flushes, to, fs, source}
}

describe('early writeback', () => {
  test('a copy into a fresh image through O_DIRECT makes no early flush: it left no dirty page', async () => {
    const {flushes, to, fs, source} = await copyInto(true)
    assert.ok(to.directWrites > 0, 'the copy was written through O_DIRECT')
    assert.equal(to.pageCacheBytesWritten, 0)
    assert.equal(flushes, 0)
    await to.close()
    assert.deepEqual(await fs.readFile('/vol/clone.img'), source)
  })

  test('a copy into an existing image (buffered) flushes every writebackBytes of it', async () => {
    const {flushes, to, fs, source} = await copyInto(false)
    assert.equal(to.directWrites, 0)
    assert.equal(to.pageCacheBytesWritten, SIZE)
    // 32 extents in chunks of 2, a flush each time 4 more have gone through the page cache: 8.
    assert.equal(flushes, EXTENTS / 4)
    await to.close()
    assert.deepEqual(await fs.readFile('/vol/clone.img'), source)
  })
})
